//! A pod sandbox or container as the runtime described it (its API, or its task bundle),
//! and the mount points that belong to it, checked against where the runtime and kubelet
//! keep them: a record never steers a target outside those places.

use std::path::{Path, PathBuf};

use crate::runtime::model::{Container, Owner};

/// One mount of the OCI runtime spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpecMount {
    pub destination: String,
    pub kind: String,
    pub source: String,
}

/// What the runtime says of one sandbox or container.
#[derive(Debug, Clone, Default)]
pub(super) struct Entry {
    pub id: String,
    pub sandbox: bool,
    /// The container's name, or the pod's for a sandbox.
    pub name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub sandbox_id: String,
    pub state: String,
    pub pid: Option<i32>,
    pub snapshotter: String,
    /// The OCI spec's `root.path`: relative to the task bundle (containerd), or absolute
    /// (CRI-O's `.../overlay/<layer>/merged`).
    pub root_path: Option<String>,
    pub mounts: Vec<SpecMount>,
    /// The network namespace file the sandbox joins (`/run/netns/cni-...`).
    pub netns: Option<String>,
    /// Host paths of the container's CRI mounts (kubelet's volumes among them).
    pub volumes: Vec<String>,
}

/// Where the runtime and kubelet keep what mntreap may release.
#[derive(Debug, Clone)]
pub struct Layout {
    /// containerd's state directory (`/run/containerd`): task bundles, sandbox shm.
    pub state: PathBuf,
    /// containerd's root (`/var/lib/containerd`): snapshots.
    pub root: PathBuf,
    /// containerd's namespace for Kubernetes.
    pub namespace: String,
    /// kubelet's root directory (`/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
    /// CRI-O's image storage root (`/var/lib/containers/storage`).
    pub storage_root: PathBuf,
    /// CRI-O's run root (`/run/containers/storage`): its sandboxes' shm.
    pub storage_run_root: PathBuf,
}

/// A record that fails the checks: named, and skipped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} of {id}: {problem}")]
pub struct BadEntry {
    pub id: String,
    pub what: &'static str,
    pub problem: String,
}

