//! The `mntreap` command line: flags are parsed, then validated into requests before any
//! work; stdout carries the report, stderr the logs.
//!
//! Exit codes: 0 nothing (in scope) holds the target; 1 some copies remain, or findings
//! (listed); 2 bad input or refusal, with nothing changed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::docker::{Docker, DockerOptions};
use crate::policy::Policy;
use crate::release::{self, Scope};
use crate::report;
use crate::scan::{self, ScanRequest};
use crate::source::BackendChoice;

/// Exit status: nothing holds the target (any more).
pub const EXIT_CLEAN: u8 = 0;
/// Exit status: copies remain (in use, failed, or found by a scan), or findings.
pub const EXIT_REMAINING: u8 = 1;
/// Exit status: bad input or refusal; nothing was changed.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "mntreap",
    version,
    about = "Find and release container layer mounts leaked into other mount namespaces"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Who holds these containers' mounts or these paths, in every mount namespace. With no
    /// target: the node-wide report of leaked and orphaned container mounts.
    Scan(ScanArgs),
    /// Unmount the copies that scan finds, children first, in every foreign namespace.
    Release(ReleaseArgs),
    /// Release the mounts of containers stuck in removal (Dead / Removal In Progress), or of
    /// the named ones, then remove them through the Engine API.
    Reap(ReapArgs),
    /// Check the host for the configurations that leak mounts, with evidence and remedies.
    Doctor(DoctorArgs),
    /// Serve the Docker authorization plugin (docker.authz/1.0) that releases a container's
    /// leaked copies before Docker stops or removes it.
    Plugin(PluginArgs),
    /// Run the node agent: event-driven and periodic release, metrics, preStop hook socket.
    Agent(AgentArgs),
    /// Clients of the agent's hook socket.
    #[command(subcommand)]
    Hook(HookCommand),
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Seconds between sweeps over the node-wide report (0: off).
    #[arg(long, default_value_t = 60)]
    sweep_interval: u64,
    /// Where to serve /metrics and /healthz ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9477")]
    metrics_addr: String,
    /// The hook socket pods reach from their preStop hook.
    #[arg(long, default_value = "/run/mntreap/hook.sock")]
    hook_socket: PathBuf,
    /// Leave a namespace or process alone: ns:<inode>, pid:<pid>, comm:<name> (repeatable).
    #[arg(long, value_name = "WHAT")]
    exclude: Vec<crate::agent::Exclude>,
    /// Do not follow the daemon's event stream.
    #[arg(long)]
    no_events: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Subcommand, Debug)]
enum HookCommand {
    /// Ask the agent to release this container's foreign copies (a pod's preStop hook).
    PreStop {
        /// The agent's hook socket (mounted into the pod).
        #[arg(long, default_value = "/run/mntreap/hook.sock")]
        socket: PathBuf,
        /// Which container (default: the caller's own; any other is refused).
        #[arg(long)]
        container: Option<String>,
    },
}

#[derive(Args, Debug)]
struct PluginArgs {
    /// The unix socket to serve (inside a managed plugin: /run/docker/plugins/<name>.sock).
    #[arg(
        long,
        env = "MNTREAP_PLUGIN_SOCKET",
        default_value = "/run/docker/plugins/mntreap.sock"
    )]
    socket: PathBuf,
    /// How long a cleanup may hold an API call (milliseconds); the call is allowed anyway.
    #[arg(long, env = "MNTREAP_DEADLINE_MS", default_value_t = 2000)]
    deadline_ms: u64,
    /// Allow everything and do nothing else (measures Docker's own plugin plumbing).
    #[arg(long, env = "MNTREAP_NOOP", default_value_t = false)]
    noop: bool,
    /// Seconds between backstop sweeps of stopped containers (0: off).
    #[arg(long, env = "MNTREAP_SWEEP_INTERVAL", default_value_t = 30)]
    sweep_interval: u64,
    /// Do not follow the daemon's event stream.
    #[arg(long, env = "MNTREAP_NO_EVENTS", default_value_t = false)]
    no_events: bool,
    /// Testing aid: `fail` makes every cleanup fail, `slow:<ms>` makes it take that long.
    #[arg(long, env = "MNTREAP_FAULT", hide = true)]
    fault: Option<crate::plugin::Fault>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct EngineArgs {
    /// Print JSON on stdout (schema in README.md).
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
    /// copies at other paths (much faster on large nodes; see README, Benchmark).
    #[arg(long)]
    paths_only: bool,
    /// Worker threads that read namespaces in parallel (default: cores, at most 4).
    #[arg(long, env = "MNTREAP_THREADS")]
    threads: Option<usize>,
    /// Where procfs is mounted (the host's, when mntreap runs in a container).
    #[arg(long, env = "MNTREAP_PROC", default_value = "/proc", hide = true)]
    proc: PathBuf,
    #[command(flatten)]
    docker: DockerArgs,
}

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
    /// Resolve containers from the data root only; do not ask the daemon.
    #[arg(long)]
    offline: bool,
    /// How long dockerd has to answer (seconds).
    #[arg(long, default_value_t = 3)]
    docker_timeout: u64,
    /// Where the host's files are seen from here. Default: `/`; inside the managed plugin,
    /// the root of the dockerd that connects to it (`/proc/<pid>/root`).
    #[arg(long, env = "MNTREAP_HOST_ROOT")]
    host_root: Option<String>,
}

