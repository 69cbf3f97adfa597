//! The commands an operator runs. Each takes the [`Config`] validated once from the
//! command line and returns an [`Exit`]; stdout carries the report, stderr the logs.

pub mod device;
pub mod doctor;
pub mod hook;
pub mod node_report;
pub mod reap;
pub mod release;
pub mod scan;
pub mod why;

use std::path::PathBuf;

use crate::engine::policy::Policy;
use crate::engine::scan::{Scan, ScanRequest};
use crate::runtime::ContainerRuntime;
use crate::runtime::RuntimeChoice;
use crate::runtime::cri::CriOptions;
use crate::runtime::docker::{Docker, DockerOptions};
use crate::runtime::model::{Container, Daemon};

/// A command's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Exit {
    /// Nothing (in scope) holds the target any more, or nothing did; no findings.
    Clean = 0,
    /// Copies remain (in use, refused, failed, found by a scan), findings, or work that
    /// stopped part way (the report says what was done).
    Remaining = 1,
    /// Bad input, a refusal, or a failure before anything changed.
    Usage = 2,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

impl Exit {
    /// The status of work done target by target: a failure after some copies were
    /// released is partial work, reported (1); a failure that changed nothing is 2;
    /// otherwise copies remaining or an unsure runtime identity make it 1.
    pub fn for_targets(failed: bool, released: usize, remaining: bool, unsure: bool) -> Exit {
        match (failed, released) {
            (true, 0) => Exit::Usage,
            (true, _) => Exit::Remaining,
            _ if remaining || unsure => Exit::Remaining,
            _ => Exit::Clean,
        }
    }
}

/// Why a command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input: nothing was done.
    #[error("{0}")]
    Usage(String),
    /// The work could not start (no permission for /proc, ...): nothing was done.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
    /// The container runtime does not answer and its records cannot stand in: nothing was
    /// done. Not bad input: the same command may work when the runtime is back.
    #[error("{0}")]
    Unavailable(String),
}

impl Failure {
    /// The kind an error document names.
    pub fn kind(&self) -> crate::report::doc::FailureKind {
        use crate::report::doc::FailureKind;
        match self {
            Failure::Usage(_) => FailureKind::BadInput,
            Failure::Runtime(_) => FailureKind::CannotRun,
            Failure::Unavailable(_) => FailureKind::RuntimeUnavailable,
        }
    }
}

impl From<crate::engine::scan::ScanError> for Failure {
    fn from(e: crate::engine::scan::ScanError) -> Self {
        Failure::Runtime(e.into())
    }
}

impl From<crate::runtime::RuntimeError> for Failure {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        match e {
            crate::runtime::RuntimeError::Docker(e) => e.into(),
            crate::runtime::RuntimeError::Cri(e) => e.into(),
        }
    }
}

impl From<crate::runtime::docker::DockerError> for Failure {
    fn from(e: crate::runtime::docker::DockerError) -> Self {
        use crate::runtime::docker::DockerError as E;
        match e {
            E::Unreachable { .. } | E::Api { .. } | E::Overrun { .. } => {
                Failure::Unavailable(e.to_string())
            }
            _ => Failure::Usage(e.to_string()),
        }
    }
}

impl From<crate::runtime::cri::CriError> for Failure {
    fn from(e: crate::runtime::cri::CriError) -> Self {
        use crate::runtime::cri::CriError as E;
        match e {
            E::Unreachable { .. } | E::Overrun { .. } => Failure::Unavailable(e.to_string()),
            _ => Failure::Usage(e.to_string()),
        }
    }
}

/// Everything a command needs, validated once from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Print JSON documents instead of text.
    pub json: bool,
    /// The rails for `--path` targets.
    pub policy: Policy,
    /// Extra runtime roots (`--runtime-root`), for the node-wide report.
    pub runtime_roots: Vec<PathBuf>,
    /// The scan settings (backend resolved, threads, procfs); targets filled per command.
    pub base: ScanRequest,
    /// Where and how to reach Docker.
    pub docker: DockerOptions,
    /// Which runtime (`--runtime`; auto resolved at connect).
    pub runtime: RuntimeChoice,
    /// Where and how to reach a CRI runtime.
    pub cri: CriOptions,
}

