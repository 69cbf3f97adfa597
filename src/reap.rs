//! `mntreap reap`: unstick containers whose removal failed. For each container stuck Dead /
//! Removal In Progress (or each one named), release every copy of its mounts (it is not
//! running, so dockerd's own copy too), then ask the daemon to remove it
//! (`DELETE /containers/{id}?force=1`), and report what held it, what was released, and the
//! removal's outcome in the daemon's own words.

use serde_json::{Value, json};

use crate::cli::{EngineArgs, Failure, print};
use crate::release;
use crate::report;

/// Runs `reap`; returns the exit code (0: everything reaped or nothing to reap).
pub(crate) fn command(e: &EngineArgs, names: &[String], dry_run: bool) -> Result<u8, Failure> {
    let docker = e.connect()?;
    let containers = if names.is_empty() {
        docker
            .list()
            .map_err(|err| Failure::Usage(err.to_string()))?
            .into_iter()
            .filter(|c| c.is_stuck())
            .collect()
    } else {
        docker
            .resolve(names)
            .map_err(|err| Failure::Usage(err.to_string()))?
    };
    let mut docs = Vec::new();
    let mut text = String::new();
    let mut all_removed = true;
    let base = e.request(&[], Vec::new())?;
    for c in &containers {
        let req = crate::docker::container_request(&base, &docker.daemon, c);
        let scope = crate::docker::release_scope(&docker.daemon, c, false);
        let rel = release::run(&req, scope, dry_run)?;
        let removal: Result<(), String> = if dry_run {
            Ok(())
        } else {
            docker.remove_forced(&c.id)
        };
        all_removed &= removal.is_ok();
        let released = rel.released();
        text.push_str(&format!(
            "container {} ({}, {}): {} cop{} released; ",
            c.name,
            crate::docker::short_id(&c.id),
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
        docs.push(json!({
            "container": c,
            "release": report::release_json(&rel),
            "removal": match (&removal, dry_run) {
                (_, true) => json!({"removed": false, "dry_run": true}),
                (Ok(()), false) => json!({"removed": true}),
                (Err(err), false) => json!({"removed": false, "error": err}),
            },
        }));
    }
    if containers.is_empty() {
        text.push_str("No container is stuck in removal.\n");
    }
    if e.json {
        let doc: Value = json!({"docker": docker.daemon, "dry_run": dry_run, "containers": docs});
        print(&format!("{doc:#}\n"));
    } else {
        print(&text);
    }
    Ok(if all_removed { 0 } else { 1 })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