#[derive(Args, Debug)]
struct ScanArgs {
    /// Containers (id, unique id prefix or name).
    containers: Vec<String>,
    /// A mount point to look for (repeatable), e.g. /var/lib/docker/overlay2/<id>/merged.
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct ReleaseArgs {
    /// Containers (id, unique id prefix or name).
    containers: Vec<String>,
    /// A mount point to release (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also release the copies in the protected namespace (mntreap's own for paths,
    /// dockerd's for running containers).
    #[arg(long)]
    everywhere: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct ReapArgs {
    /// Containers to reap (default: every container stuck Dead / Removal In Progress).
    containers: Vec<String>,
    /// Print what would be released and removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Plugin(_) | Command::Agent(_)) {
        init_plugin_logging(cli.verbose);
    } else {
        init_logging(cli.log_format, cli.verbose);
    }
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("mntreap: error: {msg}");
            EXIT_USAGE
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("mntreap: error: {err:#}");
            EXIT_USAGE
        }
    };
    ExitCode::from(code)
}

/// Why a command did nothing.
pub(crate) enum Failure {
    /// Bad input: nothing was done.
    Usage(String),
    /// The scan could not run (no permission for /proc, ...): nothing was done.
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(e.into())
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn,mntreap::audit=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a patched dockerd logs the helper's stderr verbatim.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The plugin logs JSON lines on stdout (the daemon copies them into its log), each with
/// the call and container it is about, from the span.
fn init_plugin_logging(verbose: u8) {
    let default = if verbose > 0 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .init();
}

impl EngineArgs {
    pub(crate) fn docker_options(&self) -> DockerOptions {
        DockerOptions {
            host: self.docker.docker_host.clone().filter(|h| !h.is_empty()),
            // An empty setting (a managed plugin's declared default) means "not set".
            root: self
                .docker
                .docker_root
                .clone()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            offline: self.docker.offline,
            timeout: Duration::from_secs(self.docker.docker_timeout.max(1)),
            host_root: self
                .docker
                .host_root
                .clone()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            daemon_pid: None,
        }
    }