/// A runtime id: 64 lowercase hex digits, as containerd and CRI-O make them.
pub(super) fn valid_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A pod UID as kubelet writes it in its directory names: hex digits and dashes (static
/// pods use a hex hash), nothing that walks a path.
pub(super) fn valid_uid(uid: &str) -> bool {
    crate::engine::policy::is_pod_uid(uid)
}

/// `path` if it is absolute, has no `..`, and lies under `base`.
fn inside(path: &Path, base: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    (clean && path.starts_with(base) && path != base).then(|| path.to_path_buf())
}

impl Layout {
    /// A task's bundle directory.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// kubelet's directory of a pod.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.kubelet_root.join("pods").join(uid)
    }

    /// Which container, sandbox or pod a mount point belongs to: the container whose
    /// paths hold it, else by the layout (a task's rootfs, a sandbox's shm, a pod's
    /// kubelet directory), so that mounts of what is gone are still attributed.
    pub fn owner_of(&self, mount_point: &Path, containers: &[Container]) -> Option<Owner> {
        if let Some(c) = containers
            .iter()
            .find(|c| c.paths.iter().any(|p| mount_point.starts_with(p)))
        {
            return Some(Owner::Container(c.id.clone()));
        }
        let parts = |base: &Path| -> Option<Vec<String>> {
            let rel = mount_point.strip_prefix(base).ok()?;
            Some(
                rel.iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect(),
            )
        };
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        if let Some([ns, id, leaf, ..]) = parts(&tasks).as_deref()
            && *ns == self.namespace
            && leaf == "rootfs"
            && valid_id(id)
        {
            return Some(Owner::Container(id.clone()));
        }
        let sandboxes = self
            .state
            .join("io.containerd.grpc.v1.cri")
            .join("sandboxes");
        if let Some([id, leaf, ..]) = parts(&sandboxes).as_deref()
            && leaf == "shm"
            && valid_id(id)
        {
            return Some(Owner::Container(id.clone()));
        }
        if let Some([uid, sub, ..]) = parts(&self.kubelet_root.join("pods")).as_deref()
            && (sub == "volumes" || sub == "volume-subpaths")
            && valid_uid(uid)
        {
            return Some(
                match containers
                    .iter()
                    .find(|c| c.sandbox && c.pod_uid.as_ref() == Some(uid))
                {
                    Some(s) => Owner::Container(s.id.clone()),
                    None => Owner::Pod(uid.clone()),
                },
            );
        }
        None
    }

    /// `c`'s paths through the operator's path rails as well (no system directory, no
    /// `..`, no symlink on the way as seen through `seen_from`, inside the runtime's and
    /// kubelet's directories): the layout checks above say where a path must lie, these
    /// say what no target may be, whatever the layout.
    pub(super) fn railed(&self, c: Container, seen_from: &Path) -> Result<Container, BadEntry> {
        let rails = crate::engine::policy::Policy {
            any_path: false,
            extra_roots: vec![
                self.state.clone(),
                self.root.clone(),
                self.kubelet_root.clone(),
                self.storage_root.clone(),
                self.storage_run_root.clone(),
            ],
        };
        for p in &c.paths {
            rails
                .check_runtime_path(p, seen_from)
                .map_err(|e| BadEntry {
                    id: c.id.clone(),
                    what: "mount point",
                    problem: e.to_string(),
                })?;
        }
        Ok(c)
    }

    /// The container (or sandbox) that `entry` describes, with its mount points; a record
    /// that would point elsewhere is refused.
    pub(super) fn container(&self, e: &Entry) -> Result<Container, BadEntry> {
        let bad = |what: &'static str, problem: String| BadEntry {
            id: e.id.clone(),
            what,
            problem,
        };
        if !valid_id(&e.id) {
            return Err(bad("id", "not 64 hex digits".into()));
        }
        let uid = (!e.pod_uid.is_empty()).then_some(e.pod_uid.as_str());
        if let Some(uid) = uid.filter(|u| !valid_uid(u)) {
            return Err(bad("pod uid", format!("{uid:?} is not a pod UID")));
        }
        let mut paths = Vec::new();
        // The root filesystem: the task bundle's rootfs (containerd), or CRI-O's layer.
        let root = e.root_path.as_deref().unwrap_or("rootfs");
        let rootfs = if Path::new(root).is_absolute() {
            inside(Path::new(root), &self.storage_root).ok_or_else(|| {
                bad(
                    "root path",
                    format!("{root} is not under {}", self.storage_root.display()),
                )
            })?
        } else {
            inside(&self.bundle(&e.id).join(root), &self.bundle(&e.id))
                .ok_or_else(|| bad("root path", format!("{root:?} leaves the task bundle")))?
        };
        paths.push(rootfs);
        if e.sandbox {
            // The pod's shm: a bind source under the runtime's state directory.
            for m in e.mounts.iter().filter(|m| m.destination == "/dev/shm") {
                let source = Path::new(&m.source);
                if let Some(shm) =
                    inside(source, &self.state).or_else(|| inside(source, &self.storage_run_root))
                {
                    paths.push(shm);
                }
            }
            // The pod's network namespace file (a nsfs mount), when it is a named one, as
            // mount tables show it: /var/run is a link to /run.
            if let Some(ns) = e.netns.as_deref().map(Path::new).and_then(|p| {
                inside(p, Path::new("/run/netns")).or_else(|| {
                    inside(p, Path::new("/var/run/netns"))
                        .map(|v| Path::new("/run").join(v.strip_prefix("/var/run").unwrap_or(&v)))
                })
            }) {
                paths.push(ns);
            }
            // kubelet's mounts for the pod: its volumes and subpaths.
            if let Some(uid) = uid {
                let dir = self.pod_dir(uid);
                paths.push(dir.join("volumes"));
                paths.push(dir.join("volume-subpaths"));
            }
        } else if let Some(uid) = uid {
            // A container's volumes, where they are the pod's own (never a hostPath).
            let dir = self.pod_dir(uid);
            for v in &e.volumes {
                if let Some(p) = inside(Path::new(v), &dir.join("volumes"))
                    .or_else(|| inside(Path::new(v), &dir.join("volume-subpaths")))
                {
                    paths.push(p);
                }
            }
        }
        paths.dedup();
        let pod = (!e.pod_name.is_empty()).then(|| format!("{}/{}", e.pod_namespace, e.pod_name));
        Ok(Container {
            id: e.id.clone(),
            name: if e.sandbox {
                pod.clone().unwrap_or_else(|| e.name.clone())
            } else {
                e.name.clone()
            },
            state: e.state.clone(),
            pid: e.pid,
            driver: e.snapshotter.clone(),
            mount_id: None,
            init_id: None,
            paths,
            upperdir: None,
            pod_uid: uid.map(String::from),
            pod,
            sandbox: e.sandbox,
            pod_pids: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            state: "/run/containerd".into(),
            root: "/var/lib/containerd".into(),
            namespace: "k8s.io".into(),
            kubelet_root: "/var/lib/kubelet".into(),
            storage_root: "/var/lib/containers/storage".into(),
            storage_run_root: "/run/containers/storage".into(),
        }
    }

    fn entry(sandbox: bool) -> Entry {
        Entry {
            id: "a".repeat(64),
            sandbox,
            name: "web".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "1234-abcd".into(),
            sandbox_id: "a".repeat(64),
            state: "ready".into(),
            root_path: Some("rootfs".into()),
            mounts: vec![SpecMount {
                destination: "/dev/shm".into(),
                kind: "bind".into(),
                source: format!(
                    "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{}/shm",
                    "a".repeat(64)
                ),
            }],
            netns: Some("/var/run/netns/cni-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_sandbox_has_its_rootfs_shm_netns_and_the_pods_volumes() {
        let c = layout().container(&entry(true)).unwrap();
        let id = "a".repeat(64);
        let want: Vec<PathBuf> = vec![
            format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/rootfs").into(),
            format!("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{id}/shm").into(),
            "/run/netns/cni-1".into(),
            "/var/lib/kubelet/pods/1234-abcd/volumes".into(),
            "/var/lib/kubelet/pods/1234-abcd/volume-subpaths".into(),
        ];
        assert_eq!(c.paths, want);
        assert_eq!(c.name, "default/web");
        assert!(c.sandbox && c.is_running());
    }

    #[test]
    fn mounts_map_to_their_container_sandbox_or_pod() {
        let l = layout();
        let sb = l.container(&entry(true)).unwrap();
        let id = "a".repeat(64);
        let gone = "b".repeat(64);
        let own = |p: &str| l.owner_of(Path::new(p), std::slice::from_ref(&sb));
        let task = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{gone}/rootfs");
        assert_eq!(own(&task), Some(Owner::Container(gone.clone())));
        assert_eq!(
            own("/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~empty-dir/d"),
            Some(Owner::Container(id.clone()))
        );
        assert_eq!(
            own("/var/lib/kubelet/pods/99-99/volumes/kubernetes.io~csi/pv/mount"),
            Some(Owner::Pod("99-99".into()))
        );
        assert_eq!(own("/var/lib/kubelet/plugins/x/globalmount"), None);
        assert_eq!(
            own("/run/containerd/io.containerd.runtime.v2.task/k8s.io/x/rootfs"),
            None
        );
    }

    #[test]
    fn record_paths_pass_the_operators_rails_too() {
        // A pod directory whose volumes are a symlink: inside kubelet's root by its text,
        // anywhere by what it resolves to.
        let host = std::env::temp_dir().join(format!("mntreap-entry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&host);
        let pods = host.join("var/lib/kubelet/pods/1234-abcd");
        std::fs::create_dir_all(&pods).unwrap();
        let l = layout();
        let ok = l.container(&entry(true)).unwrap();
        assert!(l.railed(ok.clone(), &host).is_ok());
        std::os::unix::fs::symlink("/etc", pods.join("volumes")).unwrap();
        let bad = l.railed(ok, &host).unwrap_err();
        assert!(
            bad.problem.contains("symlink") && bad.id == "a".repeat(64),
            "{bad}"
        );
        // A layout the rails would refuse at connect cannot make a system directory a
        // target either: CRI-O's root under a storage root of /var.
        let wide = Layout {
            storage_root: "/var".into(),
            ..layout()
        };
        let e = Entry {
            root_path: Some("/var/lib".into()),
            ..entry(false)
        };
        let c = wide.container(&e).unwrap();
        assert!(wide.railed(c, &host).is_err());
        let _ = std::fs::remove_dir_all(&host);
    }

    #[test]
    fn records_never_point_outside_the_runtimes_and_kubelets_places() {
        let l = layout();
        // A hostPath volume, a shm elsewhere, a netns elsewhere: not targets.
        let mut e = entry(true);
        e.mounts[0].source = "/var/lib/important".into();
        e.netns = Some("/proc/1/ns/net".into());
        let c = l.container(&e).unwrap();
        assert!(
            c.paths
                .iter()
                .all(|p| !p.starts_with("/var/lib/important") && !p.starts_with("/proc"))
        );
        let mut e = entry(false);
        e.volumes = vec![
            "/".into(),
            "/var/lib/kubelet/pods/1234-abcd/volumes/../../other/volumes/x".into(),
            "/var/lib/kubelet/pods/9999/volumes/x".into(),
            "/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~empty-dir/d".into(),
        ];
        let c = l.container(&e).unwrap();
        assert_eq!(
            c.paths[1..],
            [PathBuf::from(
                "/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~empty-dir/d"
            )]
        );
        // Bad ids, uids and roots are refused, named.
        for bad in [
            Entry {
                id: "../x".into(),
                ..entry(false)
            },
            Entry {
                pod_uid: "../../etc".into(),
                ..entry(false)
            },
            Entry {
                root_path: Some("../../../etc".into()),
                ..entry(false)
            },
            Entry {
                root_path: Some("/etc".into()),
                ..entry(false)
            },
        ] {
            assert!(l.container(&bad).is_err(), "{bad:?}");
        }
        // CRI-O's absolute root under its storage is the target.
        let e = Entry {
            root_path: Some("/var/lib/containers/storage/overlay/abc/merged".into()),
            ..entry(false)
        };
        assert_eq!(
            l.container(&e).unwrap().paths[0],
            PathBuf::from("/var/lib/containers/storage/overlay/abc/merged")
        );
    }
}
