//! What every runtime resolves to: containers (and pod sandboxes) with the mount points
//! that belong to them, and the daemon as established.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How containers were resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The runtime's API (Docker Engine API, CRI).
    Api,
    /// Docker's data root records, read offline.
    DataRoot,
    /// containerd's task bundles (`config.json`) and kubelet's pod directories, read
    /// offline.
    TaskBundles,
}

/// Which container runtime a [`Daemon`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    #[default]
    Docker,
    /// containerd through its CRI plugin.
    Containerd,
    /// CRI-O.
    CriO,
}

impl RuntimeKind {
    /// The daemon's executable name, as reports name it.
    pub fn daemon_word(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "dockerd",
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::CriO => "crio",
        }
    }

    /// Whether an executable (the kernel's `exe` name) is this runtime's daemon.
    pub fn is_daemon_exe(self, exe: &str) -> bool {
        match self {
            RuntimeKind::Docker => exe.starts_with("dockerd"),
            RuntimeKind::Containerd => exe.starts_with("containerd") && !exe.contains("shim"),
            RuntimeKind::CriO => exe == "crio",
        }
    }
}

/// One container and the mount points that belong to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// Docker's status word: created, running, paused, restarting, removing, exited, dead;
    /// for CRI containers created, running, exited, unknown, and for pod sandboxes ready,
    /// notready.
    pub state: String,
    /// The container's init process, when running.
    pub pid: Option<i32>,
    pub driver: String,
    /// The storage driver's id of the container's RW layer.
    pub mount_id: Option<String>,
    /// The storage driver's id of its init layer (`<mount-id>-init` for overlay2).
    pub init_id: Option<String>,
    /// Mount points: the layer (and its `-init` layer), shm, secrets.
    pub paths: Vec<PathBuf>,
    /// For overlay drivers: the RW layer's upper directory, which identifies its overlay
    /// mount wherever it is mounted.
    pub upperdir: Option<PathBuf>,
    /// The Kubernetes pod it belongs to (kubelet's `io.kubernetes.pod.uid` label).
    pub pod_uid: Option<String>,
    /// The pod as `namespace/name` (CRI runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A pod sandbox (CRI), not a workload container: its mounts are the pod's (shm,
    /// network namespace file, kubelet's volumes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// The init pids of the other running containers of its pod (the sandbox's among
    /// them): they use the pod's mounts (shm, volumes), so their namespaces are spared.
    #[serde(skip)]
    pub pod_pids: Vec<i32>,
}

impl Container {
    /// Running containers (and ready pod sandboxes) need their mounts in the runtime's
    /// namespace.
    pub fn is_running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "paused" | "restarting" | "ready"
        )
    }

    /// Stuck in removal: what `reap` is for.
    pub fn is_stuck(&self) -> bool {
        matches!(self.state.as_str(), "dead" | "removing")
    }
}

/// Fills each container's `pod_pids`: the init pids of the other running containers that
/// share its Kubernetes pod UID (from the runtime's records: CRI's pod, or kubelet's
/// `io.kubernetes.pod.uid` label on Docker).
pub fn link_pods(containers: &mut [Container]) {
    let pods: Vec<(Option<String>, String, Option<i32>)> = containers
        .iter()
        .map(|c| (c.pod_uid.clone(), c.id.clone(), c.pid))
        .collect();
    for c in containers.iter_mut().filter(|c| c.pod_uid.is_some()) {
        c.pod_pids = pods
            .iter()
            .filter(|(uid, id, _)| *uid == c.pod_uid && *id != c.id)
            .filter_map(|(_, _, pid)| *pid)
            .collect();
    }
}

/// The daemon as found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// Which runtime this is.
    #[serde(default)]
    pub runtime: RuntimeKind,
    pub via: Via,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub driver: Option<String>,
    /// dockerd's pid, when its identity is established.
    pub pid: Option<i32>,
    /// Inode of dockerd's mount namespace, when its identity is established.
    pub mnt_ns: Option<u64>,
    /// How dockerd was identified, or why it could not be.
    pub identity: Identity,
    pub live_restore: Option<bool>,
    /// Why the data root was used instead of the API.
    pub offline_reason: Option<String>,
    #[serde(skip)]
    pub host_root: PathBuf,
    #[serde(skip)]
    pub proc_root: PathBuf,
}

/// The owner of a container mount, by the runtime's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Container(String),
    /// A layer mount no container claims (its container is gone).
    UnknownLayer(String),
    /// A pod's kubelet directory (volumes), by pod UID.
    Pod(String),
}

/// A process whose executable is a runtime daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeProcess {
    pub pid: i32,
    pub exe: String,
    pub mnt_ns: Option<u64>,
}

/// The established (or not) identity of dockerd.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// dockerd's pid, when established.
    pub pid: Option<i32>,
    /// Its mount namespace, when established.
    pub mnt_ns: Option<u64>,
    /// What the identity rests on, in words.
    pub evidence: Vec<String>,
    /// Why it could not be established; then nothing that may be the runtime's is touched.
    pub unsure: Option<String>,
    /// Every runtime daemon process found (dockerd, containerd), and an unexplained peer
    /// of the socket: their namespaces are always spared for running containers.
    pub runtime_processes: Vec<RuntimeProcess>,
}