    /// Validates path targets and builds a scan request (no side effects). Container
    /// paths come from the data root and skip the path rails.
    pub(crate) fn request(
        &self,
        raw_paths: &[String],
        trusted: Vec<PathBuf>,
    ) -> Result<ScanRequest, Failure> {
        // The configured data root is a runtime root too: a patched dockerd with a
        // non-default root calls `mntreap release --path` with MNTREAP_DOCKER_ROOT set.
        let mut extra_roots = self.runtime_roots.clone();
        extra_roots.push(
            self.docker_options()
                .root
                .unwrap_or_else(|| PathBuf::from(crate::docker::DEFAULT_ROOT)),
        );
        let policy = Policy {
            any_path: self.any_path,
            extra_roots,
        };
        let mut targets = trusted;
        for raw in raw_paths {
            let t = policy
                .check(raw)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            targets.push(t);
        }
        targets.dedup();
        let own =
            crate::namespace::open_ns(self.proc.join("self/ns/mnt").as_os_str()).map_err(|e| {
                Failure::Usage(format!(
                    "cannot open {}/self/ns/mnt: {e}; mntreap needs root (CAP_SYS_ADMIN and \
                     CAP_SYS_PTRACE)",
                    self.proc.display()
                ))
            })?;
        let probe = crate::namespace::Namespace {
            inode: 0,
            fd: own,
            pid_used: std::process::id() as i32,
            pids: Vec::new(),
            own: true,
            host_userns: true,
        };
        Ok(ScanRequest {
            targets,
            backend: self.backend.resolve(&probe),
            proc_root: self.proc.clone(),
            threads: self.threads.unwrap_or_else(scan::default_threads).max(1),
            paths_only: self.paths_only,
            layer_signatures: Vec::new(),
            trusted_namespaces: Vec::new(),
        })
    }

    pub(crate) fn connect(&self) -> Result<Docker, Failure> {
        Docker::connect(&self.docker_options()).map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// A target that does not exist here and that no namespace holds is a typo, not a leak.
fn check_targets_exist(scan: &scan::Scan, checked: &[PathBuf]) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    for t in checked {
        let held = scan
            .holders
            .iter()
            .any(|h| crate::table::path_is_under(&h.mount_point, t.as_os_str().as_bytes()));
        if !held && std::fs::symlink_metadata(t).is_err() {
            return Err(Failure::Usage(format!(
                "{} does not exist and no mount namespace holds a mount there; check the path \
                 (for a container, pass its name or id instead)",
                t.display()
            )));
        }
    }
    Ok(())
}

fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Scan(args) => scan_command(args),
        Command::Release(args) => release_command(args),
        Command::Reap(args) => crate::reap::command(&args.engine, &args.containers, args.dry_run),
        Command::Doctor(args) => crate::doctor::command(&args.engine),
        Command::Agent(args) => {
            let base = args.engine.request(&[], Vec::new())?;
            let metrics_addr = match args.metrics_addr.as_str() {
                "off" => None,
                a => Some(a.parse().map_err(|e| {
                    Failure::Usage(format!("--metrics-addr {a:?}: {e} (host:port, or off)"))
                })?),
            };
            crate::agent::run(crate::agent::AgentConfig {
                sweep: Duration::from_secs(args.sweep_interval),
                metrics_addr,
                hook_socket: Some(args.hook_socket),
                exclude: args.exclude,
                events: !args.no_events,
                docker: args.engine.docker_options(),
                base,
            })?;
            Ok(EXIT_CLEAN)
        }
        Command::Hook(HookCommand::PreStop { socket, container }) => {
            let (ok, reply) = crate::agent::hook_client(&socket, container.as_deref())?;
            print(&reply);
            if ok {
                Ok(EXIT_CLEAN)
            } else {
                let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
                Err(Failure::Usage(
                    v["error"].as_str().unwrap_or("refused").to_string(),
                ))
            }
        }
        Command::Plugin(args) => {
            let base = args.engine.request(&[], Vec::new())?;
            crate::plugin::run(crate::plugin::PluginConfig {
                socket: args.socket,
                deadline: Duration::from_millis(args.deadline_ms),
                noop: args.noop,
                sweep: Duration::from_secs(args.sweep_interval),
                events: !args.no_events,
                docker: args.engine.docker_options(),
                base,
                fault: args.fault,
            })?;
            Ok(EXIT_CLEAN)
        }
    }
}

