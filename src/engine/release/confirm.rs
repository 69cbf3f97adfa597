//! Confirming a plan made from kept tables ([`crate::engine::index`]) before it is executed.
//!
//! A kept table is the kernel's answer when it was read, and what the index checks (the
//! never-reused ids, or the mount events) shows every mount that came or went since. What
//! it does not show is a live mount changed in place: moved (same id, another parent and
//! mount point) or made shared (a propagation change raises no event). So, before anything
//! is unmounted, every fact the plan used in a namespace it acts in is read again from the
//! kernel by 64-bit id and compared with the table: each holder's mount and the chain of
//! its ancestors (id, device, parent, propagation; the holder's mount point), and, for each
//! holder it unmounts, the mounts below it now (`MNT_DETACH` takes all of them): listed
//! again, unless the scan's own lookup of the target (the kernel's answer during this scan,
//! as a cold scan's listing is) found the holder on top there with nothing below it (an
//! empty directory of a tmpfs or ramfs, or no directory; see
//! [`crate::engine::source::TargetMounts`]) and the table has nothing below it either. Any
//! difference, and any holder it unmounts whose parent is shared (where that unmount
//! propagates is known only from every namespace's table read now), sets the plan aside:
//! the caller scans cold. Namespaces the plan only keeps in are not read: nothing is done
//! there, and a stale table there can only keep more. What a stale table could hide (a copy
//! moved to a target's path, same id) only mount events show: a plan whose scan reused a
//! table of an unwatched namespace is set aside too.

use std::num::NonZeroU64;

use super::{NamespacePlan, Step};
use crate::engine::scan::{Holder, Scan, ScanError};
use crate::engine::sys;
use crate::engine::table::{IdSet, Mount, MountTable, PASSES_UP_TO};

const MASK: u64 = sys::STATMOUNT_SB_BASIC | sys::STATMOUNT_MNT_BASIC | sys::STATMOUNT_MNT_POINT;

/// Checks `plans` (made from `scan`, which reused kept tables) against the kernel on up to
/// `threads` threads (the listing below each holder costs a walk of its namespace); returns
/// how many mounts were read again. Of several differences, the first plan's is reported.
pub fn confirm(scan: &Scan, plans: &[NamespacePlan], threads: usize) -> Result<usize, ScanError> {
    // A namespace whose moves went unseen may hide a copy moved to a target's path, which
    // a release would then leave behind while reporting none: read cold.
    if let Some(n) = scan.namespaces.iter().find(|n| n.moves_unseen()) {
        return Err(ScanError::Unconfirmed {
            inode: n.ns.inode,
            what: "it was reused on a listing of the same ids, its mount events unwatched, so \
                   a mount moved since (same id) would not show"
                .into(),
        });
    }
    // A kept mount point can be stale (a rename above it keeps the id and raises no
    // event): what is at a target, what is covered and which views speak for a target's
    // identity are decided by path, so the scan must have read its paths again.
    if !scan.index.is_some_and(|u| u.fresh_mount_points)
        && let Some(n) = scan.namespaces.iter().find(|n| n.from_index())
    {
        return Err(ScanError::Unconfirmed {
            inode: n.ns.inode,
            what: "its kept mount points were used as read earlier, and a rename above a \
                   mount point changes no id and raises no event (a release needs an index \
                   made for releases)"
                .into(),
        });
    }
    let acting: Vec<&NamespacePlan> = plans
        .iter()
        .filter(|p| {
            p.actions
                .iter()
                .any(|a| !matches!(a.step, Step::Keep { .. }))
        })
        .collect();
    let threads = threads.clamp(1, acting.len().max(1));
    let outcomes: Vec<Result<usize, (usize, ScanError)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let acting = &acting;
                s.spawn(move || {
                    let mut buf = sys::StatmountBuf::new();
                    let mut read = 0;
                    for (at, plan) in acting.iter().enumerate().skip(t).step_by(threads) {
                        confirm_plan(scan, plan, &mut buf, &mut read).map_err(|e| (at, e))?;
                    }
                    Ok(read)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a confirming thread panicked"))
            .collect()
    });
    let mut read = 0;
    let mut first: Option<(usize, ScanError)> = None;
    for outcome in outcomes {
        match outcome {
            Ok(n) => read += n,
            Err((at, e)) if first.as_ref().is_none_or(|(f, _)| at < *f) => first = Some((at, e)),
            Err(_) => {}
        }
    }
    match first {
        Some((_, e)) => Err(e),
        None => Ok(read),
    }
}

