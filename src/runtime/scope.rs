//! What a release of a container may touch: its targets, its layer signature, the
//! runtime's namespaces it must spare.

use std::path::PathBuf;

use super::model::{Container, Daemon, RuntimeKind};
use crate::engine::index::TableIndex;
use crate::engine::namespace::mnt_ns_inode;
use crate::engine::release::{Release, Scope};
use crate::engine::scan::{ScanError, ScanRequest};

/// The 12-character short form of an id, as the docker CLI shows it. Never panics: an id
/// that is short or not ASCII (read from a record or a mount path) is shown whole.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The scan request for one container: `base`'s settings, the container's mount paths,
/// its layer's upperdir signature, and the runtime's namespace as a trusted view.
pub fn container_request(base: &ScanRequest, daemon: &Daemon, c: &Container) -> ScanRequest {
    ScanRequest {
        targets: c.paths.clone(),
        layer_signatures: layer_signatures(std::slice::from_ref(c)),
        ..daemon.vouch(base.clone())
    }
}

/// Scans, then releases containers (one, or a pod's) within `scope`, sparing also the
/// namespaces whose processes kubelet's cgroups place in one of these containers or their
/// pods (kernel facts: a container started after they were resolved, a namespace nested
/// in a pod).
///
/// With `index` (a daemon's, fed by mount events, lending for releases), the
/// scan reuses the tables of namespaces unchanged since the last one, and the release
/// confirms by id what its plan rests on before it unmounts; a difference sets the kept
/// tables aside and the release is made again from tables read now. The tables go back to
/// the index after (the namespaces it unmounted in are read again next time: their ids
/// changed).
pub fn release_containers(
    req: &ScanRequest,
    cs: &[Container],
    scope: Scope,
    dry_run: bool,
    index: Option<&TableIndex>,
) -> Result<Release, ScanError> {
    // Mount events are what make a kept table fit for a release (a move shows); a dry run
    // is not confirmed (it acts on nothing), so it reads every table.
    let index = index.filter(|i| i.events() && !dry_run);
    let release = |index| {
        let scan = crate::engine::scan::scan_indexed(req, index)?;
        let scope = with_pod_cgroups(&scan, cs, scope.clone());
        crate::engine::release::run_on(scan, req, scope, dry_run)
    };
    let Some(kept) = index else {
        return release(None);
    };
    kept.lend_fresh_mount_points(true);
    let mut rel = match release(Some(kept)) {
        Err(ScanError::Unconfirmed { inode, what }) => {
            // The namespace may be anyone's: named in the log, not in the reply to a pod.
            tracing::info!(ns = inode, what = %what, "a kept table could not be relied on: every table is read again");
            kept.clear();
            let mut rel = release(Some(kept))?;
            rel.notes.push(
                "a kept mount table could not be relied on: every table was read again and \
                 the release made from those"
                    .into(),
            );
            rel
        }
        other => other?,
    };
    kept.keep(rel.scan.take_tables());
    Ok(rel)
}

/// `scope`, sparing also the namespaces of `scan` that kubelet's cgroups place in one of
/// `cs` or their pods (or whose cgroups are unknown while `cs` are pods' containers).
pub fn with_pod_cgroups(scan: &crate::engine::scan::Scan, cs: &[Container], scope: Scope) -> Scope {
    let mut scope = scope;
    if let Some(protected) = scope.protected.as_mut() {
        for (ns, why) in pod_cgroup_namespaces(scan, cs) {
            if !protected.iter().any(|(n, _)| *n == ns) {
                protected.push((ns, why.reason()));
            }
        }
    }
    scope
}

/// Whether kubelet's cgroups place a namespace's processes in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodCgroup {
    /// In this container's (named) container or pod.
    Member(String),
    /// Unknown (see the scan's notes): it may be.
    Unknown,
}

/// The namespaces holding a target whose processes kubelet's cgroups place in one of `cs`
/// or in its pod, or whose cgroups are unknown while `cs` are pods' containers.
pub fn pod_cgroup_namespaces(
    scan: &crate::engine::scan::Scan,
    cs: &[Container],
) -> Vec<(u64, PodCgroup)> {
    let mut seen: Vec<usize> = scan.holders.iter().map(|h| h.ns).collect();
    seen.sort_unstable();
    seen.dedup();
    let pods = cs.iter().any(|c| c.pod_uid.is_some());
    seen.into_iter()
        .filter_map(|i| {
            let n = &scan.namespaces[i];
            let Some(paths) = crate::runtime::caller::kubepods_cgroups_of(&n.processes) else {
                // Unknown protects: it may be a process nested in one of these pods.
                return pods.then_some((n.ns.inode, PodCgroup::Unknown));
            };
            let member = cs.iter().find(|c| {
                crate::runtime::caller::names_pod_member(
                    &paths,
                    Some(c.id.as_str()),
                    c.pod_uid.as_deref(),
                )
            })?;
            Some((n.ns.inode, PodCgroup::Member(member.name.clone())))
        })
        .collect()
}

