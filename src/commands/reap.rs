//! `mntreap reap`: unstick containers whose removal failed. For each container stuck Dead /
//! Removal In Progress (or each one named), release every copy of its mounts (it is not
//! running, so dockerd's own copy too), then ask the daemon to remove it
//! (`DELETE /containers/{id}?force=1`), and report what held it, what was released, and the
//! removal's outcome in the daemon's own words.

use super::{Config, Exit, Failure, print};
use crate::report;
use crate::report::doc::{FailedDoc, ReapDoc, ReapEntry, ReleaseOutcome, RemovalDoc};
use crate::runtime::ContainerRuntime;
use crate::runtime::scope::{container_request, release_containers, release_scope, short_id};

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
    // A pod's containers before its sandbox: removing the sandbox removes them too.
    let mut containers = containers;
    containers.sort_by_key(|c| c.sandbox);
    let mut docs = Vec::new();
    let mut text = String::new();
    let mut all_removed = true;
    for c in &containers {
        let req = container_request(&e.base, daemon, c);
        let scope = release_scope(daemon, c, false);
        let rel = match release_containers(&req, std::slice::from_ref(c), scope, dry_run) {
            Ok(rel) => rel,
            Err(err) => {
                // Not removed: its copies may still hold it, and removal would fail.
                all_removed = false;
                text.push_str(&format!(
                    "container {} ({}, {}): release failed: {err}; not removed\n",
                    c.name,
                    short_id(&c.id),
                    c.state
                ));
                docs.push(ReapEntry {
                    container: c.clone(),
                    release: ReleaseOutcome::Failed(FailedDoc {
                        error: err.to_string(),
                        container: None,
                    }),
                    removal: RemovalDoc {
                        removed: false,
                        dry_run,
                        error: Some("not attempted: the release failed".into()),
                    },
                });
                continue;
            }
        };
        let removal: Result<(), String> = if dry_run {
            Ok(())
        } else {
            runtime.remove_forced(c)
        };
        all_removed &= removal.is_ok();
        let released = rel.released();
        text.push_str(&format!(
            "container {} ({}, {}): {} cop{} released; ",
            c.name,
            short_id(&c.id),
            c.state,
            released,
            if released == 1 { "y" } else { "ies" }
        ));
        match (&removal, dry_run) {
            (_, true) => text.push_str("would remove it (--dry-run)\n"),
            (Ok(()), false) => text.push_str("removed\n"),
            (Err(err), false) => text.push_str(&format!("removal failed: {err}\n")),
        }
        text.push_str(&indent(&report::release_text(&rel)));
        docs.push(ReapEntry {
            container: c.clone(),
            release: ReleaseOutcome::Released(report::release_doc(&rel)),
            removal: RemovalDoc {
                removed: removal.is_ok() && !dry_run,
                dry_run,
                error: removal.err(),
            },
        });
    }
    if containers.is_empty() {
        text.push_str("No container is stuck in removal.\n");
    }
    if e.json {
        print(&report::doc::to_text(&ReapDoc {
            runtime: daemon.clone(),
            dry_run,
            containers: docs,
        }));
    } else {
        print(&text);
    }
    Ok(if all_removed {
        Exit::Clean
    } else {
        Exit::Remaining
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
