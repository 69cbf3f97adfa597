//! Container runtimes: from containers to the mounts that belong to them, from the
//! runtime's own records validated, and which process is the runtime.
//!
//! Commands and daemons that need only what every runtime offers go through
//! [`ContainerRuntime`]; Docker implements it, and a CRI runtime (containerd, CRI-O) is
//! meant to sit beside it as `runtime/cri/`.

pub mod caller;
pub mod docker;

use docker::{Container, Daemon, DockerError};

/// What mntreap needs of a container runtime, whichever it is.
pub trait ContainerRuntime {
    /// Containers by id, unique id prefix or name, as the runtime's own CLI resolves them.
    fn resolve(&self, names: &[String]) -> Result<Vec<Container>, DockerError>;
    /// Every container the runtime knows (through its API, or its records when it hangs).
    fn list(&self) -> Result<Vec<Container>, DockerError>;
    /// The runtime's daemon as established: its identity, the namespaces to spare, how
    /// containers were resolved.
    fn daemon(&self) -> &Daemon;
    /// Whether the runtime answered (else containers came from its records).
    fn online(&self) -> bool;
    /// Removes a container through the runtime, forced; the runtime's own error text when
    /// it fails.
    fn remove_forced(&self, id: &str) -> Result<(), String>;
}

impl ContainerRuntime for docker::Docker {
    fn resolve(&self, names: &[String]) -> Result<Vec<Container>, DockerError> {
        docker::Docker::resolve(self, names)
    }

    fn list(&self) -> Result<Vec<Container>, DockerError> {
        docker::Docker::list(self)
    }

    fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    fn online(&self) -> bool {
        docker::Docker::online(self)
    }

    fn remove_forced(&self, id: &str) -> Result<(), String> {
        docker::Docker::remove_forced(self, id)
    }
}