/// Checks one namespace's plan (with at least one holder it unmounts).
fn confirm_plan(
    scan: &Scan,
    plan: &NamespacePlan,
    buf: &mut sys::StatmountBuf,
    read: &mut usize,
) -> Result<(), ScanError> {
    let scanned = &scan.namespaces[plan.ns];
    let inode = scanned.ns.inode;
    let stale = |mount: u64, what: String| ScanError::Unconfirmed {
        inode,
        what: format!("mount {mount} {what}"),
    };
    let first = &scan.holders[plan.actions[0].holder];
    let Some((table, ns_id)) = scanned.table.as_ref().and_then(|t| Some((t, t.ns_id?))) else {
        return Err(stale(
            first.mount.id,
            "has no table with 64-bit ids to confirm it by".into(),
        ));
    };
    let root = table.root_position();
    let parents = std::cell::OnceCell::new();
    let few = plan.actions.len() <= PASSES_UP_TO;
    for action in &plan.actions {
        let h = &scan.holders[action.holder];
        let mut check = Check {
            table,
            ns_id,
            bare: &scanned.bare,
            buf,
            read,
            parents: &parents,
            few,
        };
        let unmounts = !matches!(action.step, Step::Keep { .. });
        check
            .chain(h, root, unmounts)
            .and_then(|()| if unmounts { check.below(h) } else { Ok(()) })
            .map_err(|what| stale(h.mount.id, what))?;
    }
    Ok(())
}

/// One namespace's table and the kernel, compared mount by mount.
struct Check<'a> {
    table: &'a MountTable,
    ns_id: u64,
    /// The mounts the scan's lookups found with nothing below them (the kernel's answer
    /// during this scan, not the table's).
    bare: &'a [NonZeroU64],
    buf: &'a mut sys::StatmountBuf,
    read: &'a mut usize,
    /// The ids of the table's mounts that have a mount below them, built when first asked
    /// for (one pass over the table per namespace, not per holder)...
    parents: &'a std::cell::OnceCell<IdSet>,
    /// ...unless the plan has at most [`PASSES_UP_TO`] holders in the namespace.
    few: bool,
}

