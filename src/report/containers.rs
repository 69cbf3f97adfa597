//! Speaking Docker: holders attributed to containers, and the node-wide report.
//!
//! A holder belongs to a container when its mount point lies under one of the container's
//! mount paths (layer, shm, secrets), or when it is a copy (same superblock) of such a
//! holder. Its role then says whether anything is wrong with it:
//! - `runtime`: in dockerd's namespace (the copy the runtime needs while the container runs);
//! - `container`: in the container's own namespace (its rootfs);
//! - `in-use`, `pinned`, `leaked`: anywhere else (see `scan`'s states).
//!
//! The node-wide report (`mntreap scan` with no target) classifies every container mount
//! under the data root that a namespace holds without needing it: **orphaned** (its
//! container is gone, Dead or Removal In Progress; or a layer no container owns), **leaked**
//! (a foreign copy), **in-use** (a foreign copy that processes use as root or cwd).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::doc::{Class, ContainerRef, Role, ScanDoc};

use crate::engine::mountinfo::encode;
use crate::engine::scan::{self, Holder, Scan, ScanRequest};
use crate::runtime::model::{Container, Daemon, Owner};

/// Holders of a scan seen through the containers they belong to.
pub struct ContainerView<'a> {
    scan: &'a Scan,
    daemon: &'a Daemon,
    containers: &'a [Container],
    /// Per holder: index into `containers`.
    owner: Vec<Option<usize>>,
    /// dockerd's namespace (or ours), and per container its own namespace (its root).
    runtime: Vec<u64>,
    container_ns: Vec<Option<u64>>,
    /// Per container, the namespaces of the other containers of its pod, and those that
    /// kubelet's cgroups place in it or its pod (the rule a release spares them by).
    pod_ns: Vec<Vec<u64>>,
    /// Per container, the namespaces whose cgroups are unknown while it is a pod's: a
    /// release spares them too.
    maybe_pod_ns: Vec<Vec<u64>>,
}

/// Whether a holder is in a view whose paths say what a mount is: mntreap's own namespace,
/// or the established runtime's (owned by the host's user namespace).
fn trusted_view(scan: &Scan, h: &Holder) -> bool {
    let n = &scan.namespaces[h.ns].ns;
    n.own || (n.host_userns && scan.trusted_namespaces.contains(&n.inode))
}

