//! Docker: from containers to the mounts that belong to them.
//!
//! Resolution works online, through the Engine API on the daemon's unix socket (honouring
//! `DOCKER_HOST` like the docker CLI), and offline, from the data root
//! (`containers/<id>/config.v2.json`, `image/<driver>/layerdb/mounts/<id>/mount-id`), which
//! is what an operator has when dockerd hangs. Both give the same [`Container`]s (a test
//! checks it); the report says which one was used.

mod api;
pub mod events;
mod layout;
mod mounts;
mod records;

pub mod settings;

use crate::runtime::host::on_host;
use crate::runtime::model::{Container, Daemon, Via};
use crate::runtime::scope::short_id;
pub use api::engine_client;
pub use layout::{Owner, layer_mount, layers_by_container, owner_of, snapshot_mount};
pub use mounts::{container_mounts, private_root_binds};
use records::read_config;
pub use records::{BadRecord, POD_UID_LABEL};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::Budget;

/// Where to find the daemon, and how.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// `unix:///path` (from `--docker-host` or `DOCKER_HOST`); `None`: the daemon's own
    /// socket when its pid is known ([`DockerOptions::daemon_pid`]), else the default.
    pub host: Option<String>,
    /// The data root, used offline and to find layer ids (`--docker-root`); `None`: the
    /// daemon's own (its command line or daemon.json) when its pid is known, else the
    /// default. Online, the daemon's own `DockerRootDir` wins.
    pub root: Option<PathBuf>,
    /// Do not ask the daemon at all.
    pub offline: bool,
    /// How long the daemon has to answer each call.
    pub timeout: Duration,
    /// How long a whole list (or resolution) may take (`--list-deadline`).
    pub list_deadline: Duration,
    /// Where this process sees the host's files: `/`, or `/proc/<dockerd>/root` inside a
    /// managed plugin (which then needs no mount of the data root, and so holds no layer
    /// mount); `None`: the daemon's root when its pid is known, else `/`.
    pub host_root: Option<PathBuf>,
    /// dockerd's pid as a source that cannot be forged names it: the peer of a connection
    /// dockerd made to the plugin's socket. Then its identity needs no other evidence.
    pub daemon_pid: Option<i32>,
    /// Where procfs is (`--proc`): every fact about a process is read there.
    pub proc_root: PathBuf,
}

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/docker";

/// Docker resolution failed: nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no such container: {0} (checked {1})")]
    NotFound(String, String),
    #[error("{name:?} is ambiguous: it is a prefix of {ids}; pass more of the id")]
    Ambiguous { name: String, ids: String },
    #[error(
        "dockerd does not answer at {socket} ({reason}) and its data root {root} cannot be read \
         ({error}); pass --docker-root, or --docker-host for another daemon"
    )]
    Unreachable {
        socket: String,
        reason: String,
        root: String,
        error: String,
    },
    #[error("dockerd at {socket}: {message}")]
    Api { socket: String, message: String },
    #[error(
        "docker host {0:?} is not a unix socket (unix:///path): mntreap must run on the node \
         itself"
    )]
    NotUnixSocket(String),
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    #[error("dockerd at {socket}: {overrun}")]
    Overrun {
        socket: String,
        #[source]
        overrun: crate::runtime::Overrun,
    },
    #[error(
        "{who}'s data root is {value:?} ({origin}), which the path rails refuse ({problem}); \
         nothing was resolved or released"
    )]
    BadDataRoot {
        who: String,
        value: String,
        origin: String,
        problem: String,
    },
}

