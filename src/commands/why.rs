//! `mntreap why PATH|DEVICE|MAJ:MIN`: every reason the kernel would refuse to unmount or
//! detach it, across every mount namespace.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{Config, Exit, Failure, print};
use crate::engine::busy::BusyTarget;
use crate::report::doc::{WhyDoc, WhyReason};

/// Runs `why`. Exit 0: nothing holds it; 1: held (each reason listed); 2: bad input.
pub fn command(e: &Config, raw: &str) -> Result<Exit, Failure> {
    let target = target_of(raw)?;
    let (explained, notes) = crate::ops::why::why(&e.base, &target)?;
    let doc = WhyDoc {
        target: raw.to_string(),
        dev: format!("{}:{}", target.dev.0, target.dev.1),
        block: target.block.clone(),
        busy: !explained.is_empty(),
        reasons: explained
            .into_iter()
            .map(|x| WhyReason {
                reason: x.reason,
                releasable: x.releasable,
                remedy: x.remedy,
            })
            .collect(),
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
    let dev = match raw.split_once(':') {
        Some((major, minor)) if !raw.starts_with('/') => {
            match (major.parse::<u32>(), minor.parse::<u32>()) {
                (Ok(major), Ok(minor)) => (major, minor),
                _ => {
                    return Err(Failure::Usage(format!(
                        "{raw:?}: expected a path, a block device or MAJ:MIN"
                    )));
                }
            }
        }
        _ => {
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
    let block = std::fs::read_link(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
        .ok()
        .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()));
    Ok(BusyTarget { dev, block })
}
