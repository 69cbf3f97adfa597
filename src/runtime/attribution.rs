//! Which container a holder belongs to, from kernel facts about the containers' processes
//! (their mount namespaces) and the scan's holders: shared by the view `scan` renders and
//! the node-wide classification, so both attribute alike.

use std::collections::HashMap;
use std::path::Path;

use crate::engine::scan::{Holder, Scan};
use crate::runtime::model::Container;

/// Whether a holder is in a view whose paths say what a mount is: mntreap's own namespace,
/// or the established runtime's (owned by the host's user namespace).
pub fn trusted_view(scan: &Scan, h: &Holder) -> bool {
    let n = &scan.namespaces[h.ns].ns;
    n.own || (n.host_userns && scan.trusted_namespaces.contains(&n.inode))
}

/// A map of keys to owners, without the keys that two holders attribute differently.
pub fn unambiguous<K: std::hash::Hash + Eq, V: PartialEq>(
    pairs: impl Iterator<Item = (K, V)>,
) -> HashMap<K, V> {
    let mut out: HashMap<K, Option<V>> = HashMap::new();
    for (k, v) in pairs {
        match out.get_mut(&k) {
            None => {
                out.insert(k, Some(v));
            }
            Some(slot) => {
                if slot.as_ref().is_some_and(|old| *old != v) {
                    *slot = None;
                }
            }
        }
    }
    out.into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
}

/// Per container, the mount namespaces of the other running containers of its pod: they
/// use the pod's mounts (its shm, its volumes), which are theirs as much as its own.
pub fn pod_namespaces(proc_root: &Path, containers: &[Container]) -> Vec<Vec<u64>> {
    containers
        .iter()
        .map(|c| {
            c.pod_pids
                .iter()
                .filter_map(|&pid| crate::engine::namespace::mnt_ns_inode(proc_root, pid))
                .collect()
        })
        .collect()
}

/// Each container's own mount namespace (its init process's), read once per report.
pub fn container_namespaces(proc_root: &Path, containers: &[Container]) -> Vec<Option<u64>> {
    containers
        .iter()
        .map(|c| {
            c.pid
                .and_then(|pid| crate::engine::namespace::mnt_ns_inode(proc_root, pid))
        })
        .collect()
}

/// The container (index) whose layer an overlay found by its upperdir signature is.
pub fn signature_owner(scan: &Scan, containers: &[Container], h: &Holder) -> Option<usize> {
    let dir = scan
        .layer_signatures
        .get(h.mount.layer_signature? as usize)?;
    containers
        .iter()
        .position(|c| c.upperdir.as_ref() == Some(dir))
}