impl DockerOptions {
    /// The socket, data root and host root to use: explicit settings first, then what
    /// the known daemon pid says of itself, then the defaults.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf, PathBuf), DockerError> {
        let proc_root = self.proc_root.as_path();
        let learned = self
            .daemon_pid
            .filter(|&pid| crate::runtime::identity::is_dockerd(proc_root, pid))
            .map(|pid| crate::runtime::docker::settings::daemon_settings(proc_root, pid));
        let socket = match (&self.host, &learned) {
            (None, Some(l)) => l.socket.clone(),
            _ => self.socket()?,
        };
        let root = self
            .root
            .clone()
            .or_else(|| learned.as_ref().map(|l| l.data_root.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let host_root = self
            .host_root
            .clone()
            .or_else(|| learned.map(|l| l.host_root))
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok((socket, root, host_root))
    }

    /// The socket path from `--docker-host`/`DOCKER_HOST`.
    pub fn socket(&self) -> Result<PathBuf, DockerError> {
        match &self.host {
            None => Ok(PathBuf::from(DEFAULT_SOCKET)),
            Some(h) => match h.strip_prefix("unix://") {
                Some(path) => Ok(PathBuf::from(path)),
                None => Err(DockerError::NotUnixSocket(h.clone())),
            },
        }
    }
}

/// A connected (or not) daemon, able to resolve containers.
pub struct Docker {
    pub daemon: Daemon,
    client: Option<bollard::Docker>,
    timeout: Duration,
    list_deadline: Duration,
}

impl Docker {
    /// Connects, or falls back to the data root when the daemon does not answer.
    pub fn connect(opts: &DockerOptions) -> Result<Docker, DockerError> {
        let proc_root = opts.proc_root.as_path();
        let (socket, root, host_root) = opts.resolve()?;
        let identity = match opts
            .daemon_pid
            .filter(|&pid| crate::runtime::identity::is_dockerd(proc_root, pid))
        {
            Some(pid) => crate::runtime::identity::from_connecting_daemon(proc_root, pid),
            None => {
                // The socket's peer is one piece of evidence: under socket activation it
                // is systemd, not dockerd.
                let peer =
                    crate::engine::unix_sockets::listener_creator(&on_host(&host_root, &socket));
                // A binary under the data root is a container's, never dockerd.
                let host = crate::runtime::host::HostView::new(proc_root, &host_root)
                    .with_container_roots(std::slice::from_ref(&root));
                crate::runtime::identity::establish_in(
                    crate::runtime::model::RuntimeKind::Docker,
                    proc_root,
                    &host,
                    &host_root,
                    &socket,
                    peer,
                )
            }
        };
        // The established daemon's configured data root: the default one when nothing
        // is set (offline resolution then needs no --docker-root), and the cross-check of
        // its /info answer below. Read once.
        let configured = identity
            .pid
            .filter(|_| identity.unsure.is_none())
            .map(|pid| crate::runtime::docker::settings::configured_data_root(proc_root, pid));
        let root = match (&opts.root, &configured) {
            (None, Some(c)) if opts.daemon_pid.is_none() => c.clone(),
            _ => root,
        };
        let mut origin = if opts.root.is_some() {
            "--docker-root"
        } else if configured.is_some() || opts.daemon_pid.is_some() {
            "its command line or daemon.json"
        } else {
            "the default"
        };
        let mut daemon = Daemon {
            runtime: crate::runtime::model::RuntimeKind::Docker,
            via: Via::DataRoot,
            socket: socket.clone(),
            root,
            driver: None,
            pid: identity.pid.filter(|_| identity.unsure.is_none()),
            mnt_ns: identity.mnt_ns.filter(|_| identity.unsure.is_none()),
            identity,
            live_restore: None,
            offline_reason: None,
            host_root: host_root.clone(),
            proc_root: proc_root.to_path_buf(),
        };
        let client = if opts.offline {
            daemon.offline_reason = Some("--offline".into());
            None
        } else {
            match Self::api(&on_host(&host_root, &socket), opts.timeout) {
                Ok((client, info)) => {
                    daemon.via = Via::Api;
                    if let Some(root) = info.docker_root_dir {
                        if let Some(configured) = &configured {
                            daemon.check_data_root(Path::new(&root), configured);
                        }
                        daemon.root = PathBuf::from(root);
                        origin = "its /info DockerRootDir";
                    }
                    daemon.driver = info.driver;
                    daemon.live_restore = info.live_restore_enabled;
                    Some(client)
                }
                Err(reason) => {
                    tracing::warn!(socket = %socket.display(), %reason, "dockerd does not answer; resolving offline from the data root");
                    daemon.offline_reason = Some(reason);
                    None
                }
            }
        };
        layout::railed_data_root(&daemon, &host_root, origin)?;
        Ok(Docker {
            daemon,
            client,
            timeout: opts.timeout,
            list_deadline: opts.list_deadline,
        })
    }

