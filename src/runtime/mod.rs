//! Container runtimes: from containers to the mounts that belong to them, from the
//! runtime's own records validated, and which process is the runtime.
//!
//! Commands and daemons that need only what every runtime offers go through
//! [`ContainerRuntime`]; Docker implements it, and a CRI runtime (containerd, CRI-O) is
//! meant to sit beside it as `runtime/cri/`.

pub mod attribution;
pub mod caller;
pub mod cri;
pub mod docker;
pub mod host;
pub mod identity;
pub mod kubelet;
pub mod model;
pub mod scope;

use std::path::{Path, PathBuf};

use cri::{Cri, CriError};
use docker::DockerError;
use model::{Container, Daemon, Owner};

/// Resolution failed in one of the runtimes: nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Cri(#[from] CriError),
}

/// Which runtime's containers are meant (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Docker when its socket or data root exists here, else a CRI runtime's socket.
    Auto,
    Docker,
    /// containerd's CRI plugin or CRI-O, through the CRI socket.
    Cri,
}

/// Whether `choice` means the CRI runtime here: under auto, Docker where it is set up (its
/// settings, its socket, or its data root on a node without kubelet: a leftover
/// `/var/lib/docker` on a kubelet node moved to containerd does not count), else a CRI
/// socket that exists, else Docker, whose report then says that no runtime is found.
pub fn uses_cri(
    choice: RuntimeChoice,
    docker: &docker::DockerOptions,
    cri: &cri::CriOptions,
) -> bool {
    match choice {
        RuntimeChoice::Docker => false,
        RuntimeChoice::Cri => true,
        RuntimeChoice::Auto => {
            let on_host = |p: &Path| host::on_host(&cri.host_root, p);
            // A data root with no kubelet: a Docker node whose daemon is down.
            let docker_set_up = docker.host.is_some()
                || docker.root.is_some()
                || docker.socket().is_ok_and(|s| on_host(&s).exists())
                || (on_host(Path::new(docker::DEFAULT_ROOT)).exists()
                    && cri::kubelet_pid(&cri.proc_root, &cri.host_root).is_none());
            cri.endpoint.is_some() || (!docker_set_up && cri::present(cri))
        }
    }
}

/// Where kubelet's mounts hold by path only ([`ScanRequest::no_identity`]): its subPath
/// binds, under the kubelet root given and the default one (the Docker node report scans
/// `/var/lib/kubelet` whatever `--kubelet-root` says).
///
/// [`ScanRequest::no_identity`]: crate::engine::scan::ScanRequest::no_identity
pub fn kubelet_path_only(kubelet_root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [kubelet_root, Path::new(cri::DEFAULT_KUBELET_ROOT)]
        .iter()
        .map(|root| root.join("pods/*/volume-subpaths"))
        .collect();
    v.dedup();
    v
}

/// Connects to the runtime `choice` names (see [`uses_cri`]).
pub fn connect(
    choice: RuntimeChoice,
    docker: &docker::DockerOptions,
    cri: &cri::CriOptions,
) -> Result<Box<dyn ContainerRuntime>, RuntimeError> {
    Ok(if uses_cri(choice, docker, cri) {
        Box::new(Cri::connect(cri)?)
    } else {
        Box::new(docker::Docker::connect(docker)?)
    })
}

/// Which container a mount point belongs to, by the runtime's layout.
pub type OwnerOf<'a> = Box<dyn Fn(&Path) -> Option<Owner> + 'a>;

/// What mntreap needs of a container runtime, whichever it is.
pub trait ContainerRuntime {
    /// Containers by id, unique id prefix or name, as the runtime's own CLI resolves them;
    /// under CRI also pods (by UID, `namespace/name` or sandbox id: the sandbox and its
    /// containers).
    fn resolve(&self, names: &[String]) -> Result<Vec<Container>, RuntimeError>;
    /// Every container the runtime knows (through its API, or its records when it hangs).
    fn list(&self) -> Result<Vec<Container>, RuntimeError>;
    /// The runtime's daemon as established: its identity, the namespaces to spare, how
    /// containers were resolved.
    fn daemon(&self) -> &Daemon;
    /// Whether the runtime answered (else containers came from its records).
    fn online(&self) -> bool;
    /// Removes a container (or pod sandbox) through the runtime, forced; the runtime's own
    /// error text when it fails.
    fn remove_forced(&self, c: &Container) -> Result<(), String>;
    /// The directories whose mounts the node-wide report looks at.
    fn roots(&self) -> Vec<PathBuf>;
    /// The owner of a mount point by the runtime's layout, given its containers.
    fn owner_of<'a>(&'a self, containers: &'a [Container]) -> OwnerOf<'a>;
    /// Running containers that bind a runtime root (the data root, containerd's, kubelet's,
    /// or `/`) with private propagation: each a line of evidence.
    fn private_root_binds(&self, containers: &[Container]) -> Vec<String>;
    /// What the runtime mounted in a container's namespace (its volumes, binds and the
    /// runtime's own files: destination and node source), from its records; `None` when
    /// they cannot be read.
    fn container_mounts(&self, c: &Container)
    -> Option<Vec<crate::engine::release::WorkloadMount>>;
    /// Whether the runtime keeps a "removal failed" state (Docker's dead/removing), so that
    /// `reap` with no names knows what is stuck.
    fn records_stuck(&self) -> bool;
}

impl ContainerRuntime for docker::Docker {
    fn resolve(&self, names: &[String]) -> Result<Vec<Container>, RuntimeError> {
        Ok(docker::Docker::resolve(self, names)?)
    }

    fn list(&self) -> Result<Vec<Container>, RuntimeError> {
        Ok(docker::Docker::list(self)?)
    }

    fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    fn online(&self) -> bool {
        docker::Docker::online(self)
    }

    fn remove_forced(&self, c: &Container) -> Result<(), String> {
        docker::Docker::remove_forced(self, &c.id)
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.daemon.root.clone()]
    }

    fn owner_of<'a>(&'a self, containers: &'a [Container]) -> OwnerOf<'a> {
        let by_layer = docker::layers_by_container(containers);
        Box::new(move |p| docker::owner_of(&self.daemon.root, p, &by_layer))
    }

    fn private_root_binds(&self, containers: &[Container]) -> Vec<String> {
        docker::private_root_binds(&self.daemon, containers)
    }

    fn container_mounts(
        &self,
        c: &Container,
    ) -> Option<Vec<crate::engine::release::WorkloadMount>> {
        docker::container_mounts(&self.daemon, c)
    }

    fn records_stuck(&self) -> bool {
        true
    }
}

impl ContainerRuntime for Cri {
    fn resolve(&self, names: &[String]) -> Result<Vec<Container>, RuntimeError> {
        Ok(Cri::resolve(self, names)?)
    }

    fn list(&self) -> Result<Vec<Container>, RuntimeError> {
        Ok(Cri::list(self)?)
    }

    fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    fn online(&self) -> bool {
        Cri::online(self)
    }

    fn remove_forced(&self, c: &Container) -> Result<(), String> {
        Cri::remove_forced(self, c)
    }

    fn roots(&self) -> Vec<PathBuf> {
        Cri::roots(self)
    }

    fn owner_of<'a>(&'a self, containers: &'a [Container]) -> OwnerOf<'a> {
        Box::new(move |p| self.layout.owner_of(p, containers))
    }

    fn private_root_binds(&self, containers: &[Container]) -> Vec<String> {
        Cri::private_root_binds(self, containers)
    }

    fn container_mounts(
        &self,
        c: &Container,
    ) -> Option<Vec<crate::engine::release::WorkloadMount>> {
        Cri::container_mounts(self, c)
    }

    fn records_stuck(&self) -> bool {
        false
    }
}

/// The default overall deadline of a list or a resolution, in per-call deadlines: a list
/// costs a call per pod and container (kubelet's 110 pods, a few containers each, take a
/// runtime that answers in milliseconds about a second), and a sweep every minute must not
/// be held for minutes by a runtime that answers each call just in time.
pub const LIST_DEADLINE_CALLS: u32 = 10;

/// A list (or resolution) took longer than its overall deadline: what it had is partial.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the list took longer than its overall deadline of {overall:?}: {elapsed:?} had passed \
     at {call}, with {answered} calls answered before; a partial list is never taken for \
     complete, so nothing was resolved or released"
)]
pub struct Overrun {
    pub call: String,
    pub elapsed: std::time::Duration,
    pub overall: std::time::Duration,
    pub answered: usize,
}

/// The deadlines of a run of calls: each call has its own (`per_call`), and all together
/// have `overall`, after which the run fails with an [`Overrun`].
#[derive(Debug)]
pub(crate) struct Budget {
    started: std::time::Instant,
    per_call: std::time::Duration,
    overall: std::time::Duration,
    answered: usize,
}

impl Budget {
    pub(crate) fn new(per_call: std::time::Duration, overall: std::time::Duration) -> Budget {
        Budget {
            started: std::time::Instant::now(),
            per_call,
            overall,
            answered: 0,
        }
    }

    /// The deadline of the next call (`call` names it): its own, or what is left overall.
    pub(crate) fn next(&self, call: &str) -> Result<std::time::Duration, Overrun> {
        let left = self.overall.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return Err(self.overrun(call));
        }
        Ok(self.per_call.min(left))
    }

    /// A call ran out of time: the overall deadline's doing when it was cut short.
    pub(crate) fn silence(&self, call: &str, given: std::time::Duration) -> Option<Overrun> {
        (given < self.per_call || self.started.elapsed() >= self.overall)
            .then(|| self.overrun(call))
    }

    pub(crate) fn answered(&mut self) {
        self.answered += 1;
    }

    fn overrun(&self, call: &str) -> Overrun {
        Overrun {
            call: call.to_string(),
            elapsed: self.started.elapsed(),
            overall: self.overall,
            answered: self.answered,
        }
    }
}

/// The one runtime every blocking API call (Engine API, CRI) runs on (built once, not per connect).
/// Called from plain threads only: the CLI's, and the daemons' blocking bridge.
pub(crate) fn blocking_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("mntreap-api")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| "cannot start the API clients' runtime".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_run_of_calls_fails_at_its_overall_deadline_naming_the_call() {
        let ms = Duration::from_millis;
        let mut b = Budget::new(ms(50), ms(120));
        assert_eq!(b.next("first").unwrap(), ms(50));
        // A silence within the call's own full deadline, with time left: no overrun.
        assert!(b.silence("first", ms(50)).is_none());
        b.answered();
        std::thread::sleep(ms(100));
        // What is left overall cuts the next call short; its silence is an overrun.
        let left = b.next("second").unwrap();
        assert!(left < ms(50), "{left:?}");
        assert!(b.silence("second", left).is_some());
        std::thread::sleep(ms(30));
        let over = b.next("PodSandboxStatus of abc").unwrap_err();
        assert_eq!(over.call, "PodSandboxStatus of abc");
        assert_eq!((over.answered, over.overall), (1, ms(120)));
        assert!(over.elapsed >= ms(120));
        let text = over.to_string();
        assert!(
            text.contains("PodSandboxStatus of abc") && text.contains("nothing was resolved"),
            "{text}"
        );
    }
}
