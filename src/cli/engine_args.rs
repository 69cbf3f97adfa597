//! The options every scanning command shares (`EngineArgs`): output, the path rails, the
//! scan's backend and threads, and the runtime's (Docker's or the CRI runtime's) settings,
//! validated once into a [`Config`].

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::commands::{Config, Failure};
use crate::engine::policy::Policy;
use crate::engine::scan::{self, ScanRequest};
use crate::engine::source::BackendChoice;
use crate::runtime::RuntimeChoice;
use crate::runtime::cri::CriOptions;
use crate::runtime::docker::DockerOptions;

#[derive(Args, Debug, Clone)]
pub(crate) struct EngineArgs {
    /// Print JSON on stdout (schema in docs/json.md).
    #[arg(long)]
    pub(crate) json: bool,
    /// Allow paths outside the container runtimes' directories.
    #[arg(long)]
    any_path: bool,
    /// Another directory to treat as a runtime root.
    #[arg(long = "runtime-root", value_name = "DIR")]
    pub(crate) runtime_roots: Vec<PathBuf>,
    /// How to read mount tables: listmount(2) where the kernel has it, else mountinfo.
    #[arg(long, value_enum, env = "MNTREAP_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// Only mounts at or below the targets, in each namespace's view: skip the search for
    /// copies at other paths (much faster on large nodes; see docs/benchmark.md).
    #[arg(long)]
    paths_only: bool,
    /// Worker threads that read namespaces in parallel (default: cores, at most 4).
    #[arg(long, env = "MNTREAP_THREADS")]
    threads: Option<usize>,
    /// Where procfs is mounted (the host's, when mntreap runs in a container).
    #[arg(long, env = "MNTREAP_PROC", default_value = "/proc", hide = true)]
    proc: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// `--runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeArg {
    /// Docker when its socket or data root exists here, else a CRI runtime's socket.
    Auto,
    Docker,
    /// containerd's CRI plugin or CRI-O, through the CRI socket.
    Cri,
}

/// Which runtime, and how long it has: for Docker and CRI runtimes alike.
#[derive(Args, Debug, Clone)]
pub(crate) struct RuntimeArgs {
    /// Which runtime's containers are meant: docker, cri (containerd's CRI plugin, CRI-O),
    /// or auto (Docker when its socket or data root exists, else a CRI socket).
    #[arg(long, value_enum, env = "MNTREAP_RUNTIME", default_value = "auto")]
    runtime: RuntimeArg,
    /// Resolve containers from the runtime's records only (Docker's data root, containerd's
    /// task bundles); do not ask the runtime.
    #[arg(long)]
    offline: bool,
    /// How long the runtime (dockerd, or the CRI runtime) has to answer each call (seconds).
    #[arg(long, alias = "docker-timeout", default_value_t = 3)]
    runtime_timeout: u64,
    /// How long listing or resolving containers may take in all, every call included
    /// (seconds; default: 10 x --runtime-timeout). Past it the command fails, and nothing
    /// is released.
    #[arg(long, env = "MNTREAP_LIST_DEADLINE")]
    list_deadline: Option<u64>,
    /// Where the host's files are seen from here. Default: `/`; inside the managed plugin,
    /// the root of the dockerd that connects to it (`/proc/<pid>/root`).
    #[arg(long, env = "MNTREAP_HOST_ROOT")]
    host_root: Option<String>,
    #[command(flatten)]
    docker: DockerArgs,
    #[command(flatten)]
    cri: CriArgs,
}

/// Where Docker is.
#[derive(Args, Debug, Clone)]
pub(crate) struct DockerArgs {
    /// The daemon's socket (unix:///path), like the docker CLI's DOCKER_HOST.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Docker's data root, read offline (online, the daemon's own DockerRootDir wins).
    /// Default: the running dockerd's own, else /var/lib/docker.
    /// (A string: an empty setting, a managed plugin's declared default, means unset.)
    #[arg(long, env = "MNTREAP_DOCKER_ROOT")]
    docker_root: Option<String>,
}

