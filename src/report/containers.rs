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

use super::doc::{ContainerRef, Role, ScanDoc};

use crate::engine::mountinfo::encode;
use crate::engine::scan::{Holder, Scan};
use crate::runtime::attribution;
use crate::runtime::model::{Container, Daemon};

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
        let by_dev = attribution::unambiguous(
            scan.holders
                .iter()
                .zip(&by_path)
                .filter(|(h, _)| attribution::trusted_view(scan, h))
                .filter_map(|(h, c)| Some(((h.mount.dev, h.root.clone()), (*c)?))),
        );
        let container_ns = attribution::container_namespaces(&daemon.proc_root, containers);
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
                c.or_else(|| attribution::signature_owner(scan, containers, h))
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
            pod_ns: attribution::pod_namespaces(&daemon.proc_root, containers)
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

/// A container as holders and findings name it.
pub fn container_ref(c: &Container) -> ContainerRef {
    ContainerRef {
        id: c.id.clone(),
        name: c.name.clone(),
        state: c.state.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
}
