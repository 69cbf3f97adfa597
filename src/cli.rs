//! The `mntreap` command line: flags are parsed, then validated into a request before any
//! work; stdout carries the report, stderr the logs.
//!
//! Exit codes: 0 nothing (in scope) holds the target; 1 some copies remain (listed);
//! 2 bad input or refusal, with nothing changed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::policy::Policy;
use crate::release::{self, Scope};
use crate::report;
use crate::scan::{self, ScanRequest};
use crate::source::BackendChoice;

/// Exit status: nothing holds the target (any more).
pub const EXIT_CLEAN: u8 = 0;
/// Exit status: copies remain (in use, failed, or found by a scan).
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
    /// List every mount namespace holding a mount at (or below) the given paths, and every
    /// copy of those mounts at other paths.
    Scan(TargetArgs),
    /// Unmount the copies that scan finds, children first, in every foreign namespace.
    Release(ReleaseArgs),
}

#[derive(Args, Debug)]
struct TargetArgs {
    /// A mount point to look for (repeatable), e.g. /var/lib/docker/overlay2/<id>/merged.
    #[arg(long = "path", value_name = "PATH", required = true)]
    paths: Vec<String>,
    /// Print JSON on stdout (schema in README.md).
    #[arg(long)]
    json: bool,
    /// Allow paths outside the container runtimes' directories.
    #[arg(long)]
    any_path: bool,
    /// Another directory to treat as a runtime root (a non-default docker data root).
    #[arg(long = "runtime-root", value_name = "DIR")]
    runtime_roots: Vec<PathBuf>,
    /// How to read mount tables: listmount(2) where the kernel has it, else mountinfo.
    #[arg(long, value_enum, env = "MNTREAP_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// Only mounts at or below the paths, in each namespace's view: skip the search for
    /// copies at other paths (much faster on large nodes; see README, Benchmark).
    #[arg(long)]
    paths_only: bool,
    /// Worker threads that read namespaces in parallel (default: cores, at most 4).
    #[arg(long, env = "MNTREAP_THREADS")]
    threads: Option<usize>,
    /// Where procfs is mounted (the host's, when mntreap runs in a container).
    #[arg(long, env = "MNTREAP_PROC", default_value = "/proc", hide = true)]
    proc: PathBuf,
}

#[derive(Args, Debug)]
struct ReleaseArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also release the copies in mntreap's own namespace (the host's view).
    #[arg(long)]
    everywhere: bool,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
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

enum Failure {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Validates targets and builds the scan request (no side effects).
fn request(args: &TargetArgs) -> Result<ScanRequest, Failure> {
    let policy = Policy {
        any_path: args.any_path,
        extra_roots: args.runtime_roots.clone(),
    };
    let mut targets = Vec::new();
    for raw in &args.paths {
        let t = policy
            .check(raw)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let own =
        crate::namespace::open_ns(args.proc.join("self/ns/mnt").as_os_str()).map_err(|e| {
            Failure::Usage(format!(
                "cannot open {}/self/ns/mnt: {e}; mntreap needs root (CAP_SYS_ADMIN and \
                 CAP_SYS_PTRACE)",
                args.proc.display()
            ))
        })?;
    let probe = crate::namespace::Namespace {
        inode: 0,
        fd: own,
        pid_used: std::process::id() as i32,
        pids: Vec::new(),
        own: true,
    };
    Ok(ScanRequest {
        targets,
        backend: args.backend.resolve(&probe),
        proc_root: args.proc.clone(),
        threads: args.threads.unwrap_or_else(scan::default_threads).max(1),
        paths_only: args.paths_only,
    })
}

/// A target that does not exist here and that no namespace holds is a typo, not a leak.
fn check_targets_exist(scan: &scan::Scan) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    for t in &scan.targets {
        let held = scan
            .holders
            .iter()
            .any(|h| crate::table::path_is_under(&h.mount_point, t.as_os_str().as_bytes()));
        if !held && std::fs::symlink_metadata(t).is_err() {
            return Err(Failure::Usage(format!(
                "{} does not exist and no mount namespace holds a mount there; check the path \
                 (for a container, pass its layer's mount point, e.g. \
                 /var/lib/docker/overlay2/<id>/merged)",
                t.display()
            )));
        }
    }
    Ok(())
}

fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Scan(args) => {
            let req = request(&args)?;
            let scan = scan::scan(&req)?;
            check_targets_exist(&scan)?;
            let text = if args.json {
                format!("{:#}\n", report::scan_json(&scan))
            } else {
                report::scan_text(&scan)
            };
            print(&text);
            Ok(if scan.foreign_holders().next().is_some() {
                EXIT_REMAINING
            } else {
                EXIT_CLEAN
            })
        }
        Command::Release(args) => {
            let req = request(&args.target)?;
            let scan = scan::scan(&req)?;
            check_targets_exist(&scan)?;
            let scope = Scope {
                everywhere: args.everywhere,
            };
            let rel = release::run_on(scan, &req, scope, args.dry_run)?;
            let text = if args.target.json {
                format!("{:#}\n", report::release_json(&rel))
            } else {
                report::release_text(&rel)
            };
            print(&text);
            Ok(if !rel.remaining().is_empty() || rel.still_pinned() {
                EXIT_REMAINING
            } else {
                EXIT_CLEAN
            })
        }
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