impl Config {
    /// The scan request for `raw_paths` (through the rails) plus `records`: paths a
    /// runtime gave (a container's mounts, the runtime's directories), which the runtime
    /// layer put through the same rails when it read them (`Policy::check_runtime_path`).
    pub fn request(
        &self,
        raw_paths: &[String],
        records: Vec<PathBuf>,
    ) -> Result<ScanRequest, Failure> {
        let mut targets = records;
        for raw in raw_paths {
            targets.push(
                self.policy
                    .check(raw)
                    .map_err(|e| Failure::Usage(e.to_string()))?,
            );
        }
        targets.dedup();
        Ok(ScanRequest {
            targets,
            ..self.base.clone()
        })
    }

    /// Docker itself: for what only Docker has (doctor's daemon checks).
    pub fn connect_docker(&self) -> Result<Docker, Failure> {
        Ok(Docker::connect(&self.docker)?)
    }

    /// The runtime `--runtime` names (see [`crate::runtime::connect`]).
    pub fn connect(&self) -> Result<Box<dyn ContainerRuntime>, Failure> {
        Ok(crate::runtime::connect(
            self.runtime,
            &self.docker,
            &self.cri,
        )?)
    }
}

/// Writes a report on stdout; a closed pipe changes no exit code (see [`crate::report::output`]).
pub use crate::report::output::stdout as print;

/// A connected runtime, whichever it is.
pub type Runtime = Box<dyn ContainerRuntime>;

/// Resolves named containers (if any) through the daemon or the data root.
pub fn resolve_containers(
    config: &Config,
    names: &[String],
) -> Result<(Option<Runtime>, Vec<Container>), Failure> {
    if names.is_empty() {
        return Ok((None, Vec::new()));
    }
    let runtime = config.connect()?;
    let containers = runtime.resolve(names)?;
    Ok((Some(runtime), containers))
}

/// A target that does not exist here and that no namespace holds is a typo, not a leak.
pub fn check_targets_exist(scan: &Scan, checked: &[PathBuf]) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    for t in checked {
        let held = scan
            .holders
            .iter()
            .any(|h| crate::engine::table::path_is_under(&h.mount_point, t.as_os_str().as_bytes()));
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

/// The note a report prints when namespaces could not be read (permission), also on
/// stderr: the result is incomplete, so it is never reported as clean.
pub(crate) fn denied_note(scan: &Scan) -> Option<String> {
    let denied = (!scan.denied.is_empty()).then(|| {
        format!(
            "{} mount namespace(s) could not be read ({:?}): mntreap needs CAP_SYS_ADMIN, \
             CAP_SYS_CHROOT and CAP_SYS_PTRACE; what they hold is not known",
            scan.denied.len(),
            scan.denied
        )
    });
    let note = match (denied, &scan.blind) {
        (Some(d), Some(b)) => format!("{d}; {b}"),
        (Some(d), None) => d,
        (None, Some(b)) => b.clone(),
        (None, None) => return None,
    };
    crate::report::output::stderr_line(&format!("note: {note}"));
    Some(note)
}

/// The note every report prints while the runtime's identity is unsure, also on stderr.
pub(crate) fn unsure_note(daemon: Option<&Daemon>) -> Option<String> {
    let note = daemon.and_then(|d| d.unsure_note());
    if let Some(n) = &note {
        crate::report::output::stderr_line(&format!("note: {n}"));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_work_is_never_reported_as_nothing_changed() {
        // (failed, released, remaining, unsure) -> exit
        let table = [
            ((false, 0, false, false), Exit::Clean),
            ((false, 3, false, false), Exit::Clean),
            ((false, 3, true, false), Exit::Remaining),
            ((false, 0, false, true), Exit::Remaining),
            // A target failed after others released copies: report the work, exit 1.
            ((true, 2, false, false), Exit::Remaining),
            ((true, 2, true, true), Exit::Remaining),
            // A failure that changed nothing: 2.
            ((true, 0, false, false), Exit::Usage),
            ((true, 0, true, false), Exit::Usage),
        ];
        for ((failed, released, remaining, unsure), want) in table {
            assert_eq!(
                Exit::for_targets(failed, released, remaining, unsure),
                want,
                "failed {failed}, released {released}, remaining {remaining}, unsure {unsure}"
            );
        }
    }
}