fn scan_command(args: ScanArgs) -> Result<u8, Failure> {
    let e = &args.engine;
    if args.containers.is_empty() && args.paths.is_empty() {
        return crate::node_report::command(e);
    }
    let (docker, containers) = resolve_containers(e, &args.containers)?;
    let trusted: Vec<PathBuf> = containers.iter().flat_map(|c| c.paths.clone()).collect();
    let mut req = e.request(&args.paths, trusted)?;
    req.layer_signatures = crate::docker::layer_signatures(&containers);
    if let Some(d) = &docker {
        req.trusted_namespaces = d.daemon.trusted_namespaces();
    }
    let scan = scan::scan(&req)?;
    let checked: Vec<PathBuf> = req
        .targets
        .iter()
        .filter(|t| !containers.iter().any(|c| c.paths.contains(t)))
        .cloned()
        .collect();
    check_targets_exist(&scan, &checked)?;
    let view = docker
        .as_ref()
        .map(|d| crate::node_report::ContainerView::new(&scan, d, &containers));
    let leaks = match &view {
        None => scan.foreign_holders().next().is_some(),
        Some(v) => v.has_leaks(),
    };
    let out = match (&view, e.json) {
        (_, true) => {
            let mut doc = report::scan_json(&scan);
            if let Some(v) = &view {
                v.annotate(&mut doc);
            }
            format!("{doc:#}\n")
        }
        (None, false) => report::scan_text(&scan),
        (Some(v), false) => v.text(),
    };
    print(&out);
    let unsure = docker.as_ref().and_then(|d| d.daemon.unsure_note());
    if let Some(n) = &unsure {
        eprintln!("note: {n}");
    }
    Ok(if leaks || unsure.is_some() {
        EXIT_REMAINING
    } else {
        EXIT_CLEAN
    })
}

/// Resolves named containers (if any) through the daemon or the data root.
pub(crate) fn resolve_containers(
    e: &EngineArgs,
    names: &[String],
) -> Result<(Option<Docker>, Vec<crate::docker::Container>), Failure> {
    if names.is_empty() {
        return Ok((None, Vec::new()));
    }
    let docker = e.connect()?;
    let containers = docker
        .resolve(names)
        .map_err(|err| Failure::Usage(err.to_string()))?;
    Ok((Some(docker), containers))
}

fn release_command(args: ReleaseArgs) -> Result<u8, Failure> {
    let e = &args.engine;
    if args.containers.is_empty() && args.paths.is_empty() {
        return Err(Failure::Usage(
            "name the containers or --path mount points to release (`mntreap scan` with no \
             target shows the node's leaks)"
                .into(),
        ));
    }
    let (docker, containers) = resolve_containers(e, &args.containers)?;
    let mut releases = Vec::new();
    if !args.paths.is_empty() {
        let req = e.request(&args.paths, Vec::new())?;
        let scan = scan::scan(&req)?;
        check_targets_exist(&scan, &req.targets)?;
        let scope = Scope {
            everywhere: args.everywhere,
            protected: None,
        };
        releases.push((None, release::run_on(scan, &req, scope, args.dry_run)?));
    }
    if let Some(docker) = &docker {
        let base = e.request(&[], Vec::new())?;
        for c in &containers {
            let req = crate::docker::container_request(&base, &docker.daemon, c);
            let scope = crate::docker::release_scope(&docker.daemon, c, args.everywhere);
            releases.push((Some(c), release::run(&req, scope, args.dry_run)?));
        }
    }
    let remaining = releases
        .iter()
        .any(|(_, r)| !r.remaining().is_empty() || r.still_pinned());
    let out = if e.json {
        let docs: Vec<serde_json::Value> = releases
            .iter()
            .map(|(c, r)| {
                let mut doc = report::release_json(r);
                if let Some(c) = c {
                    doc["container"] = serde_json::to_value(c).unwrap_or_default();
                }
                doc
            })
            .collect();
        let doc = match (&docker, docs.len()) {
            (None, 1) => docs.into_iter().next().expect("one"),
            _ => serde_json::json!({
                "docker": docker.as_ref().map(|d| &d.daemon),
                "releases": docs,
            }),
        };
        format!("{doc:#}\n")
    } else {
        let mut text = String::new();
        for (c, r) in &releases {
            if let Some(c) = c {
                text.push_str(&format!(
                    "container {} ({}, {}):\n",
                    c.name,
                    crate::docker::short_id(&c.id),
                    c.state
                ));
            }
            text.push_str(&report::release_text(r));
        }
        text
    };
    print(&out);
    let unsure = docker.as_ref().and_then(|d| d.daemon.unsure_note());
    if let Some(n) = &unsure {
        eprintln!("note: {n}");
    }
    Ok(if remaining || unsure.is_some() {
        EXIT_REMAINING
    } else {
        EXIT_CLEAN
    })
}

pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
