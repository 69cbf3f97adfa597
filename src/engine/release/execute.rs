//! Execution: enter each namespace through its held descriptor, re-open the mount point
//! without following symlinks, check it is the scanned mount, and only then unmount it
//! through that descriptor. Each unmount is an audit event.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use nix::mount::MntFlags;
use tracing::{info, info_span, warn};

use super::plan::Parents;
use super::{ActionResult, NamespacePlan, Outcome, Step, UnmountError};
use crate::engine::nsexec::{self, NsWorker};
use crate::engine::scan::{Holder, Scan};
use crate::engine::sys;

/// Executes a plan. Each namespace is entered once, through its held descriptor.
pub fn execute(
    scan: &Scan,
    plans: &[NamespacePlan],
    proc_root: &std::path::Path,
    dry_run: bool,
) -> Result<Vec<ActionResult>, nsexec::NsError> {
    if dry_run {
        return Ok(plans
            .iter()
            .flat_map(|p| p.actions.iter())
            .map(|a| ActionResult {
                holder: a.holder,
                outcome: match &a.step {
                    Step::Unmount => Outcome::WouldUnmount,
                    Step::Detach { pins } => Outcome::WouldDetach { pins: pins.clone() },
                    Step::Keep { reason } => Outcome::Kept {
                        reason: reason.clone(),
                    },
                },
            })
            .collect());
    }
    let parents = Parents::of(scan);
    nsexec::with_worker(proc_root, |worker| {
        let mut results = Vec::new();
        for p in plans {
            let scanned = &scan.namespaces[p.ns];
            let span = info_span!(
                "release",
                mnt_ns = scanned.ns.inode,
                pid_used = scanned.ns.pid_used
            );
            let _g = span.enter();
            let entered = if p
                .actions
                .iter()
                .any(|a| !matches!(a.step, Step::Keep { .. }))
            {
                worker.enter(scanned.ns.fd.as_fd(), scanned.ns.inode)
            } else {
                Ok(())
            };
            let mut failed: Vec<u64> = Vec::new();
            for a in &p.actions {
                let h = &scan.holders[a.holder];
                let failed_child = failed
                    .iter()
                    .find(|&&c| parents.has_ancestor(h.ns, c, h.mount.id));
                let outcome = match (&a.step, &entered) {
                    (Step::Keep { reason }, _) => Outcome::Kept {
                        reason: reason.clone(),
                    },
                    (_, Ok(())) if failed_child.is_some() => Outcome::Kept {
                        reason: format!(
                            "mount {} inside it could not be released",
                            failed_child.expect("checked")
                        ),
                    },
                    (_, Err(e)) => Outcome::Failed {
                        error: UnmountError::EnterNamespace(e.to_string()),
                    },
                    (step, Ok(())) => {
                        let ns_id = scanned.table.as_ref().and_then(|t| t.ns_id);
                        let bare = h.mount.unique_id.is_some_and(|u| scanned.bare.contains(&u));
                        unmount_one(worker, h, step, ns_id, bare)
                    }
                };
                if matches!(outcome, Outcome::Failed { .. }) {
                    failed.push(h.mount.id);
                }
                if !matches!(outcome, Outcome::Kept { .. }) {
                    audit(scan, h, &outcome);
                }
                results.push(ActionResult {
                    holder: a.holder,
                    outcome,
                });
            }
        }
        results
    })
}