/// Where the CRI runtime and kubelet are.
#[derive(Args, Debug, Clone)]
pub(crate) struct CriArgs {
    /// The CRI socket (unix:///path), like crictl's --runtime-endpoint. Default: the
    /// first of /run/containerd/containerd.sock, /var/run/crio/crio.sock,
    /// /run/k3s/containerd/containerd.sock that exists. Implies --runtime cri.
    #[arg(long, env = "CONTAINER_RUNTIME_ENDPOINT")]
    cri_endpoint: Option<String>,
    /// kubelet's root directory (pods' volumes).
    #[arg(long, env = "MNTREAP_KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
}

impl RuntimeArgs {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.runtime_timeout.max(1))
    }

    fn list_deadline(&self) -> Duration {
        match self.list_deadline {
            Some(s) => Duration::from_secs(s.max(1)),
            None => self.timeout() * crate::runtime::LIST_DEADLINE_CALLS,
        }
    }
}

impl EngineArgs {
    fn cri_options(&self) -> CriOptions {
        CriOptions {
            endpoint: self
                .runtime
                .cri
                .cri_endpoint
                .clone()
                .filter(|e| !e.is_empty()),
            kubelet_root: self.runtime.cri.kubelet_root.clone(),
            offline: self.runtime.offline,
            timeout: self.runtime.timeout(),
            list_deadline: self.runtime.list_deadline(),
            proc_root: self.proc.clone(),
            host_root: self
                .runtime
                .host_root
                .clone()
                .filter(|p| !p.is_empty())
                .map_or_else(|| PathBuf::from("/"), PathBuf::from),
        }
    }

    fn docker_options(&self) -> DockerOptions {
        DockerOptions {
            host: self
                .runtime
                .docker
                .docker_host
                .clone()
                .filter(|h| !h.is_empty()),
            // An empty setting (a managed plugin's declared default) means "not set".
            root: self
                .runtime
                .docker
                .docker_root
                .clone()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            offline: self.runtime.offline,
            timeout: self.runtime.timeout(),
            list_deadline: self.runtime.list_deadline(),
            host_root: self
                .runtime
                .host_root
                .clone()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            daemon_pid: None,
            proc_root: self.proc.clone(),
        }
    }

    /// Validates the settings once: the path rails, the backend (probed on mntreap's own
    /// namespace), the scan template and Docker's options.
    pub(crate) fn config(&self) -> Result<Config, Failure> {
        let docker = self.docker_options();
        // The configured data root is a runtime root too: a patched dockerd with a
        // non-default root calls `mntreap release --path` with MNTREAP_DOCKER_ROOT set.
        let mut extra_roots = self.runtime_roots.clone();
        extra_roots.push(
            docker
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::runtime::docker::DEFAULT_ROOT)),
        );
        let cri = self.cri_options();
        // kubelet's root widens the rails only if it passes them itself (no `/`, `/var`,
        // `..`, no symlink: mount tables show the real path).
        let unrestricted = Policy {
            any_path: true,
            extra_roots: Vec::new(),
        };
        match unrestricted.check(&cri.kubelet_root.to_string_lossy()) {
            Ok(root) => extra_roots.push(root),
            Err(e) => tracing::warn!(%e, "--kubelet-root is not a runtime root for --path"),
        }
        let own_path = self.proc.join("self/ns/mnt");
        let own = crate::engine::namespace::open_ns(own_path.as_os_str()).map_err(|e| {
            Failure::Usage(format!(
                "cannot open {}: {e}; mntreap needs root (CAP_SYS_ADMIN and CAP_SYS_PTRACE)",
                own_path.display()
            ))
        })?;
        Ok(Config {
            json: self.json,
            policy: Policy {
                any_path: self.any_path,
                extra_roots,
            },
            runtime_roots: self.runtime_roots.clone(),
            base: ScanRequest {
                targets: Vec::new(),
                devices: Vec::new(),
                backend: self.backend.resolve(own.as_fd()),
                proc_root: self.proc.clone(),
                threads: self.threads.unwrap_or_else(scan::default_threads).max(1),
                paths_only: self.paths_only,
                layer_signatures: Vec::new(),
                trusted_namespaces: Vec::new(),
                no_identity: crate::runtime::kubelet_path_only(&cri.kubelet_root),
                runtime_pid: None,
            },
            docker,
            runtime: match self.runtime.runtime {
                RuntimeArg::Auto => RuntimeChoice::Auto,
                RuntimeArg::Docker => RuntimeChoice::Docker,
                RuntimeArg::Cri => RuntimeChoice::Cri,
            },
            cri,
        })
    }
}
