//! The `mntreap` command line: flags are parsed, validated once into a
//! [`commands::Config`], and handed to a command or a daemon; logging is set up here.
//!
//! Exit codes ([`commands::Exit`]): 0 nothing (in scope) holds the target; 1 some copies
//! remain, findings (listed), or work that stopped part way; 2 bad input or refusal, with
//! nothing changed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod engine_args;

use crate::commands::{self, Exit, Failure};
use engine_args::EngineArgs;

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
    /// Every reason a path's filesystem or a block device is busy, in every mount namespace:
    /// mounts and their copies, processes, loop devices, swap, stacked devices.
    Why(WhyArgs),
    /// Serve the Docker authorization plugin (docker.authz/1.0) that releases a container's
    /// leaked copies before Docker stops or removes it.
    Plugin(PluginArgs),
    /// Run the node agent: event-driven and periodic release, metrics, preStop hook socket.
    Agent(AgentArgs),
    /// Clients of the agent's hook socket.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Ask the agent's health socket whether it serves (the DaemonSets' liveness and
    /// readiness probe): exit 0 when it answers within the timeout, 2 otherwise.
    Probe {
        /// The agent's `--health-socket`.
        #[arg(long)]
        socket: PathBuf,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

#[derive(Args, Debug)]
struct WhyArgs {
    /// A path (its filesystem), a block device (/dev/X), MAJ:MIN, or a container or pod
    /// (each filesystem of its mounts).
    target: String,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Seconds between sweeps over the node-wide report (0: off).
    #[arg(long, default_value_t = 60)]
    sweep_interval: u64,
    /// Keep mount tables between sweeps and releases and reuse a namespace's while its
    /// mounts are the same (listmount ids, mount events), reading it again after this many
    /// seconds (0: read every table every time). A sweep releases what it found from
    /// tables read again; a hook or event release confirms by id what it rests on.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    index_max_age: u64,
    /// Where to serve /metrics and /healthz ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9477")]
    metrics_addr: String,
    /// The hook socket pods reach from their preStop hook.
    #[arg(long, default_value = "/run/mntreap/hook.sock")]
    hook_socket: PathBuf,
    /// Serve the root-only socket `mntreap probe` asks here (default: none). Keep it out
    /// of the hook socket's directory: pods that mount that one must not reach it.
    #[arg(long, value_name = "PATH")]
    health_socket: Option<PathBuf>,
    /// Leave a namespace or process alone: ns:<inode>, pid:<pid>, comm:<name> (repeatable).
    #[arg(long, value_name = "WHAT")]
    exclude: Vec<crate::daemon::agent_state::Exclude>,
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
    /// Keep mount tables between cleanups and reuse a namespace's while the kernel's mount
    /// events (Linux 6.15+) report no change to it, reading it again after this many
    /// seconds (0: read every table every cleanup). What a release rests on is read again
    /// by id before it unmounts.
    #[arg(
        long,
        env = "MNTREAP_INDEX_MAX_AGE",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    index_max_age: u64,
    /// Testing aid: `fail` makes every cleanup fail, `slow:<ms>` makes it take that long.
    #[arg(long, env = "MNTREAP_FAULT", hide = true)]
    fault: Option<crate::daemon::cleanup::Fault>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct ScanArgs {
    /// Containers (id, unique id prefix or name).
    containers: Vec<String>,
    /// A mount point to look for (repeatable), e.g. /var/lib/docker/overlay2/<id>/merged.
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// A block device (/dev/X or MAJ:MIN, repeatable) whose filesystem to look for: every
    /// mount of it, in every namespace, at any path (a CSI volume, an rbd or LUKS device).
    #[arg(long = "device", value_name = "DEVICE", conflicts_with_all = ["containers", "paths"])]
    devices: Vec<String>,
    /// A volume of the one pod named (its directory's name under kubelet's
    /// `pods/<uid>/volumes/<plugin>/`: the volume's name, or the PV's for CSI): its block
    /// device, as with --device.
    #[arg(long, value_name = "NAME", requires = "containers", conflicts_with_all = ["paths", "devices"])]
    volume: Option<String>,
    /// The node-wide report as a node-problem-detector custom plugin: one line on stdout,
    /// exit 0 (ok), 1 (leaked or orphaned mounts) or 2 (unknown: the scan could not run, or
    /// is incomplete).
    #[arg(long, conflicts_with_all = ["containers", "paths", "devices", "volume", "json"])]
    npd: bool,
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
    /// A block device (/dev/X or MAJ:MIN, repeatable) whose filesystem to release: its
    /// copies in other namespaces go; what the runtime and kubelet mounted, and the volumes
    /// running containers asked for, stay.
    #[arg(long = "device", value_name = "DEVICE", conflicts_with_all = ["containers", "paths"])]
    devices: Vec<String>,
    /// A volume of the one pod named (its directory's name under kubelet's
    /// `pods/<uid>/volumes/<plugin>/`: the volume's name, or the PV's for CSI): its block
    /// device, released as with --device.
    #[arg(long, value_name = "NAME", requires = "containers", conflicts_with_all = ["paths", "devices"])]
    volume: Option<String>,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also release the copies in the protected namespaces (mntreap's own for paths,
    /// dockerd's for running containers, the runtime's and mntreap's own for devices).
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

/// The command line's definition, for what is generated from it (man pages, completions:
/// `examples/gen-docs.rs`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under --json a command line that does not parse is an error document too.
            let usage = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if usage && std::env::args().any(|a| a == "--json") {
                commands::print(&crate::report::doc::to_text(
                    &crate::report::doc::ErrorDoc {
                        error: e
                            .to_string()
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .trim_start_matches("error: ")
                            .to_string(),
                        kind: crate::report::doc::FailureKind::BadInput,
                    },
                ));
            }
            e.exit()
        }
    };
    if matches!(cli.command, Command::Plugin(_) | Command::Agent(_)) {
        init_plugin_logging(cli.verbose);
    } else {
        init_logging(cli.log_format, cli.verbose);
    }
    // One descriptor per mount namespace is held through a scan: a node has thousands.
    if let Err(e) = crate::daemon::serve::raise_nofile() {
        tracing::debug!(error = %e, "the descriptor limit could not be raised");
    }
    let json = cli.command.json();
    match run(cli.command) {
        Ok(exit) => exit.into(),
        Err(failure) => {
            crate::report::output::stderr_line(&format!("mntreap: error: {failure}"));
            if json {
                commands::print(&crate::report::doc::to_text(
                    &crate::report::doc::ErrorDoc {
                        error: failure.to_string(),
                        kind: failure.kind(),
                    },
                ));
            }
            Exit::Usage.into()
        }
    }
}

impl Command {
    /// Whether the command was asked for JSON (its failures then print an error document).
    fn json(&self) -> bool {
        match self {
            Command::Scan(a) => a.engine.json,
            Command::Release(a) => a.engine.json,
            Command::Reap(a) => a.engine.json,
            Command::Doctor(a) => a.engine.json,
            Command::Why(a) => a.engine.json,
            Command::Plugin(_) | Command::Agent(_) | Command::Hook(_) | Command::Probe { .. } => {
                false
            }
        }
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
    // A failed write is dropped, not reported with `eprintln!` (which panics on a closed
    // pipe; see `report::output`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
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
        .log_internal_errors(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .init();
}

fn run(command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Scan(args) => {
            if args.npd {
                commands::node_report::problem_line(&args.engine.config()?)
            } else {
                commands::scan::command(
                    &args.engine.config()?,
                    &args.containers,
                    &args.paths,
                    &args.devices,
                    args.volume.as_deref(),
                )
            }
        }
        Command::Release(args) => commands::release::command(
            &args.engine.config()?,
            commands::release::ReleaseArgs {
                containers: &args.containers,
                paths: &args.paths,
                devices: &args.devices,
                volume: args.volume.as_deref(),
                dry_run: args.dry_run,
                everywhere: args.everywhere,
            },
        ),
        Command::Reap(args) => {
            commands::reap::command(&args.engine.config()?, &args.containers, args.dry_run)
        }
        Command::Doctor(args) => commands::doctor::command(&args.engine.config()?),
        Command::Why(args) => commands::why::command(&args.engine.config()?, &args.target),
        Command::Hook(HookCommand::PreStop { socket, container }) => {
            commands::hook::pre_stop(&socket, container.as_deref())
        }
        Command::Probe { socket, timeout } => {
            commands::hook::probe(&socket, Duration::from_secs(timeout.max(1)))
        }
        Command::Agent(args) => {
            let config = args.engine.config()?;
            let metrics_addr = match args.metrics_addr.as_str() {
                "off" => None,
                a => Some(a.parse().map_err(|e| {
                    Failure::Usage(format!("--metrics-addr {a:?}: {e} (host:port, or off)"))
                })?),
            };
            crate::daemon::agent::run(crate::daemon::agent_state::AgentConfig {
                sweep: Duration::from_secs(args.sweep_interval),
                index_max_age: Duration::from_secs(args.index_max_age),
                metrics_addr,
                hook_socket: Some(args.hook_socket),
                health_socket: args.health_socket,
                exclude: args.exclude,
                events: !args.no_events,
                docker: config.docker,
                runtime: config.runtime,
                cri: config.cri,
                base: config.base,
            })
            .map_err(Failure::Runtime)?;
            Ok(Exit::Clean)
        }
        Command::Plugin(args) => {
            let config = args.engine.config()?;
            crate::daemon::plugin::run(crate::daemon::plugin::PluginConfig {
                socket: args.socket,
                deadline: Duration::from_millis(args.deadline_ms),
                noop: args.noop,
                sweep: Duration::from_secs(args.sweep_interval),
                events: !args.no_events,
                index_max_age: Duration::from_secs(args.index_max_age),
                docker: config.docker,
                base: config.base,
                fault: args.fault,
            })
            .map_err(Failure::Runtime)?;
            Ok(Exit::Clean)
        }
    }
}