impl PodCgroup {
    /// The reason a release keeps the namespace's copies.
    pub fn reason(&self) -> String {
        match self {
            PodCgroup::Member(name) => {
                format!("kubelet's cgroups place its processes in {name}'s container or pod")
            }
            PodCgroup::Unknown => "its processes' cgroups are unknown in the host's cgroup \
                                   namespace (see the notes): it may be a pod's"
                .into(),
        }
    }
}

/// The overlay upperdirs that identify these containers' layers wherever they are mounted.
pub fn layer_signatures(containers: &[Container]) -> Vec<PathBuf> {
    containers
        .iter()
        .filter_map(|c| c.upperdir.clone())
        .collect()
}

/// The release scope for a container: its copies in dockerd's namespace stay while it runs.
/// Under a CRI runtime the runtime's namespaces (containerd's or CRI-O's, kubelet's, the
/// host's) are always spared: containerd unmounts a task's rootfs when it deletes the task
/// and kubelet tears its volumes down itself; mntreap releases only the copies elsewhere.
pub fn release_scope(daemon: &Daemon, container: &Container, everywhere: bool) -> Scope {
    // An unsure identity protects every namespace that may be the runtime's, whatever the
    // container's state: a wrong guess must never lead to an unmount.
    let protected = if daemon.unsure().is_some() {
        daemon.runtime_protection("")
    } else if daemon.runtime != RuntimeKind::Docker {
        daemon.runtime_protection(&format!(
            ", which unmounts {}'s mounts itself",
            container.name
        ))
    } else if !container.is_running() {
        Vec::new()
    } else {
        daemon.runtime_protection(&format!(", and container {} is running", container.name))
    };
    // The container's own namespace has the layer as its root: in use, never touched.
    let mut protected = protected;
    if let Some(ns) = container
        .pid
        .and_then(|pid| mnt_ns_inode(&daemon.proc_root, pid))
    {
        protected.push((
            ns,
            format!("container {}'s own namespace (its root)", container.name),
        ));
    }
    // So are those of the other containers of its pod: they use the pod's mounts.
    for ns in container
        .pod_pids
        .iter()
        .filter_map(|&pid| mnt_ns_inode(&daemon.proc_root, pid))
    {
        protected.push((
            ns,
            format!(
                "a container of {}'s pod (it uses the pod's mounts)",
                container.name
            ),
        ));
    }
    Scope {
        everywhere,
        protected: Some(protected),
        workloads: Vec::new(),
        copy_roots: Vec::new(),
    }
}

impl Daemon {
    /// `req` with what the established daemon vouches for: its namespace as a view whose
    /// mounts say what a target is, and its cgroup namespace as the host's (the view in
    /// which kubelet's cgroups are read).
    pub fn vouch(&self, req: ScanRequest) -> ScanRequest {
        ScanRequest {
            trusted_namespaces: self.trusted_namespaces(),
            runtime_pid: self.pid,
            ..req
        }
    }

    /// The namespaces whose mounts say what a container's mounts are: the daemon's, once
    /// established.
    pub fn trusted_namespaces(&self) -> Vec<u64> {
        self.mnt_ns.into_iter().collect()
    }

    /// The line every report prints while the identity is unsure.
    pub fn unsure_note(&self) -> Option<String> {
        self.unsure().map(|why| {
            format!(
                "{}'s identity is unsure ({why}): nothing was released in any namespace \
                 that may be the runtime's (namespaces {:?}); fix the cause, then run again",
                self.runtime.daemon_word(),
                self.runtime_namespaces()
            )
        })
    }

    /// Why the runtime's identity is unsure, if it is.
    pub fn unsure(&self) -> Option<&str> {
        self.identity.unsure.as_deref()
    }

