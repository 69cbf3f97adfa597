//! The node-wide classification: every container mount held where it is not needed,
//! found by one scan of the runtimes' roots and judged from facts (the runtime's records,
//! the scan, the kernel's answers about the containers' namespaces and their members'
//! cgroups), so that the report, `doctor` and the agent's sweeps classify alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::engine::scan::{self, Holder, Scan, ScanRequest};
use crate::report::doc::Class;
use crate::runtime::attribution;
use crate::runtime::model::{Container, Daemon, Owner};

/// One node-wide finding.
pub struct Finding {
    pub holder: usize,
    pub class: Class,
    pub container: Option<Container>,
    /// The container id or layer id the mount belongs to, when its container is gone.
    pub owner: String,
}

/// Roots whose mounts the node-wide report looks at: docker's data root and the other
/// runtimes' directories, those that exist here.
pub fn node_roots(daemon: &Daemon, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for r in std::iter::once(daemon.root.clone())
        .chain(
            ["/var/lib/containerd", "/run/containerd", "/var/lib/kubelet"]
                .iter()
                .map(PathBuf::from),
        )
        .chain(extra.iter().cloned())
    {
        // Through the host's root: the agent's pod sees the node at /proc/1/root.
        let here = crate::runtime::host::on_host(&daemon.host_root, &r).exists();
        if here && !roots.iter().any(|x| r.starts_with(x)) {
            roots.push(r);
        }
    }
    roots
}

/// The node-wide scan: every runtime root, with the containers' layer signatures (copies of
/// their layers at other paths). `None`: no runtime root exists on this node.
pub fn node_scan(
    base: &ScanRequest,
    daemon: &Daemon,
    containers: &[Container],
    extra_roots: &[PathBuf],
    index: Option<&crate::engine::index::TableIndex>,
) -> Result<Option<Scan>, scan::ScanError> {
    let roots = node_roots(daemon, extra_roots);
    if roots.is_empty() {
        return Ok(None);
    }
    let req = daemon.vouch(ScanRequest {
        targets: roots,
        layer_signatures: crate::runtime::scope::layer_signatures(containers),
        ..base.clone()
    });
    scan::scan_indexed(&req, index).map(Some)
}

