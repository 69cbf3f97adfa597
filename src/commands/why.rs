//! `mntreap why PATH|DEVICE|MAJ:MIN`: every reason the kernel would refuse to unmount or
//! detach it, across every mount namespace.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{Config, Exit, Failure, print};
use crate::engine::busy::BusyTarget;
use crate::report::doc::{WhyDoc, WhyReason, WhyTarget};

/// Runs `why`. Exit 0: nothing holds any target; 1: something does (each reason listed);
/// 2: bad input.
pub fn command(e: &Config, raw: &str) -> Result<Exit, Failure> {
    let targets = if raw.starts_with('/') || crate::engine::policy::parse_maj_min(raw).is_some() {
        vec![(raw.to_string(), target_of(raw)?)]
    } else {
        // A container or a pod, as `release` names them.
        let (runtime, containers) = super::resolve_containers(e, &[raw.to_string()])?;
        let Some(runtime) = runtime else {
            return Err(Failure::Usage(
                "name a path, a device or a container".into(),
            ));
        };
        crate::ops::why::container_targets(&e.base, runtime.daemon(), &containers)?
    };
    let (names, busy_targets): (Vec<String>, Vec<BusyTarget>) = targets.into_iter().unzip();
    let (explained, notes) = crate::ops::why::why(&e.base, &busy_targets)?;
    let targets: Vec<WhyTarget> = names
        .into_iter()
        .zip(busy_targets)
        .zip(explained)
        .map(|((name, target), explained)| WhyTarget {
            target: name,
            dev: format!("{}:{}", target.dev.0, target.dev.1),
            block: target.block,
            busy: !explained.is_empty(),
            reasons: explained
                .into_iter()
                .map(|x| WhyReason {
                    reason: x.reason,
                    releasable: x.releasable,
                    remedy: x.remedy,
                })
                .collect(),
        })
        .collect();
    let doc = WhyDoc {
        busy: targets.iter().any(|t| t.busy),
        targets,
        notes,
    };
    print(&if e.json {
        crate::report::doc::to_text(&doc)
    } else {
        crate::report::why::why_text(&doc)
    });
    Ok(if doc.busy {
        Exit::Remaining
    } else {
        Exit::Clean
    })
}

/// A block device (`/dev/X`, or `MAJ:MIN`) is itself the target; any other path names the
/// filesystem it is on.
fn target_of(raw: &str) -> Result<BusyTarget, Failure> {
    let dev = match crate::engine::policy::parse_maj_min(raw) {
        Some(dev) => dev,
        None => {
            let meta =
                std::fs::metadata(raw).map_err(|err| Failure::Usage(format!("{raw}: {err}")))?;
            let st = if meta.file_type().is_block_device() {
                meta.rdev()
            } else {
                meta.dev()
            };
            (
                nix::sys::stat::major(st) as u32,
                nix::sys::stat::minor(st) as u32,
            )
        }
    };
    Ok(BusyTarget::of_dev(dev))
}