/// A map of keys to owners, without the keys that two holders attribute differently.
fn unambiguous<K: std::hash::Hash + Eq, V: PartialEq>(
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
fn pod_namespaces(proc_root: &Path, containers: &[Container]) -> Vec<Vec<u64>> {
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
fn container_namespaces(proc_root: &Path, containers: &[Container]) -> Vec<Option<u64>> {
    containers
        .iter()
        .map(|c| {
            c.pid
                .and_then(|pid| crate::engine::namespace::mnt_ns_inode(proc_root, pid))
        })
        .collect()
}

impl<'a> ContainerView<'a> {
    pub fn new(scan: &'a Scan, daemon: &'a Daemon, containers: &'a [Container]) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let by_path: Vec<Option<usize>> = scan
            .holders
            .iter()
            .map(|h| {
                containers.iter().position(|c| {
                    c.paths.iter().any(|p| {
                        crate::engine::table::path_is_under(
                            &h.mount_point,
                            p.as_os_str().as_bytes(),
                        )
                    })
                })
            })
            .collect();
        let by_dev = unambiguous(
            scan.holders
                .iter()
                .zip(&by_path)
                .filter(|(h, _)| trusted_view(scan, h))
                .filter_map(|(h, c)| Some(((h.mount.dev, h.root.clone()), (*c)?))),
        );
        let container_ns = container_namespaces(&daemon.proc_root, containers);
        // What is mounted inside a container's own root (its /proc, /etc/hosts, ...) is
        // that container's.
        let own_root_of = |h: &Holder| {
            let inode = scan.namespaces[h.ns].ns.inode;
            (h.matched == crate::engine::scan::Match::InsideCopy)
                .then(|| container_ns.iter().position(|ns| *ns == Some(inode)))
                .flatten()
        };
        let owner = scan
            .holders
            .iter()
            .zip(by_path)
            .map(|(h, c)| {
                c.or_else(|| signature_owner(scan, containers, h))
                    .or_else(|| by_dev.get(&(h.mount.dev, h.root.clone())).copied())
                    .or_else(|| own_root_of(h))
            })
            .collect();
        // Per container, (namespace, member?) by kubelet's cgroups: the same function the
        // release scope takes them from; unknown ones are not members but are spared.
        let by_cgroup: Vec<Vec<(u64, bool)>> = containers
            .iter()
            .map(|c| {
                crate::runtime::scope::pod_cgroup_namespaces(scan, std::slice::from_ref(c))
                    .into_iter()
                    .map(|(inode, why)| {
                        (
                            inode,
                            matches!(why, crate::runtime::scope::PodCgroup::Member(_)),
                        )
                    })
                    .collect()
            })
            .collect();
        ContainerView {
            scan,
            daemon,
            containers,
            owner,
            runtime: daemon.runtime_namespaces(),
            container_ns,
            pod_ns: pod_namespaces(&daemon.proc_root, containers)
                .into_iter()
                .zip(&by_cgroup)
                .map(|(mut ns, of)| {
                    ns.extend(of.iter().filter(|(_, m)| *m).map(|(inode, _)| *inode));
                    ns
                })
                .collect(),
            maybe_pod_ns: by_cgroup
                .iter()
                .map(|of| of.iter().filter(|(_, m)| !*m).map(|(i, _)| *i).collect())
                .collect(),
        }
    }

    pub fn role(&self, i: usize) -> Role {
        let h = &self.scan.holders[i];
        let inode = self.scan.namespaces[h.ns].ns.inode;
        if self.runtime.contains(&inode) {
            return Role::Runtime;
        }
        let of_its_pod = self.owner[i].is_some_and(|c| self.pod_ns[c].contains(&inode));
        if self.owner[i].and_then(|c| self.container_ns[c]) == Some(inode) || of_its_pod {
            Role::Container
        } else if self.owner[i].is_some_and(|c| self.maybe_pod_ns[c].contains(&inode)) {
            Role::Unknown
        } else if h.in_use.is_some() {
            Role::InUse
        } else if !h.pins.is_empty() {
            Role::Pinned
        } else {
            Role::Leaked
        }
    }

    /// Copies that are a problem: anything outside dockerd's and the container's own.
    pub fn has_leaks(&self) -> bool {
        (0..self.scan.holders.len())
            .any(|i| !matches!(self.role(i), Role::Runtime | Role::Container))
    }

    /// Adds docker, containers, and per-holder container and role to a scan document.
    /// The scan document with the daemon, the containers, and each holder's role and
    /// container.
    pub fn annotate(&self, doc: &mut ScanDoc) {
        doc.runtime = Some(self.daemon.clone());
        doc.containers = Some(self.containers.to_vec());
        for (i, h) in doc.holders.iter_mut().enumerate() {
            h.role = Some(self.role(i));
            h.container = self.owner[i].map(|c| container_ref(&self.containers[c]));
        }
    }

    pub fn text(&self, plan: &super::Plan) -> String {
        let mut out = String::new();
        let via = match self.daemon.via {
            crate::runtime::model::Via::Api => format!(
                "resolved through {} at {}",
                self.daemon.runtime.daemon_word(),
                self.daemon.socket.display()
            ),
            crate::runtime::model::Via::TaskBundles => format!(
                "resolved offline from {}'s task bundles and kubelet's pod directories ({})",
                self.daemon.runtime.daemon_word(),
                self.daemon.offline_reason.as_deref().unwrap_or("")
            ),
            crate::runtime::model::Via::DataRoot => format!(
                "resolved offline from {} ({})",
                self.daemon.root.display(),
                self.daemon.offline_reason.as_deref().unwrap_or("")
            ),
        };
        out.push_str(&format!("{via}\n"));
        for (ci, c) in self.containers.iter().enumerate() {
            out.push_str(&format!(
                "{} {} ({}) {}:\n",
                if c.sandbox { "pod" } else { "container" },
                c.name,
                crate::runtime::scope::short_id(&c.id),
                c.state
            ));
            let mine: Vec<usize> = (0..self.scan.holders.len())
                .filter(|&i| self.owner[i] == Some(ci))
                .collect();
            if mine.is_empty() {
                out.push_str("  no namespace holds its mounts\n");
            }
            for i in mine {
                let h = &self.scan.holders[i];
                out.push_str(&format!(
                    "  {:<10} mnt_ns {:<11} mount {:<6} {}  pids {}\n",
                    self.role(i).word(),
                    self.scan.namespaces[h.ns].ns.inode,
                    h.mount.id,
                    encode(&h.mount_point),
                    super::pids_text(self.scan, h.ns, 4),
                ));
                out.push_str(&super::plan_line(plan, i));
            }
        }
        for n in &self.scan.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// The container (index) whose layer an overlay found by its upperdir signature is.
fn signature_owner(scan: &Scan, containers: &[Container], h: &Holder) -> Option<usize> {
    let dir = scan
        .layer_signatures
        .get(h.mount.layer_signature? as usize)?;
    containers
        .iter()
        .position(|c| c.upperdir.as_ref() == Some(dir))
}

/// A container as holders and findings name it.
pub fn container_ref(c: &Container) -> ContainerRef {
    ContainerRef {
        id: c.id.clone(),
        name: c.name.clone(),
        state: c.state.clone(),
    }
}

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
    scan::scan(&req).map(Some)
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
    let own_ns = container_namespaces(&daemon.proc_root, containers);
    let pod_ns = pod_namespaces(&daemon.proc_root, containers);
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
    let by_dev = unambiguous(
        scan.holders
            .iter()
            .filter(|h| trusted_view(scan, h))
            .filter_map(|h| Some(((h.mount.dev, h.root.clone()), owner_of(h)?))),
    );
    let by_signature = |h: &Holder| {
        signature_owner(scan, containers, h).map(|c| Owner::Container(containers[c].id.clone()))
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
pub(crate) mod tests {
    use super::*;
    use crate::engine::scan::InUse;
    use crate::engine::scan::fixture::{Ns, scan_of};
    use crate::runtime::docker::tests::c;

    pub(crate) fn daemon(mnt_ns: u64) -> Daemon {
        Daemon {
            runtime: Default::default(),
            via: crate::runtime::model::Via::DataRoot,
            socket: "/run/docker.sock".into(),
            root: "/d".into(),
            driver: Some("overlay2".into()),
            pid: Some(42),
            mnt_ns: Some(mnt_ns),
            identity: Default::default(),
            live_restore: None,
            offline_reason: None,
            host_root: "/".into(),
            proc_root: "/proc".into(),
        }
    }

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
