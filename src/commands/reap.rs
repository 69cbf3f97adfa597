//! `mntreap reap`: unstick containers whose removal failed. For each container stuck Dead /
//! Removal In Progress (or each one named), release every copy of its mounts (it is not
//! running, so dockerd's own copy too), then ask the daemon to remove it
//! (`DELETE /containers/{id}?force=1`), and report what held it, what was released, and the
//! removal's outcome in the daemon's own words.

use super::{Config, Exit, Failure, print};
use crate::ops::{Reaped, Removal};
use crate::report;
use crate::report::doc::{FailedDoc, ReapDoc, ReapEntry, ReleaseOutcome, RemovalDoc, VolumeEntry};
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
    let entries: Vec<ReapEntry> = reaped.iter().map(|r| entry(r, dry_run)).collect();
    let reaped_text = text(&reaped);
    let pods = released_pods(&reaped);
    // The releases hold the namespaces they scanned (a removed container's among them)
    // open: let go of them before the volumes' devices are looked at.
    drop(reaped);
    let volumes = reap_volumes(e, runtime, &pods, dry_run);
    // A dry run's "remaining" is everything in scope; only a real release says what stays.
    let volumes_freed = volumes.iter().all(|v| match &v.release {
        ReleaseOutcome::Released(doc) => dry_run || doc.remaining.is_empty(),
        ReleaseOutcome::Failed(_) => false,
    });
    if e.json {
        print(&report::doc::to_text(&ReapDoc {
            runtime: daemon.clone(),
            dry_run,
            containers: entries,
            volumes,
        }));
    } else {
        print(&(reaped_text + &volumes_text(&volumes)));
    }
    Ok(if all_removed && volumes_freed {
        Exit::Clean
    } else {
        Exit::Remaining
    })
}

/// The reaped pods' block-device volumes (still mounted on the node at kubelet's
/// directories), each released as `release --device` releases it: once the pod is gone,
/// the copies elsewhere (an agent's bind of the node) are what keeps the device busy after
/// kubelet unmounts its own. A pod whose containers' releases failed is left alone.
fn reap_volumes(
    e: &Config,
    runtime: &dyn ContainerRuntime,
    pods: &[String],
    dry_run: bool,
) -> Vec<VolumeEntry> {
    let host_root = &runtime.daemon().host_root;
    let roots = super::device::copy_roots(e, Some(runtime));
    let mut out = Vec::new();
    for uid in pods {
        let Ok(volumes) =
            crate::runtime::kubelet::block_volumes(&e.cri.kubelet_root, host_root, uid)
        else {
            continue;
        };
        for crate::runtime::kubelet::BlockVolume { name, dev, .. } in volumes {
            let shown = format!("{}:{}", dev.0, dev.1);
            let release = e
                .policy
                .check_device(&shown, host_root)
                .map_err(|err| err.to_string())
                .and_then(|dev| {
                    crate::ops::device::release_devices(
                        &e.base,
                        Some(runtime),
                        &[dev],
                        &roots,
                        false,
                        dry_run,
                    )
                    .map_err(|err| err.to_string())
                });
            out.push(VolumeEntry {
                pod_uid: uid.clone(),
                volume: name,
                dev: shown,
                release: match release {
                    Ok(rel) => ReleaseOutcome::Released(report::release_doc(&rel)),
                    Err(error) => ReleaseOutcome::Failed(FailedDoc {
                        error,
                        container: None,
                    }),
                },
            });
        }
    }
    out
}

/// The pods of `reaped` whose every container's release ran.
fn released_pods(reaped: &[Reaped]) -> Vec<String> {
    let mut uids: Vec<String> = reaped
        .iter()
        .filter_map(|r| r.container.pod_uid.clone())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids.retain(|uid| {
        reaped
            .iter()
            .filter(|r| r.container.pod_uid.as_ref() == Some(uid))
            .all(|r| r.release.is_ok())
    });
    uids
}

fn volumes_text(volumes: &[VolumeEntry]) -> String {
    let mut text = String::new();
    for v in volumes {
        let what = match &v.release {
            ReleaseOutcome::Released(doc) => {
                let released = doc
                    .namespaces
                    .iter()
                    .flat_map(|n| &n.actions)
                    .filter(|a| {
                        matches!(
                            a.result,
                            crate::report::doc::ActionResult::Unmounted
                                | crate::report::doc::ActionResult::WouldUnmount
                        )
                    })
                    .count();
                format!(
                    "{released} cop{} released, {} remaining",
                    if released == 1 { "y" } else { "ies" },
                    doc.remaining.len()
                )
            }
            ReleaseOutcome::Failed(f) => format!("not released: {}", f.error),
        };
        text.push_str(&format!(
            "pod {} volume {} (device {}): {what}\n",
            v.pod_uid, v.volume, v.dev
        ));
    }
    text
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
