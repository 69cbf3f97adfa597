//! CRI runtimes (containerd's CRI plugin, CRI-O): pods and containers on Kubernetes nodes
//! without dockerd, and the mounts that belong to them.
//!
//! Online, through the CRI socket (`--cri-endpoint`, like crictl's `--runtime-endpoint`;
//! else the first of containerd's, CRI-O's and k3s/RKE2's sockets that exists), with a
//! short deadline on every call. Offline (`--offline`, or the runtime does not answer),
//! from containerd's task bundles and kubelet's pod directories. The daemon that serves
//! the socket is established from the kernel's answers (the process holding the listening
//! socket bound to that file), as for dockerd; its namespace, kubelet's and every other
//! runtime daemon's are spared.

#[cfg(feature = "cri")]
mod api;
#[cfg(not(feature = "cri"))]
#[path = "no_api.rs"]
mod api;
mod bundles;
mod entry;
mod layout;

pub use entry::{BadEntry, Layout};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::host::{HostView, on_host};
use crate::runtime::identity;
use crate::runtime::model::Identity;
use crate::runtime::model::{Container, Daemon, RuntimeKind, Via};
use crate::runtime::scope::short_id;

/// The CRI sockets kubelet is pointed at by the distributions, in the order tried.
pub const ENDPOINTS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
];

pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";

/// Where to find the CRI runtime, and how.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// `unix:///path` (`--cri-endpoint`); `None`: the first of [`ENDPOINTS`] that exists.
    pub endpoint: Option<String>,
    /// kubelet's root directory (`--kubelet-root`).
    pub kubelet_root: PathBuf,
    /// Do not ask the runtime at all.
    pub offline: bool,
    /// How long the runtime has to answer each call.
    pub timeout: Duration,
    /// How long a whole list (or resolution) may take (`--list-deadline`).
    pub list_deadline: Duration,
    /// Where procfs is (`--proc`).
    pub proc_root: PathBuf,
    /// Where the host's files are seen from here (`--host-root`; the agent's pod uses
    /// `/proc/1/root`): the socket, task bundles and containerd's config are read there.
    pub host_root: PathBuf,
}

/// CRI resolution failed: nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("no such pod or container: {0} (checked {1})")]
    NotFound(String, String),
    #[error("{name:?} is ambiguous: it names {ids}; pass more of the id, or namespace/pod")]
    Ambiguous { name: String, ids: String },
    #[error(
        "the CRI runtime does not answer at {socket} ({reason}) and its task bundles cannot \
         be read ({error}); pass --cri-endpoint for another runtime"
    )]
    Unreachable {
        socket: String,
        reason: String,
        error: String,
    },
    #[error("CRI endpoint {0:?} is not a unix socket (unix:///path): mntreap must run on the node")]
    NotUnixSocket(String),
    #[error(
        "{who}'s {what} is {value:?} ({origin}), which the path rails refuse ({problem}); \
         nothing was resolved or released"
    )]
    BadLayout {
        who: String,
        what: &'static str,
        value: String,
        origin: String,
        problem: String,
    },
    #[error("the CRI runtime at {socket}: {overrun}")]
    Overrun {
        socket: String,
        #[source]
        overrun: crate::runtime::Overrun,
    },
    #[error("no CRI socket found (tried {0}); pass --cri-endpoint")]
    NoEndpoint(String),
    #[error(
        "several CRI sockets exist ({0}) and no kubelet says which it uses: pass \
         --cri-endpoint (kubelet's --container-runtime-endpoint)"
    )]
    SeveralEndpoints(String),
}

/// A connected (or offline) CRI runtime.
pub struct Cri {
    pub daemon: Daemon,
    pub layout: Layout,
    client: Option<api::Client>,
    list_deadline: Duration,
}