/// Verifies and unmounts one holder in the namespace the worker is in. `bare`: the scan's
/// lookup found nothing below it (which a confirmation may rest on).
fn unmount_one(
    worker: &mut NsWorker,
    h: &Holder,
    step: &Step,
    ns_id: Option<u64>,
    bare: bool,
) -> Outcome {
    let path = OsStr::from_bytes(&h.mount_point);
    let fd = match sys::open_path_no_symlinks(path) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !still_mounted(worker, h, ns_id) => {
            return Outcome::Gone;
        }
        Err(e) => {
            return Outcome::Failed {
                error: UnmountError::Open {
                    path: path.to_string_lossy().into_owned(),
                    errno: errno_of(&e),
                },
            };
        }
    };
    let stat_failed = |e: std::io::Error| Outcome::Failed {
        error: UnmountError::Stat {
            path: path.to_string_lossy().into_owned(),
            errno: errno_of(&e),
        },
    };
    let stat = match sys::statx_mount(Some(fd.as_fd()), OsStr::new(""), libc::AT_EMPTY_PATH) {
        Ok(s) => s,
        Err(e) => return stat_failed(e),
    };
    let id_matches = match stat.mnt_id {
        Some(id) => id == h.mount.id,
        // Kernel < 5.8: fall back to the namespace's own mountinfo, read now.
        None => topmost_id_at(worker, &h.mount_point) == Some(h.mount.id),
    };
    // The 32-bit id is reused once a mount is gone; the 64-bit one never is. A scan that
    // has it (6.8+, where statx reports it too) asks for it.
    let id_matches = id_matches
        && match h.mount.unique_id {
            Some(unique) => match sys::statx_unique_mnt_id(fd.as_fd()) {
                Ok(Some(now)) => now == unique.get(),
                Ok(None) => true,
                Err(e) => return stat_failed(e),
            },
            None => true,
        };
    if !id_matches || stat.dev != h.mount.dev || stat.is_mount_root == Some(false) {
        // Either it went away, or something else now sits on top of it.
        if !still_mounted(worker, h, ns_id) {
            return Outcome::Gone;
        }
        return Outcome::Failed {
            error: UnmountError::Covered {
                path: path.to_string_lossy().into_owned(),
                found: stat.mnt_id,
                dev: format!("{}:{}", stat.dev.0, stat.dev.1),
                scanned: h.mount.id,
            },
        };
    }
    // Found bare by the scan: a mount made below it since would go with the detach, unseen
    // (the plan may rest on that finding instead of a listing). Asked again here, through
    // the descriptor the detach uses.
    // (What is mounted in the instant between this and the detach still goes with it: the
    // kernel has no detach that refuses a mount with children.)
    if bare && !crate::engine::source::still_nothing_below(fd.as_fd(), stat.is_dir) {
        if !still_mounted(worker, h, ns_id) {
            return Outcome::Gone;
        }
        return Outcome::Failed {
            error: UnmountError::MountedBelow {
                path: path.to_string_lossy().into_owned(),
            },
        };
    }
    // Always MNT_DETACH: our descriptor is itself a reference to the mount, so a plain
    // unmount through it would always be EBUSY, and unmounting by path instead could hit a
    // mount stacked there after the check. With no other user, a detached mount is freed
    // as soon as the descriptor closes, exactly like a plain unmount.
    match worker.umount_fd(fd.as_fd(), MntFlags::MNT_DETACH) {
        Ok(()) => match step {
            Step::Detach { pins } => Outcome::Detached { pins: pins.clone() },
            _ => Outcome::Unmounted,
        },
        Err(errno) => Outcome::Failed {
            error: UnmountError::Umount {
                path: path.to_string_lossy().into_owned(),
                errno,
            },
        },
    }
}

fn errno_of(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(0))
}

/// Whether the holder is still mounted in the worker's namespace. statmount by its 64-bit
/// id (never reused) finds also a mount that another covers, which neither mountinfo nor
/// listmount, both read from this thread's root inside the namespace, list: such a mount
/// is not gone.
fn still_mounted(worker: &mut NsWorker, h: &Holder, ns_id: Option<u64>) -> bool {
    if let (Some(ns_id), Some(unique)) = (ns_id, h.mount.unique_id.map(std::num::NonZeroU64::get)) {
        let mut buf = sys::StatmountBuf::new();
        match sys::statmount(ns_id, unique, sys::STATMOUNT_SB_BASIC, &mut buf) {
            Ok(_) => return true,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return false,
            Err(_) => {}
        }
    }
    worker
        .read_mountinfo()
        .ok()
        .and_then(|t| crate::engine::mountinfo::parse(t).ok())
        .is_some_and(|t| t.mounts.iter().any(|m| m.id == h.mount.id))
}

/// The id of the last (topmost) mount at `point` in the worker's namespace.
fn topmost_id_at(worker: &mut NsWorker, point: &[u8]) -> Option<u64> {
    let text = worker.read_mountinfo().ok()?;
    let table = crate::engine::mountinfo::parse(text).ok()?;
    table
        .mounts
        .iter()
        .rev()
        .find(|m| table.mount_point(m) == point)
        .map(|m| m.id)
}

fn audit(scan: &Scan, h: &Holder, outcome: &Outcome) {
    let ns = &scan.namespaces[h.ns].ns;
    let result = serde_json::to_string(outcome).unwrap_or_default();
    let path = crate::engine::mountinfo::encode(&h.mount_point);
    match outcome {
        Outcome::Failed { .. } => warn!(
            target: "mntreap::audit",
            mnt_ns = ns.inode,
            pid_used = ns.pid_used,
            mount_id = h.mount.id,
            path = %path,
            result = %result,
            "release failed"
        ),
        _ => info!(
            target: "mntreap::audit",
            mnt_ns = ns.inode,
            pid_used = ns.pid_used,
            mount_id = h.mount.id,
            path = %path,
            result = %result,
            "release"
        ),
    }
}