impl Check<'_> {
    fn statmount(&mut self, unique: u64) -> Result<sys::Statmount, String> {
        *self.read += 1;
        sys::statmount(self.ns_id, unique, MASK, self.buf).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => format!("(or mount {unique} above it) is no longer mounted"),
            _ => format!("could not be read again (statmount of {unique}: {e})"),
        })
    }

    /// The table's position of the mount with 64-bit id `unique` (kept tables are in
    /// listmount's ascending order).
    fn position(&self, unique: u64) -> Option<usize> {
        self.table.position_of_unique(unique)
    }

    /// `h`'s mount and each mount above it, up to the namespace's root, are what the table
    /// says; an unmounted holder's parent is not shared.
    fn chain(&mut self, h: &Holder, root: Option<usize>, unmounts: bool) -> Result<(), String> {
        let Some(mut at) = h.mount.unique_id.and_then(|u| self.position(u.get())) else {
            return Err("is not in its kept table by 64-bit id".into());
        };
        for depth in 0..self.table.mounts.len() {
            let kept = self.table.mounts[at];
            let unique = kept.unique_id.map_or(0, NonZeroU64::get);
            let now = self.statmount(unique)?;
            if let Some(what) = differs(&kept, &now) {
                return Err(format!("(or mount {unique} above it) {what}"));
            }
            // The holder's mount point as the plan used it (always read for a holder).
            if depth == 0 {
                let point = h.mount_point.as_slice();
                if now.mount_point.as_deref() != Some(point) {
                    return Err(format!(
                        "is now at {}, not at {}",
                        crate::engine::mountinfo::encode(now.mount_point.as_deref().unwrap_or(b"")),
                        crate::engine::mountinfo::encode(point)
                    ));
                }
            }
            if Some(at) == root {
                // The table's root: the kernel's chain must end here too.
                return match now.parent_id == now.mnt_id || self.position(now.parent_id).is_none() {
                    true => Ok(()),
                    false => Err(format!("(or mount {unique} above it) has been moved")),
                };
            }
            let Some(parent) = self.position(now.parent_id) else {
                return Err(format!(
                    "(or mount {unique} above it) is now on mount {}, which its kept table \
                     does not have",
                    now.parent_id
                ));
            };
            if depth == 0 && unmounts && self.table.mounts[parent].peer_group.is_some() {
                return Err(format!(
                    "has a shared parent (mount {}): where its unmount propagates is known only \
                     from tables read now",
                    self.table.mounts[parent].id
                ));
            }
            at = parent;
        }
        Err("has a cyclic chain of parents in its kept table".into())
    }

    /// The mounts below `h` now are those the table has below it: none where the scan's
    /// lookup found none and the table has none, else listed again and compared.
    fn below(&mut self, h: &Holder) -> Result<(), String> {
        let unique = h.mount.unique_id.map_or(0, NonZeroU64::get);
        let id = h.mount.id;
        let kept_children = match self.few {
            true => self
                .table
                .mounts
                .iter()
                .any(|m| m.parent_id == id && m.id != id),
            false => self
                .parents
                .get_or_init(|| {
                    self.table
                        .mounts
                        .iter()
                        .filter(|m| m.parent_id != m.id)
                        .map(|m| m.parent_id)
                        .collect()
                })
                .contains(&id),
        };
        if !kept_children && h.mount.unique_id.is_some_and(|u| self.bare.contains(&u)) {
            return Ok(());
        }
        *self.read += 1;
        let mut now = sys::listmount_below(self.ns_id, unique)
            .map_err(|e| format!("could not be read again (listmount below it: {e})"))?;
        if now.is_empty() && !kept_children {
            return Ok(());
        }
        // Rare (a layer with mounts inside it): the table's subtree, compared as id sets.
        let Some(at) = self.position(unique) else {
            return Err("is not in its kept table by 64-bit id".into());
        };
        let mut kept: Vec<u64> = crate::engine::source::subtree(self.table, &[at])
            .into_iter()
            .filter(|&i| i != at)
            .filter_map(|i| self.table.mounts[i].unique_id.map(NonZeroU64::get))
            .collect();
        kept.sort_unstable();
        now.sort_unstable();
        match kept == now {
            true => Ok(()),
            false => Err(format!(
                "has {} mount(s) below it now, where its kept table has {}",
                now.len(),
                kept.len()
            )),
        }
    }
}

/// What in `now` is not what the table kept for the mount, if anything.
fn differs(kept: &Mount, now: &sys::Statmount) -> Option<String> {
    let peer_group =
        NonZeroU64::new(now.peer_group).filter(|_| now.propagation & sys::MS_SHARED != 0);
    if u64::from(now.mnt_id_old) != kept.id || u64::from(now.parent_id_old) != kept.parent_id {
        return Some("has been moved".into());
    }
    if now.dev != kept.dev {
        return Some(format!(
            "is now of device {}:{}, not {}:{}",
            now.dev.0, now.dev.1, kept.dev.0, kept.dev.1
        ));
    }
    if peer_group != kept.peer_group || NonZeroU64::new(now.master) != kept.master {
        return Some("has another propagation now".into());
    }
    None
}