impl CriOptions {
    /// The socket: the endpoint given, else kubelet's own (`--container-runtime-endpoint`
    /// on its command line), else the one default that exists. Several defaults and no
    /// kubelet to say which it uses: refused, since a wrong runtime lists none of
    /// kubelet's pods and every pod directory would look orphaned.
    pub fn socket(&self) -> Result<PathBuf, CriError> {
        let unix = |e: &str| {
            e.strip_prefix("unix://")
                .map(PathBuf::from)
                .ok_or_else(|| CriError::NotUnixSocket(e.to_string()))
        };
        if let Some(e) = &self.endpoint {
            return unix(e);
        }
        if let Some(e) = kubelet_endpoint(&self.proc_root, &self.host_root) {
            return unix(&e);
        }
        let present: Vec<PathBuf> = ENDPOINTS
            .iter()
            .map(PathBuf::from)
            .filter(|p| on_host(&self.host_root, p).exists())
            .collect();
        match present.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(CriError::NoEndpoint(ENDPOINTS.join(", "))),
            many => Err(CriError::SeveralEndpoints(
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }
}

/// Whether this node has a CRI socket: one given, a default one (a stat each), or
/// kubelet's (a walk of /proc, only when no default exists). Several count: connecting
/// then says which to pick.
pub fn present(opts: &CriOptions) -> bool {
    opts.endpoint.is_some()
        || ENDPOINTS
            .iter()
            .any(|p| on_host(&opts.host_root, Path::new(p)).exists())
        || kubelet_endpoint(&opts.proc_root, &opts.host_root).is_some()
}

impl Cri {
    /// Establishes the runtime that serves the socket, then connects, or falls back to the
    /// task bundles when it does not answer.
    pub fn connect(opts: &CriOptions) -> Result<Cri, CriError> {
        let proc_root = opts.proc_root.as_path();
        let host_root = opts.host_root.clone();
        let socket = opts.socket()?;
        let peer = crate::engine::unix_sockets::listener_creator(&on_host(&host_root, &socket));
        // Which runtime: the one whose daemon holds the socket's listener. Neither
        // established: containerd's answer (unsure, or none), unless the socket is CRI-O's.
        let established = |i: &Identity| i.pid.is_some() && i.unsure.is_none();
        let containerd = identity::establish(
            RuntimeKind::Containerd,
            proc_root,
            &host_root,
            &socket,
            peer,
        );
        let (kind, ident) = if established(&containerd) {
            (RuntimeKind::Containerd, containerd)
        } else {
            let crio = identity::establish(RuntimeKind::CriO, proc_root, &host_root, &socket, peer);
            if established(&crio) || socket.to_string_lossy().contains("crio") {
                (RuntimeKind::CriO, crio)
            } else {
                (RuntimeKind::Containerd, containerd)
            }
        };
        let (layout, origins) = layout::layout_of(kind, &ident, proc_root, &opts.kubelet_root);
        let who = match ident.pid.filter(|_| ident.unsure.is_none()) {
            Some(pid) => format!("{} pid {pid}", kind.daemon_word()),
            None => format!("{} (not established)", kind.daemon_word()),
        };
        layout::check_layout(&layout, &origins, &who, &host_root)?;
        let mut daemon = Daemon {
            runtime: kind,
            via: Via::TaskBundles,
            socket: socket.clone(),
            root: layout.root.clone(),
            driver: None,
            pid: ident.pid.filter(|_| ident.unsure.is_none()),
            mnt_ns: ident.mnt_ns.filter(|_| ident.unsure.is_none()),
            identity: ident,
            live_restore: None,
            offline_reason: None,
            host_root: host_root.clone(),
            proc_root: proc_root.to_path_buf(),
        };
        let client = if opts.offline {
            daemon.offline_reason = Some("--offline".into());
            None
        } else {
            match api::Client::connect(&on_host(&host_root, &socket), opts.timeout) {
                Ok(c) => {
                    daemon.via = Via::Api;
                    daemon.identity.evidence.push(format!(
                        "the CRI runtime at {} is {}",
                        socket.display(),
                        c.version()
                    ));
                    Some(c)
                }
                Err(reason) => {
                    tracing::warn!(socket = %socket.display(), %reason, "the CRI runtime does not answer; resolving offline from its task bundles");
                    daemon.offline_reason = Some(reason);
                    None
                }
            }
        };
        Ok(Cri {
            daemon,
            layout,
            client,
            list_deadline: opts.list_deadline,
        })
    }

    pub fn online(&self) -> bool {
        self.client.is_some()
    }

    /// Every pod sandbox and container; records that fail the checks are named and skipped.
    pub fn list(&self) -> Result<Vec<Container>, CriError> {
        let entries = match &self.client {
            Some(c) => c.entries(self.list_deadline).map_err(|e| match e {
                api::ListFailure::Call(reason) => CriError::Unreachable {
                    socket: self.daemon.socket.display().to_string(),
                    reason,
                    error: "not read: the runtime answered the connection".into(),
                },
                api::ListFailure::Overrun(overrun) => CriError::Overrun {
                    socket: self.daemon.socket.display().to_string(),
                    overrun,
                },
            })?,
            None => bundles::entries(&self.layout, &self.daemon.host_root, &self.daemon.proc_root)
                .map_err(|error| CriError::Unreachable {
                    socket: self.daemon.socket.display().to_string(),
                    reason: self
                        .daemon
                        .offline_reason
                        .clone()
                        .unwrap_or_else(|| "not asked".into()),
                    error,
                })?,
        };
        let mut out: Vec<Container> = entries
            .iter()
            .filter_map(|e| {
                match self
                    .layout
                    .container(&with_pod(e, &entries))
                    .and_then(|c| self.layout.railed(c, &self.daemon.host_root))
                {
                    Ok(c) => Some(c),
                    Err(bad) => {
                        tracing::warn!(%bad, "runtime record skipped");
                        None
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.sandbox, &a.pod, &a.id).cmp(&(!b.sandbox, &b.pod, &b.id)));
        // A pod's containers share its mounts: each knows the others' init pids.
        crate::runtime::model::link_pods(&mut out);
        Ok(out)
    }

    /// Pods (by UID, `namespace/name`, sandbox id or unique prefix: the sandbox and its
    /// containers) and containers (by id, unique prefix, or unique name).
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Container>, CriError> {
        let all = self.list()?;
        let mut out: Vec<Container> = Vec::new();
        for name in names {
            for c in pick(name, &all, &self.daemon.socket)? {
                if !out.iter().any(|o| o.id == c.id) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Removes a container (RemoveContainer) or a pod (StopPodSandbox, RemovePodSandbox).
    pub fn remove_forced(&self, c: &Container) -> Result<(), String> {
        match &self.client {
            Some(client) => client.remove(&c.id, c.sandbox),
            None => Err(format!(
                "the CRI runtime at {} does not answer ({}): not removed",
                self.daemon.socket.display(),
                self.daemon.offline_reason.as_deref().unwrap_or("offline")
            )),
        }
    }

    /// Running containers binding a runtime root privately (see the `bundles` module).
    pub fn private_root_binds(&self, containers: &[Container]) -> Vec<String> {
        bundles::private_root_binds(&self.layout, &self.daemon.host_root, containers)
    }

    /// What the runtime mounted in a container's namespace (its bundle's mounts).
    pub fn container_mounts(
        &self,
        c: &Container,
    ) -> Option<Vec<crate::engine::release::WorkloadMount>> {
        bundles::container_mounts(&self.layout, &self.daemon.host_root, c)
    }

    /// The directories whose mounts the node report looks at.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![
            self.layout.state.clone(),
            self.layout.root.clone(),
            self.layout.kubelet_root.join("pods"),
            PathBuf::from("/run/netns"),
        ];
        if self.daemon.runtime == RuntimeKind::CriO {
            roots.push(self.layout.storage_root.join("overlay"));
            roots.push(self.layout.storage_run_root.clone());
        }
        roots.retain(|r| on_host(&self.daemon.host_root, r).exists());
        roots
    }
}

/// kubelet's `--container-runtime-endpoint`, from the command line of the node's kubelet
/// process ([`kubelet_pid`]).
fn kubelet_endpoint(proc_root: &Path, host_root: &Path) -> Option<String> {
    let pid = kubelet_pid(proc_root, host_root)?;
    let args = identity::cmdline(proc_root, pid);
    identity::flag_value(&args, "--container-runtime-endpoint", None)
        .filter(|e| e.starts_with("unix://"))
}

/// The node's kubelet: the one root-owned process whose executable is `kubelet*`, the
/// host's own (see [`HostView::runs_host_binary`]), in the host's mount namespace (that
/// of the process whose root `host_root` is): root in a container may name a process
/// kubelet, and a name must not steer which socket is the runtime's.
pub fn kubelet_pid(proc_root: &Path, host_root: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let host = HostView::new(proc_root, host_root);
    let pids: Vec<i32> = std::fs::read_dir(proc_root)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| {
            identity::exe_name(proc_root, pid).is_some_and(|e| e.starts_with("kubelet"))
                && std::fs::metadata(proc_root.join(pid.to_string())).is_ok_and(|m| m.uid() == 0)
                && host.in_host_mount_ns(pid) == Some(true)
                && host.runs_host_binary(pid)
        })
        .collect();
    match pids.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// A container entry with its pod's identity filled in from its sandbox (containerd
/// labels containers with the pod's UID; kubelet adds name and namespace).
fn with_pod(e: &entry::Entry, all: &[entry::Entry]) -> entry::Entry {
    let mut e = e.clone();
    if !e.sandbox
        && let Some(s) = all.iter().find(|s| s.sandbox && s.id == e.sandbox_id)
    {
        e.pod_uid = s.pod_uid.clone();
        e.pod_name = s.pod_name.clone();
        e.pod_namespace = s.pod_namespace.clone();
    }
    e
}

/// Picks what `name` names, as an operator would mean it: a pod (UID, `namespace/name`,
/// sandbox id) gives its sandbox and its containers; a container id or unique name gives
/// that container; else a unique id prefix.
fn pick(name: &str, all: &[Container], socket: &Path) -> Result<Vec<Container>, CriError> {
    let pod_of = |s: &Container| -> Vec<Container> {
        all.iter()
            .filter(|c| {
                c.id == s.id || (!c.sandbox && s.pod_uid.is_some() && c.pod_uid == s.pod_uid)
            })
            .cloned()
            .collect()
    };
    let exact_pod = all.iter().find(|s| {
        s.sandbox
            && (s.id == name
                || s.pod_uid.as_deref() == Some(name)
                || s.pod.as_deref() == Some(name))
    });
    if let Some(s) = exact_pod {
        return Ok(pod_of(s));
    }
    if let Some(c) = all.iter().find(|c| !c.sandbox && c.id == name) {
        return Ok(vec![c.clone()]);
    }
    let ambiguous = |many: &[&Container]| CriError::Ambiguous {
        name: name.into(),
        ids: many
            .iter()
            .map(|c| format!("{} ({})", short_id(&c.id), c.name))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let named: Vec<&Container> = all
        .iter()
        .filter(|c| !c.sandbox && c.name == name)
        .collect();
    match named.as_slice() {
        [one] => return Ok(vec![(*one).clone()]),
        [] => {}
        many => return Err(ambiguous(many)),
    }
    let prefixed: Vec<&Container> = all
        .iter()
        .filter(|c| !name.is_empty() && c.id.starts_with(name))
        .collect();
    match prefixed.as_slice() {
        [one] if one.sandbox => Ok(pod_of(one)),
        [one] => Ok(vec![(*one).clone()]),
        [] => Err(CriError::NotFound(
            name.into(),
            format!("the CRI runtime at {}", socket.display()),
        )),
        many => Err(ambiguous(many)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, name: &str, sandbox: bool, uid: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            state: "running".into(),
            pid: None,
            driver: "overlayfs".into(),
            mount_id: None,
            init_id: None,
            paths: Vec::new(),
            upperdir: None,
            pod_uid: Some(uid.into()),
            pod: Some(format!(
                "default/{}",
                if sandbox {
                    name.trim_start_matches("default/")
                } else {
                    "p"
                }
            )),
            sandbox,
            pod_pids: Vec::new(),
        }
    }

    #[test]
    fn pods_and_containers_are_picked_as_an_operator_means_them() {
        let all = vec![
            c("aa11", "default/web", true, "u-1"),
            c("aa22", "app", false, "u-1"),
            c("bb33", "sidecar", false, "u-1"),
            c("cc44", "default/db", true, "u-2"),
            c("cc55", "app", false, "u-2"),
        ];
        let s = Path::new("/s");
        let ids = |v: Vec<Container>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(pick("u-1", &all, s).unwrap()), ["aa11", "aa22", "bb33"]);
        assert_eq!(ids(pick("default/db", &all, s).unwrap()), ["cc44", "cc55"]);
        assert_eq!(
            ids(pick("aa11", &all, s).unwrap()),
            ["aa11", "aa22", "bb33"]
        );
        assert_eq!(ids(pick("cc4", &all, s).unwrap()), ["cc44", "cc55"]);
        assert_eq!(ids(pick("sidecar", &all, s).unwrap()), ["bb33"]);
        assert_eq!(ids(pick("aa2", &all, s).unwrap()), ["aa22"]);
        // Two pods run a container named app; a prefix of two ids; nothing.
        assert!(matches!(
            pick("app", &all, s),
            Err(CriError::Ambiguous { .. })
        ));
        assert!(matches!(
            pick("aa", &all, s),
            Err(CriError::Ambiguous { .. })
        ));
        assert!(matches!(pick("zz", &all, s), Err(CriError::NotFound(..))));
    }

    #[test]
    fn the_socket_is_the_one_present_and_several_are_refused() {
        let host = std::env::temp_dir().join(format!("mntreap-cri-sockets-{}", std::process::id()));
        let proc_root = host.join("proc");
        std::fs::create_dir_all(&proc_root).unwrap();
        let opts = CriOptions {
            endpoint: None,
            kubelet_root: DEFAULT_KUBELET_ROOT.into(),
            offline: true,
            timeout: Duration::from_secs(1),
            list_deadline: Duration::from_secs(10),
            proc_root,
            host_root: host.clone(),
        };
        let touch = |p: &str| {
            let f = host.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "").unwrap();
        };
        assert!(!present(&opts));
        assert!(matches!(opts.socket(), Err(CriError::NoEndpoint(_))));
        touch(ENDPOINTS[2]);
        assert!(present(&opts));
        assert_eq!(opts.socket().unwrap(), PathBuf::from(ENDPOINTS[2]));
        // k3s beside a system containerd, and no kubelet to say which: refused.
        touch(ENDPOINTS[0]);
        assert!(matches!(opts.socket(), Err(CriError::SeveralEndpoints(_))));
        let given = CriOptions {
            endpoint: Some(format!("unix://{}", ENDPOINTS[0])),
            ..opts.clone()
        };
        assert_eq!(given.socket().unwrap(), PathBuf::from(ENDPOINTS[0]));
        std::fs::remove_dir_all(&host).unwrap();
    }
}
