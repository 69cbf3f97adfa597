//! `mntreap reap`: unstick containers whose removal failed. For each container stuck Dead /
//! Removal In Progress (or each one named), release every copy of its mounts (it is not
//! running, so dockerd's own copy too), then ask the daemon to remove it
//! (`DELETE /containers/{id}?force=1`), and report what held it, what was released, and the
//! removal's outcome in the daemon's own words.

use super::{Config, Exit, Failure, print};
use crate::ops::{Reaped, Removal};
use crate::report;
use crate::report::doc::{FailedDoc, ReapDoc, ReapEntry, ReleaseOutcome, RemovalDoc};
use crate::runtime::ContainerRuntime;
use crate::runtime::scope::short_id;

/// Runs `reap`. One result per container: a release that cannot run is reported for that
/// container and the others go on. Exit 0 when every container was removed (or none was
/// stuck); 1 otherwise, with what was done.
pub fn command(e: &Config, names: &[String], dry_run: bool) -> Result<Exit, Failure> {
    reap(e, e.connect()?.as_ref(), names, dry_run)
}

fn reap(
    e: &Config,
    runtime: &dyn ContainerRuntime,
    names: &[String],
    dry_run: bool,
) -> Result<Exit, Failure> {
    let daemon = runtime.daemon();
    if names.is_empty() && !runtime.records_stuck() {
        return Err(Failure::Usage(format!(
            "{} keeps no \"removal failed\" state: name the pods or containers to reap \
             (`mntreap scan` with no target lists leaked mounts by pod)",
            daemon.runtime.daemon_word()
        )));
    }
    let containers = if names.is_empty() {
        runtime
            .list()?
            .into_iter()
            .filter(|c| c.is_stuck())
            .collect()
    } else {
        runtime.resolve(names)?
    };
    let reaped = crate::ops::reap(&e.base, runtime, containers, dry_run);
    let all_removed = reaped.iter().all(|r| r.removal.removed_or_would());
    if e.json {
        print(&report::doc::to_text(&ReapDoc {
            runtime: daemon.clone(),
            dry_run,
            containers: reaped.iter().map(|r| entry(r, dry_run)).collect(),
        }));
    } else {
        print(&text(&reaped));
    }
    Ok(if all_removed {
        Exit::Clean
    } else {
        Exit::Remaining
    })
}

fn entry(r: &Reaped, dry_run: bool) -> ReapEntry {
    ReapEntry {
        container: r.container.clone(),
        release: match &r.release {
            Ok(rel) => ReleaseOutcome::Released(report::release_doc(rel)),
            Err(err) => ReleaseOutcome::Failed(FailedDoc {
                error: err.to_string(),
                container: None,
            }),
        },
        removal: RemovalDoc {
            removed: r.removal == Removal::Removed,
            dry_run,
            error: match &r.removal {
                Removal::NotAttempted => Some("not attempted: the release failed".into()),
                Removal::Failed(err) => Some(err.clone()),
                Removal::Removed | Removal::WouldRemove => None,
            },
        },
    }
}

fn text(reaped: &[Reaped]) -> String {
    let mut text = String::new();
    for r in reaped {
        let c = &r.container;
        let rel = match &r.release {
            Ok(rel) => rel,
            Err(err) => {
                text.push_str(&format!(
                    "container {} ({}, {}): release failed: {err}; not removed\n",
                    c.name,
                    short_id(&c.id),
                    c.state
                ));
                continue;
            }
        };
        let released = rel.released();
        text.push_str(&format!(
            "container {} ({}, {}): {} cop{} released; ",
            c.name,
            short_id(&c.id),
            c.state,
            released,
            if released == 1 { "y" } else { "ies" }
        ));
        match &r.removal {
            Removal::WouldRemove => text.push_str("would remove it (--dry-run)\n"),
            Removal::Removed => text.push_str("removed\n"),
            Removal::Failed(err) => text.push_str(&format!("removal failed: {err}\n")),
            Removal::NotAttempted => text.push_str("not removed\n"),
        }
        text.push_str(&indent(&report::release_text(rel)));
    }
    if reaped.is_empty() {
        text.push_str("No container is stuck in removal.\n");
    }
    text
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
