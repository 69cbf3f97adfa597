//! Which holders a path reaches in their namespace.
//!
//! listmount lists every mount of a namespace, also those another mount covers: systemd
//! 252 (Debian 12) builds a sandboxed service's root as a recursive bind and moves it onto
//! `/`, over the namespace's first tree, and propagation goes on landing copies in both;
//! a mount over a parent directory hides what was propagated below it. `setns` roots a
//! thread at the top of the stack on `/`, as the service itself is rooted, and no path
//! reaches a covered copy from there: nothing can unmount it (the execution would find
//! another mount at its path). One that receives propagation (systemd's do) goes when the
//! mount it was copied from goes.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Scan;
use crate::engine::nsexec;
use crate::engine::sys;
use crate::engine::table::{IdMap, MountTable};

/// Up to this many holders in a scan, each one's mount point is looked up (about 6 us
/// each); above it (a node-wide scan of a large node) only each namespace's root is, which
/// finds what a root moved onto `/` covers, and a copy under another covering mount stays
/// listed: the execution then finds it covered and says so (never "gone").
const LOOKUP_EACH_UP_TO: usize = 20_000;

/// Drops the holders no path reaches in their namespace, with one note per namespace:
/// those outside the tree of the top of the stack on `/`, and (up to
/// [`LOOKUP_EACH_UP_TO`] holders) those whose mount point, looked up as the execution
/// looks it up, leads to a mount that is neither the holder nor stacked on it. A namespace
/// that cannot be entered, or a lookup that fails otherwise, keeps its holders: the
/// execution checks each one again and says what it found.
pub(super) fn drop_covered(scan: &mut Scan, proc_root: &Path, threads: usize) {
    let mut by_ns: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, h) in scan.holders.iter().enumerate() {
        match by_ns.last_mut() {
            Some((ns, list)) if *ns == h.ns => list.push(i),
            _ => match by_ns.iter_mut().find(|(ns, _)| *ns == h.ns) {
                Some((_, list)) => list.push(i),
                None => by_ns.push((h.ns, vec![i])),
            },
        }
    }
    if by_ns.is_empty() {
        return;
    }
    let each = scan.holders.len() <= LOOKUP_EACH_UP_TO;
    let shared: &Scan = scan;
    let Ok(covered) = nsexec::map_with_workers(proc_root, threads, &by_ns, |worker, (ns, list)| {
        let n = &shared.namespaces[*ns];
        // mntreap's own namespace: its table's paths are relative to mntreap's root, which
        // setns would not give back (a chrooted mntreap), and its holders are kept anyway.
        let Some(table) = n.table.as_ref().filter(|_| !n.ns.own) else {
            return Vec::new();
        };
        if worker.enter(n.ns.fd.as_fd(), n.ns.inode).is_err() {
            return Vec::new();
        }
        let Some(root) = topmost_at(b"/").ok().flatten() else {
            return Vec::new();
        };
        let stacked_root = root_is_stacked(table, root);
        // Path walks in another user namespace's tree could block on its FUSE daemon.
        let each = each && n.ns.host_userns;
        if !stacked_root && !each {
            return Vec::new();
        }
        let index = table.index();
        let parent_of = |id: u64| index.get(&id).map(|&i| table.mounts[i].parent_id);
        list.iter()
            .copied()
            .filter(|&i| {
                let h = &shared.holders[i];
                // A copy processes use (or pin) stays a holder: its protections hold.
                if h.in_use.is_some() || !h.pins.is_empty() {
                    return false;
                }
                if stacked_root && !stacked_on(&parent_of, h.mount.id, root, &index) {
                    return true;
                }
                if !each {
                    return false;
                }
                match topmost_at(&h.mount_point) {
                    // A mount the table does not know (stacked there since) may be on it.
                    Ok(found) => found.is_some_and(|id| {
                        index.contains_key(&id) && !stacked_on(&parent_of, id, h.mount.id, &index)
                    }),
                    // The path does not exist in what covers it, or it was renamed: covered
                    // only if the kernel still has the mount at the scanned place, or at none
                    // this thread's root reaches.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => still_at(
                        table.ns_id,
                        h.mount.unique_id.map(std::num::NonZeroU64::get),
                        &h.mount_point,
                    ),
                    Err(_) => false,
                }
            })
            .collect::<Vec<usize>>()
    }) else {
        return;
    };
    forget(scan, &by_ns, &covered);
}