    /// Namespaces whose copies are the runtime's: dockerd's when established and, always,
    /// every namespace that may be a runtime's (any runtime daemon's, an unexplained socket
    /// peer's, and mntreap's own). A wrong guess then never exposes a daemon's copies.
    pub fn runtime_namespaces(&self) -> Vec<u64> {
        let mut v = self.identity.possible_runtime_namespaces(&self.proc_root);
        v.extend(self.mnt_ns);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The protection list for the runtime's namespaces, with the reason shown.
    pub fn runtime_protection(&self, why: &str) -> Vec<(u64, String)> {
        let doubt = match (self.unsure(), self.mnt_ns) {
            (Some(u), _) => Some(format!(
                "{}'s identity is unsure ({u})",
                self.runtime.daemon_word()
            )),
            (None, None) => Some(format!("no {} is running", self.runtime.daemon_word())),
            (None, Some(_)) => None,
        };
        self.runtime_namespaces()
            .into_iter()
            .map(|ns| {
                let reason = match &doubt {
                    None if Some(ns) == self.mnt_ns => format!(
                        "{}'s namespace (pid {}){why}",
                        self.runtime.daemon_word(),
                        self.pid.unwrap_or_default()
                    ),
                    None => format!("a runtime daemon's namespace, or mntreap's own{why}"),
                    Some(d) => format!("may be the runtime's namespace: {d}"),
                };
                (ns, reason)
            })
            .collect()
    }
}

/// The scope of a device release (`release --device`): the runtime's namespaces spared
/// (the runtime and kubelet unmount their own mounts), and every running container's
/// namespace described by what the runtime mounted there, so that a volume a container
/// uses is told from a copy ([`crate::engine::release::Workload`]); `copy_roots` are the
/// directories whose mounts other namespaces carry by accident (the runtimes' and
/// kubelet's). With no runtime, no container is described, every namespace a runtime
/// daemon runs in is spared, and the release keeps every mount in a namespace whose root
/// is not the host's. Returns the notes that say what was not known.
pub fn device_scope(
    runtime: Option<&dyn super::ContainerRuntime>,
    listed: Option<&[Container]>,
    proc_root: &std::path::Path,
    copy_roots: &[PathBuf],
    everywhere: bool,
) -> (Scope, Vec<String>) {
    use std::os::unix::ffi::OsStrExt;
    let copy_roots: Vec<Vec<u8>> = copy_roots
        .iter()
        .map(|r| r.as_os_str().as_bytes().to_vec())
        .collect();
    let mut notes = Vec::new();
    let Some(runtime) = runtime else {
        let mut protected: Vec<(u64, String)> =
            crate::runtime::identity::daemon_namespaces(proc_root)
                .into_iter()
                .map(|ns| {
                    (
                        ns,
                        "a runtime daemon's namespace (no runtime answered)".into(),
                    )
                })
                .collect();
        if let Some(own) = mnt_ns_inode(proc_root, "self") {
            protected.push((
                own,
                "mntreap's own namespace; use --everywhere to include it".into(),
            ));
        }
        return (
            Scope {
                everywhere,
                protected: Some(protected),
                workloads: Vec::new(),
                copy_roots,
            },
            notes,
        );
    };
    let daemon = runtime.daemon();
    let containers = listed
        .map(<[Container]>::to_vec)
        .map_or_else(|| runtime.list(), Ok);
    let containers = containers.unwrap_or_else(|e| {
        notes.push(format!(
            "the runtime's containers could not be listed ({e}): mounts in namespaces whose \
             root is not the host's are kept"
        ));
        Vec::new()
    });
    // While the runtime's identity is unsure its records describe nothing: every
    // container's namespace then stays unnamed, and kept.
    let workloads = if daemon.unsure().is_some() {
        Vec::new()
    } else {
        containers
            .iter()
            .filter(|c| c.is_running())
            .filter_map(|c| workload(runtime, c))
            .collect()
    };
    let mut protected =
        daemon.runtime_protection(", which unmounts its own mounts (and kubelet its own)");
    // kubelet, and any daemon in a namespace of its own, by name: sparing only.
    for ns in crate::runtime::identity::daemon_namespaces(proc_root) {
        if !protected.iter().any(|(n, _)| *n == ns) {
            protected.push((ns, "a runtime daemon's or kubelet's namespace".into()));
        }
    }
    (
        Scope {
            everywhere,
            protected: Some(protected),
            workloads,
            copy_roots,
        },
        notes,
    )
}

/// A running container's namespace and mounts, when the kernel agrees that its recorded
/// init pid is the container's: the process's cgroups name the container's id (a pid
/// reused by a process elsewhere names none, and its namespace then stays unnamed, which
/// keeps more).
fn workload(
    runtime: &dyn super::ContainerRuntime,
    c: &Container,
) -> Option<crate::engine::release::Workload> {
    let proc_root = &runtime.daemon().proc_root;
    let pid = c.pid?;
    let facts = crate::runtime::caller::facts(proc_root, pid)?;
    if !crate::runtime::caller::candidate_ids(&facts.cgroup).contains(&c.id) {
        return None;
    }
    let ns = mnt_ns_inode(proc_root, pid)?;
    // Still the process whose cgroups were read.
    if crate::engine::namespace::start_time(proc_root, pid) != Some(facts.start) {
        return None;
    }
    Some(crate::engine::release::Workload {
        ns,
        pid,
        start: facts.start,
        name: match (&c.pod, c.sandbox) {
            (Some(pod), true) => format!("pod {pod}"),
            (Some(pod), false) => format!("container {} of pod {pod}", c.name),
            (None, _) => format!("container {}", c.name),
        },
        mounts: runtime.container_mounts(c),
    })
}