/// Scans the node and classifies every container mount held where it is not needed.
/// `owner_of` attributes a mount point by the runtime's layout.
pub fn findings(
    scan: &Scan,
    daemon: &Daemon,
    containers: &[Container],
    owner_of: &dyn Fn(&Path) -> Option<Owner>,
) -> Vec<Finding> {
    use std::os::unix::ffi::OsStrExt;
    let own_ns = attribution::container_namespaces(&daemon.proc_root, containers);
    let pod_ns = attribution::pod_namespaces(&daemon.proc_root, containers);
    let by_id: HashMap<&str, (&Container, Option<u64>, &Vec<u64>)> = containers
        .iter()
        .zip(&own_ns)
        .zip(&pod_ns)
        .map(|((c, &ns), pod)| (c.id.as_str(), (c, ns, pod)))
        .collect();
    let no_pod = Vec::new();
    let runtime = daemon.runtime_namespaces();
    let owner_of = |h: &Holder| owner_of(Path::new(std::ffi::OsStr::from_bytes(&h.mount_point)));
    // Copies at other paths belong to whoever owns a path holder of the same superblock and
    // root in a trusted view (a path planted in another namespace names no owner).
    let by_dev = attribution::unambiguous(
        scan.holders
            .iter()
            .filter(|h| attribution::trusted_view(scan, h))
            .filter_map(|h| Some(((h.mount.dev, h.root.clone()), owner_of(h)?))),
    );
    let by_signature = |h: &Holder| {
        attribution::signature_owner(scan, containers, h)
            .map(|c| Owner::Container(containers[c].id.clone()))
    };
    // Per namespace, its members' kubelet cgroups: read once.
    let mut cgroups: HashMap<usize, Option<Vec<String>>> = HashMap::new();
    let mut out = Vec::new();
    for (i, h) in scan.holders.iter().enumerate() {
        let Some(owner) = owner_of(h)
            .or_else(|| by_signature(h))
            .or_else(|| by_dev.get(&(h.mount.dev, h.root.clone())).cloned())
        else {
            continue;
        };
        let inode = scan.namespaces[h.ns].ns.inode;
        let (container, owner_id, gone, container_ns, pod) = match &owner {
            Owner::Container(id) => match by_id.get(id.as_str()) {
                Some(&(c, ns, pod)) => (Some(c.clone()), id.clone(), c.is_stuck(), ns, pod),
                None => (None, id.clone(), true, None, &no_pod),
            },
            Owner::UnknownLayer(layer) => (None, layer.clone(), true, None, &no_pod),
            // A pod directory whose sandbox is gone: kubelet's cleanup of it fails while
            // its volumes are held.
            Owner::Pod(uid) => (None, format!("pod {uid}"), true, None, &no_pod),
        };
        let in_runtime = runtime.contains(&inode);
        // kubelet's cgroups (kernel facts; only root makes them) place the namespace's
        // processes in the owner's container or pod: a container or sandbox that started
        // after the list, or a namespace nested in a pod.
        let pod_uid = match &owner {
            Owner::Pod(uid) => Some(uid.as_str()),
            _ => container.as_ref().and_then(|c| c.pod_uid.as_deref()),
        };
        let owner_hex = crate::engine::policy::is_hex_id(&owner_id).then_some(owner_id.as_str());
        let mut of_its_pod = || {
            let paths = cgroups.entry(h.ns).or_insert_with(|| {
                crate::runtime::caller::kubepods_cgroups_of(&scan.namespaces[h.ns].processes)
            });
            match paths {
                Some(paths) => crate::runtime::caller::names_pod_member(paths, owner_hex, pod_uid),
                // Unknown protects (the scan's notes say why): it may be nested in the pod.
                None => pod_uid.is_some(),
            }
        };
        let own_root = container_ns == Some(inode) || pod.contains(&inode) || of_its_pod();
        let class = if own_root {
            // The container's own namespace, or its pod's: what it holds is its own.
            continue;
        } else if gone {
            Class::Orphaned
        } else if in_runtime {
            // The runtime's copy of a live container, or the container's own rootfs.
            continue;
        } else if h.in_use.is_some() {
            Class::InUse
        } else {
            Class::Leaked
        };
        out.push(Finding {
            holder: i,
            class,
            container,
            owner: owner_id,
        });
    }
    out.sort_by_key(|f| (f.class, f.owner.clone(), f.holder));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scan::InUse;
    use crate::engine::scan::fixture::{Ns, scan_of};
    use crate::report::containers::tests::daemon;
    use crate::runtime::docker::tests::c;

    #[test]
    fn kubelets_cgroups_unknown_protect_and_known_ones_decide() {
        // A service (6) holds the layer of pod container A. Its member's cgroups decide:
        // in A's pod, no finding; elsewhere, leaked; unknown (read from a private cgroup
        // namespace, or above its root), no finding: it may be nested in the pod.
        let runtime = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                       2 1 0:50 / /d/overlay2/L1/merged rw - overlay overlay rw\n";
        let service = runtime;
        let mut a = c(&"a".repeat(64), "a");
        a.mount_id = Some("L1".into());
        a.pod_uid = Some("1234-abcd".into());
        let containers = [a];
        let by_layer = crate::runtime::docker::layers_by_container(&containers);
        let owner_of = |p: &Path| crate::runtime::docker::owner_of(Path::new("/d"), p, &by_layer);
        let classes = |cgroup: Option<&str>| {
            let mut scan = scan_of(
                &["/d"],
                &[5],
                &[Ns(5, false, true, runtime), Ns(6, false, true, service)],
            );
            scan.namespaces[1].processes = vec![crate::engine::namespace::Process {
                pid: 9,
                comm: "svc".into(),
                root: None,
                uses: Vec::new(),
                cgroup: cgroup.map(String::from),
            }];
            findings(&scan, &daemon(5), &containers, &owner_of)
                .iter()
                .map(|f| f.class)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            classes(Some("0::/system.slice/nginx.service\n")),
            vec![Class::Leaked]
        );
        assert_eq!(
            classes(Some(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/cri-containerd-x.scope\n"
            )),
            Vec::<Class>::new()
        );
        assert_eq!(classes(None), Vec::<Class>::new());
    }

    #[test]
    fn node_report_classes() {
        // The runtime's namespace (5) holds the running container A's layer; a service
        // (6) holds A's layer and the layer of a container that is gone; another (7)
        // runs a process on a copy of A's layer.
        let runtime = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                       2 1 0:50 / /d/overlay2/L1/merged rw - overlay overlay rw\n";
        let service = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                       2 1 0:50 / /d/overlay2/L1/merged rw - overlay overlay rw\n\
                       3 1 0:51 / /d/overlay2/L2/merged rw - overlay overlay rw\n";
        let chroot = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                      2 1 0:50 / /d/overlay2/L1/merged rw - overlay overlay rw\n";
        let mut scan = scan_of(
            &["/d"],
            &[5],
            &[
                Ns(5, false, true, runtime),
                Ns(6, false, true, service),
                Ns(7, false, true, chroot),
            ],
        );
        let chrooted = scan
            .holders
            .iter()
            .position(|h| scan.namespaces[h.ns].ns.inode == 7)
            .unwrap();
        scan.holders[chrooted].in_use = Some(InUse::ProcessRoot { pids: vec![9] });
        let mut a = c(&"a".repeat(64), "a");
        a.mount_id = Some("L1".into());
        let containers = [a];
        let by_layer = crate::runtime::docker::layers_by_container(&containers);
        let owner_of = |p: &Path| crate::runtime::docker::owner_of(Path::new("/d"), p, &by_layer);
        let found: Vec<(u64, String, Class)> = findings(&scan, &daemon(5), &containers, &owner_of)
            .iter()
            .map(|f| {
                let h = &scan.holders[f.holder];
                (
                    scan.namespaces[h.ns].ns.inode,
                    String::from_utf8_lossy(&h.mount_point).into_owned(),
                    f.class,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                // Most severe first: the gone container's layer.
                (6, "/d/overlay2/L2/merged".into(), Class::Orphaned),
                (6, "/d/overlay2/L1/merged".into(), Class::Leaked),
                (7, "/d/overlay2/L1/merged".into(), Class::InUse),
            ],
            "the runtime's copy of running a is no finding"
        );
    }
}