/// Takes the holders at `covered` (per namespace of `by_ns`) out of the scan, records
/// them as unreachable, and notes them per namespace.
fn forget(scan: &mut Scan, by_ns: &[(usize, Vec<usize>)], covered: &[Vec<usize>]) {
    let mut drop = vec![false; scan.holders.len()];
    let mut counts: Vec<(usize, usize, bool)> = Vec::new();
    for ((ns, _), list) in by_ns.iter().zip(covered) {
        let mut private = false;
        for &i in list {
            drop[i] = true;
            let h = &scan.holders[i];
            scan.unreachable.push((h.ns, h.mount.id));
            private |= h.mount.master.is_none() && h.mount.peer_group.is_none();
        }
        if !list.is_empty() {
            counts.push((*ns, list.len(), private));
        }
    }
    let mut keep = drop.iter().map(|d| !d);
    scan.holders.retain(|_| keep.next().unwrap_or(true));
    for (ns, n, private) in counts {
        // One that receives no propagation stays until its namespace goes: say so in text too.
        let notes = if private {
            &mut scan.notes
        } else {
            &mut scan.detail_notes
        };
        notes.push(format!(
            "{n} cop{} in mount namespace {} not reachable by any path there: another mount \
             covers {} (such as a sandboxed service's root, which systemd moves onto /); not \
             listed, as with the mountinfo backend; if they receive propagation (systemd's \
             do), they go when the mount they were copied from goes",
            if n == 1 { "y" } else { "ies" },
            scan.namespaces[ns].ns.inode,
            if n == 1 { "it" } else { "them" },
        ));
    }
}

/// Whether the kernel still has mount `unique` of namespace `ns_id` at `point`, or at no
/// place this thread's root reaches (statmount gives it no mount point then).
fn still_at(ns_id: Option<u64>, unique: Option<u64>, point: &[u8]) -> bool {
    let (Some(ns_id), Some(unique)) = (ns_id, unique) else {
        return false;
    };
    let mut buf = sys::StatmountBuf::new();
    sys::statmount(ns_id, unique, sys::STATMOUNT_MNT_POINT, &mut buf).is_ok_and(|sm| {
        let at = sm.mount_point.as_deref().unwrap_or_default();
        at.is_empty() || at == point
    })
}

/// The id of the topmost mount at `path` in this thread's namespace, as the execution
/// finds it (no symlinks followed); `Ok(None)` when the kernel gives no mount id.
fn topmost_at(path: &[u8]) -> std::io::Result<Option<u64>> {
    let fd = sys::open_path_no_symlinks(OsStr::from_bytes(path))?;
    Ok(
        // The mount id comes from the VFS: no round trip to a FUSE or network filesystem.
        sys::statx_mount(
            Some(fd.as_fd()),
            OsStr::new(""),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
        )
        .ok()
        .and_then(|st| st.mnt_id),
    )
}

/// Whether mount `root` (the top of the stack on the namespace's `/`) has a parent in the
/// table: then the mounts not in its tree are covered. Two passes over the table and no
/// index: the usual namespace has nothing stacked on its root.
fn root_is_stacked(table: &MountTable, root: u64) -> bool {
    table
        .mounts
        .iter()
        .find(|m| m.id == root)
        .is_some_and(|r| r.parent_id != r.id && table.mounts.iter().any(|m| m.id == r.parent_id))
}

/// Whether mount `found` is mount `holder` or lies in its tree: for the topmost mount at a
/// holder's mount point, one stacked on it (the execution, upper mounts first, reaches the
/// holder); for a holder and the namespace's root, a mount that root's tree holds.
fn stacked_on(
    parent_of: &impl Fn(u64) -> Option<u64>,
    found: u64,
    holder: u64,
    index: &IdMap<usize>,
) -> bool {
    let mut at = found;
    // Bounded by the table size, in case of a (corrupt) cycle.
    for _ in 0..=index.len() {
        if at == holder {
            return true;
        }
        match parent_of(at) {
            Some(p) if p != at => at = p,
            _ => return false,
        }
    }
    false
}