    /// An error from (or a silence of) the daemon's API.
    fn api_error(&self, message: String) -> DockerError {
        DockerError::Api {
            socket: self.daemon.socket.display().to_string(),
            message,
        }
    }

    fn no_answer(&self) -> DockerError {
        self.api_error(format!("no answer within {:?}", self.timeout))
    }

    pub fn online(&self) -> bool {
        self.client.is_some()
    }

    /// Resolves ids, unique id prefixes or names, like the docker CLI. Containers of a
    /// Kubernetes pod learn their pod's other containers (a pod's containers share its
    /// mounts: the pause container's shm is every container's /dev/shm). All of it within
    /// the overall deadline.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Container>, DockerError> {
        let mut budget = Budget::new(self.timeout, self.list_deadline);
        let mut out: Vec<Container> = names
            .iter()
            .map(|n| self.resolve_one(n, &mut budget))
            .collect::<Result<_, _>>()?;
        if out.iter().any(|c| c.pod_uid.is_some()) {
            let all = self.list_within(&mut budget)?;
            for c in &mut out {
                if let Some(linked) = all.iter().find(|a| a.id == c.id) {
                    c.pod_pids = linked.pod_pids.clone();
                }
            }
        }
        Ok(out)
    }

    /// One API call within its deadline and the `budget` of the run it is part of.
    fn call<T>(
        &self,
        budget: &mut Budget,
        what: &str,
        f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<Result<T, bollard::errors::Error>, DockerError> {
        let overrun = |overrun| DockerError::Overrun {
            socket: self.daemon.socket.display().to_string(),
            overrun,
        };
        let timeout = budget.next(what).map_err(overrun)?;
        let rt = api::runtime().map_err(|e| self.api_error(e))?;
        match rt.block_on(async { tokio::time::timeout(timeout, f).await }) {
            Err(_) => Err(match budget.silence(what, timeout) {
                Some(over) => overrun(over),
                None => self.no_answer(),
            }),
            Ok(r) => {
                budget.answered();
                Ok(r)
            }
        }
    }

    fn resolve_one(&self, name: &str, budget: &mut Budget) -> Result<Container, DockerError> {
        match &self.client {
            Some(client) => {
                let what = format!("GET /containers/{name}/json");
                match self.call(budget, &what, client.inspect_container(name, None))? {
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code,
                        message,
                    }) if status_code == 404 || message.contains("ultiple IDs") => {
                        // Old daemons answer 404 for an ambiguous prefix, newer ones 500.
                        if message.contains("ultiple IDs") {
                            Err(DockerError::Ambiguous {
                                name: name.into(),
                                ids: message,
                            })
                        } else {
                            Err(DockerError::NotFound(
                                name.into(),
                                format!("dockerd at {}", self.daemon.socket.display()),
                            ))
                        }
                    }
                    Err(e) => Err(self.api_error(e.to_string())),
                    Ok(c) => Ok(self.container_from_inspect(c)?),
                }
            }
            None => {
                let all = self.list_offline()?;
                pick(name, &all, &self.daemon.root)
            }
        }
    }

    /// Every container the daemon (or data root) knows, within the overall deadline.
    pub fn list(&self) -> Result<Vec<Container>, DockerError> {
        self.list_within(&mut Budget::new(self.timeout, self.list_deadline))
    }

    fn list_within(&self, budget: &mut Budget) -> Result<Vec<Container>, DockerError> {
        let mut out = match &self.client {
            Some(client) => {
                let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build();
                let listed = self
                    .call(
                        budget,
                        "GET /containers/json",
                        client.list_containers(Some(options)),
                    )?
                    .map_err(|e| self.api_error(e.to_string()))?;
                let ids: Vec<String> = listed.into_iter().filter_map(|c| c.id).collect();
                // Containers removed meanwhile are simply not listed; bad records are named.
                // Any other failure fails the list: a container left out would make its
                // mounts look orphaned.
                let mut out = Vec::new();
                for id in &ids {
                    match self.resolve_one(id, budget) {
                        Ok(c) => out.push(c),
                        Err(DockerError::BadRecord(bad)) => {
                            tracing::warn!(file = %bad.file, problem = %bad.problem, "container record skipped");
                        }
                        Err(DockerError::NotFound(..)) => {}
                        Err(other) => return Err(other),
                    }
                }
                out
            }
            None => self.list_offline()?,
        };
        // A pod's containers share its mounts: each knows the others' init pids.
        crate::runtime::model::link_pods(&mut out);
        Ok(out)
    }

    fn list_offline(&self) -> Result<Vec<Container>, DockerError> {
        let dir = self.daemon.root.join("containers");
        let entries = std::fs::read_dir(on_host(&self.daemon.host_root, &dir)).map_err(|e| {
            DockerError::Unreachable {
                socket: self.daemon.socket.display().to_string(),
                reason: self
                    .daemon
                    .offline_reason
                    .clone()
                    .unwrap_or_else(|| "not asked".into()),
                root: self.daemon.root.display().to_string(),
                error: format!("{}: {e}", dir.display()),
            }
        })?;
        let mut out: Vec<Container> = entries
            .filter_map(|e| e.ok())
            .filter_map(
                |e| match read_config(&self.daemon.root, &self.daemon.host_root, &e.path())? {
                    Ok(c) => Some(c),
                    Err(bad) => {
                        tracing::warn!(file = %bad.file, problem = %bad.problem, "container record skipped");
                        None
                    }
                },
            )
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

impl Daemon {
    /// Cross-checks the daemon's own word on its data root (`/info`) with what its
    /// command line and daemon.json say; a disagreement makes the identity unsure.
    pub(super) fn check_data_root(&mut self, said: &Path, configured: &Path) {
        let Some(pid) = self.pid else {
            return;
        };
        let real = |p: &Path| std::fs::canonicalize(on_host(&self.host_root, p)).ok();
        if configured != said && real(configured) != real(said) {
            self.identity.unsure = Some(format!(
                "dockerd pid {pid} is configured with data root {} but the daemon at {} \
                 answers {}: another daemon?",
                configured.display(),
                self.socket.display(),
                said.display()
            ));
            self.pid = None;
            self.mnt_ns = None;
        } else {
            self.identity.evidence.push(format!(
                "its /info data root {} matches its configuration",
                said.display()
            ));
        }
    }
}

/// Picks one container by full id, exact name, or unique id prefix (docker's order).
fn pick(name: &str, all: &[Container], root: &Path) -> Result<Container, DockerError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    // A full id first, then an exact name: a container *named* like another's id never
    // stands in for it.
    if let Some(c) = all
        .iter()
        .find(|c| c.id == name)
        .or_else(|| all.iter().find(|c| c.name == bare))
    {
        return Ok(c.clone());
    }
    let prefixed: Vec<&Container> = all
        .iter()
        .filter(|c| !name.is_empty() && c.id.starts_with(name))
        .collect();
    match prefixed.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(DockerError::NotFound(
            name.into(),
            format!("data root {}", root.display()),
        )),
        many => Err(DockerError::Ambiguous {
            name: name.into(),
            ids: many
                .iter()
                .map(|c| short_id(&c.id).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A running overlay2 container with nothing resolved: for tests of plain logic.
    pub(crate) fn c(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            state: "running".into(),
            pid: None,
            driver: "overlay2".into(),
            mount_id: None,
            init_id: None,
            paths: Vec::new(),
            upperdir: None,
            pod_uid: None,
            pod: None,
            sandbox: false,
            pod_pids: Vec::new(),
        }
    }

    #[test]
    fn picks_like_the_docker_cli() {
        let all = vec![c("abc123", "web"), c("abd456", "db"), c("fff", "abc")];
        let root = Path::new("/r");
        assert_eq!(pick("abc123", &all, root).unwrap().name, "web");
        // A container named like another one's id does not win over that id.
        let named_like_an_id = vec![c("zzz", "abc123"), c("abc123", "web")];
        assert_eq!(pick("abc123", &named_like_an_id, root).unwrap().name, "web");
        // A name wins over an id prefix.
        assert_eq!(pick("abc", &all, root).unwrap().id, "fff");
        assert_eq!(pick("/db", &all, root).unwrap().id, "abd456");
        assert_eq!(pick("abd", &all, root).unwrap().id, "abd456");
        assert!(matches!(
            pick("ab", &all, root),
            Err(DockerError::Ambiguous { .. })
        ));
        assert!(matches!(
            pick("zzz", &all, root),
            Err(DockerError::NotFound(..))
        ));
    }
}
