//! Releasing holders: plan which copies to unmount, then unmount them in their namespaces.
//!
//! The plan says, per namespace and children first, what happens to each holder and why.
//! Execution enters each namespace through the descriptor held since the scan, re-opens the
//! mount point without following symlinks, checks that the mount found there is the very
//! mount scanned (mount id and device), and only then unmounts it through that descriptor.
//! Each unmount is an audit event (`target: "mntreap::audit"`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use nix::mount::MntFlags;
use tracing::{info, info_span, warn};

use crate::engine::nsexec::{self, NsWorker};
use crate::engine::scan::{Holder, InUse, Pin, Scan};
use crate::engine::sys;
use crate::engine::table::path_is_under;

/// Which holders a release may touch.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Release in every namespace, protected ones included.
    pub everywhere: bool,
    /// Namespaces (by inode) whose copies are the runtime's own view and stay, with the
    /// reason shown. `None`: mntreap's own namespace.
    pub protected: Option<Vec<(u64, String)>>,
}

impl Scope {
    /// Why a namespace's copies stay, if they do.
    pub fn protects(&self, scan: &Scan, ns: usize) -> Option<String> {
        if self.everywhere {
            return None;
        }
        let n = &scan.namespaces[ns].ns;
        match &self.protected {
            None => n.own.then(|| {
                "mntreap's own namespace (the host's view); use --everywhere to include it"
                    .to_string()
            }),
            Some(list) => list
                .iter()
                .find(|(inode, _)| *inode == n.inode)
                .map(|(_, why)| why.clone()),
        }
    }
}

/// What the plan does with one holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Unmount: nothing known uses it.
    Unmount,
    /// Unmount, but these processes use it (cwd, executable, open files): the mount leaves
    /// the namespace and the filesystem stays alive until they let go.
    Detach { pins: Vec<Pin> },
    /// Leave it: the reason says why.
    Keep { reason: String },
}

/// One holder's planned step.
#[derive(Debug, Clone)]
pub struct Action {
    /// Index into [`Scan::holders`].
    pub holder: usize,
    pub step: Step,
}

/// The actions for one namespace, children before parents.
#[derive(Debug, Clone)]
pub struct NamespacePlan {
    /// Index into [`Scan::namespaces`].
    pub ns: usize,
    pub actions: Vec<Action>,
}

/// Builds the plan for `scan` within `scope`.
pub fn plan(scan: &Scan, scope: Scope) -> Vec<NamespacePlan> {
    let mut order: Vec<usize> = (0..scan.holders.len()).collect();
    // Namespace by namespace; deepest first, later (upper) mounts first at equal depth.
    order.sort_by_key(|&i| {
        let h = &scan.holders[i];
        (
            h.ns,
            std::cmp::Reverse(h.depth),
            std::cmp::Reverse(h.mount.id),
        )
    });
    let steps: Vec<Step> = scan
        .holders
        .iter()
        .map(|h| first_step(scan, h, &scope))
        .collect();
    let releasing: HashSet<(usize, u64)> = scan
        .holders
        .iter()
        .zip(&steps)
        .filter(|(_, s)| !matches!(s, Step::Keep { .. }))
        .map(|(h, _)| (h.ns, h.mount.id))
        .collect();

    let parents = Parents::of(scan);
    let mut plans: Vec<NamespacePlan> = Vec::new();
    for i in order {
        let h = &scan.holders[i];
        let mut step = steps[i].clone();
        if !matches!(step, Step::Keep { .. })
            && let Some(reason) = propagation_hazard(scan, h, &releasing)
        {
            step = Step::Keep { reason };
        }
        match plans.last_mut() {
            Some(p) if p.ns == h.ns => p.actions.push(Action { holder: i, step }),
            _ => plans.push(NamespacePlan {
                ns: h.ns,
                actions: vec![Action { holder: i, step }],
            }),
        }
    }
    // A mount found only because it is inside a copy goes only if that copy goes.
    for p in &mut plans {
        let kept_copies = kept_mounts(scan, p);
        for a in &mut p.actions {
            let h = &scan.holders[a.holder];
            if h.matched != crate::engine::scan::Match::InsideCopy
                || matches!(a.step, Step::Keep { .. })
            {
                continue;
            }
            if let Some(copy) = kept_copies
                .iter()
                .find(|&&k| parents.has_ancestor(h.ns, h.mount.id, k))
            {
                a.step = Step::Keep {
                    reason: format!("it is inside mount {copy}, which is kept"),
                };
            }
        }
    }
    // A parent whose child is kept cannot be unmounted without detaching that child too.
    for p in &mut plans {
        let kept = kept_mounts(scan, p);
        for a in &mut p.actions {
            if matches!(a.step, Step::Keep { .. }) {
                continue;
            }
            let h = &scan.holders[a.holder];
            if let Some(child) = kept
                .iter()
                .find(|&&k| parents.has_ancestor(h.ns, k, h.mount.id))
            {
                a.step = Step::Keep {
                    reason: format!("mount {child} inside it is kept"),
                };
            }
        }
    }
    plans
}

/// Mount ids the plan for one namespace keeps.
fn kept_mounts(scan: &Scan, p: &NamespacePlan) -> Vec<u64> {
    p.actions
        .iter()
        .filter(|a| matches!(a.step, Step::Keep { .. }))
        .map(|a| scan.holders[a.holder].mount.id)
        .collect()
}

fn first_step(scan: &Scan, h: &Holder, scope: &Scope) -> Step {
    if let Some(in_use) = &h.in_use {
        let reason = match in_use {
            InUse::NamespaceRoot => "in use: it is the root of its mount namespace".to_string(),
            InUse::ProcessRoot { pids } => {
                format!("in use: root directory of {}", pid_list(scan, h.ns, pids))
            }
        };
        return Step::Keep { reason };
    }
    if let Some(reason) = scope.protects(scan, h.ns) {
        return Step::Keep { reason };
    }
    if h.pins.is_empty() {
        Step::Unmount
    } else {
        Step::Detach {
            pins: h.pins.clone(),
        }
    }
}

/// Parent links of the namespaces in a plan, to ask "is this mount inside that one".
struct Parents(HashMap<usize, HashMap<u64, u64>>);

impl Parents {
    fn of(scan: &Scan) -> Parents {
        let namespaces: HashSet<usize> = scan.holders.iter().map(|h| h.ns).collect();
        Parents(
            namespaces
                .into_iter()
                .filter_map(|ns| {
                    let table = scan.namespaces[ns].table.as_ref()?;
                    Some((
                        ns,
                        table.mounts.iter().map(|m| (m.id, m.parent_id)).collect(),
                    ))
                })
                .collect(),
        )
    }

    /// True when mount `child` has `ancestor` above it in namespace `ns`.
    fn has_ancestor(&self, ns: usize, child: u64, ancestor: u64) -> bool {
        let Some(parents) = self.0.get(&ns) else {
            return false;
        };
        let mut at = child;
        for _ in 0..parents.len() {
            match parents.get(&at) {
                Some(&p) if p == ancestor => return true,
                Some(&p) if p != at => at = p,
                _ => return false,
            }
        }
        false
    }
}

/// An unmount under a shared parent propagates to the mounts at the same place under every
/// peer and slave of that parent (shared subtrees, kernel docs). If any of those is not
/// being released too, unmounting here would remove it as well: refuse.
fn propagation_hazard(
    scan: &Scan,
    h: &Holder,
    releasing: &HashSet<(usize, u64)>,
) -> Option<String> {
    let parent = h.parent?;
    let group = parent.peer_group?;
    let parent_table = scan.namespaces[h.ns].table.as_ref()?;
    if parent_table.partial {
        return Some(format!(
            "its parent mount {} is shared (peer group {group}) and --paths-only did not read \
             the other namespaces' mounts, so where the unmount would propagate is unknown; \
             run without --paths-only",
            parent.id
        ));
    }
    let location = fs_location(
        parent_table.root(&parent),
        parent_table.mount_point(&parent),
        &h.mount_point,
    )?;
    for (ns, scanned) in scan.namespaces.iter().enumerate() {
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        for peer in &table.mounts {
            let related = peer.peer_group == Some(group) || peer.master == Some(group);
            if !related || (ns == h.ns && peer.id == parent.id) {
                continue;
            }
            for child in table.mounts.iter().filter(|c| c.parent_id == peer.id) {
                let same_place = fs_location(
                    table.root(peer),
                    table.mount_point(peer),
                    table.mount_point(child),
                )
                .is_some_and(|l| l == location);
                if same_place && !releasing.contains(&(ns, child.id)) {
                    return Some(format!(
                        "its parent mount {} is shared (peer group {group}): unmounting it \
                         would also unmount mount {} at {} in mount namespace {}, which is not \
                         being released",
                        parent.id,
                        child.id,
                        crate::engine::mountinfo::encode(table.mount_point(child)),
                        scanned.ns.inode
                    ));
                }
            }
        }
    }
    None
}

/// Where a child mount point sits inside its parent's filesystem: the parent's root plus
/// the child's path relative to the parent's mount point.
fn fs_location(parent_root: &[u8], parent_point: &[u8], child_point: &[u8]) -> Option<Vec<u8>> {
    if !path_is_under(child_point, parent_point) {
        return None;
    }
    let rel = if parent_point == b"/" {
        &child_point[1..]
    } else {
        child_point[parent_point.len()..]
            .strip_prefix(b"/")
            .unwrap_or_default()
    };
    let mut loc = parent_root.to_vec();
    if !loc.ends_with(b"/") {
        loc.push(b'/');
    }
    loc.extend_from_slice(rel);
    Some(loc)
}

fn pid_list(scan: &Scan, ns: usize, pids: &[i32]) -> String {
    let procs = scan.processes(ns);
    pids.iter()
        .map(|pid| match procs.iter().find(|p| p.pid == *pid) {
            Some(p) => format!("{pid} ({})", p.comm),
            None => pid.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What happened to one holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Unmounted,
    /// Removed from the namespace; these processes still keep the filesystem alive.
    Detached {
        pins: Vec<Pin>,
    },
    Kept {
        reason: String,
    },
    /// Already gone when we came to it.
    Gone,
    Failed {
        error: String,
    },
    /// `--dry-run`: what would be done.
    WouldUnmount,
    WouldDetach {
        pins: Vec<Pin>,
    },
}

/// A holder's outcome.
#[derive(Debug, Clone)]
pub struct ActionResult {
    pub holder: usize,
    pub outcome: Outcome,
}

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
                        error: e.to_string(),
                    },
                    (step, Ok(())) => unmount_one(worker, &scan.holders[a.holder], step),
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

/// Verifies and unmounts one holder in the namespace the worker is in.
fn unmount_one(worker: &mut NsWorker, h: &Holder, step: &Step) -> Outcome {
    let path = OsStr::from_bytes(&h.mount_point);
    let fd = match sys::open_path_no_symlinks(path) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Outcome::Gone,
        Err(e) => {
            return Outcome::Failed {
                error: format!("opening {}: {e}", path.to_string_lossy()),
            };
        }
    };
    let stat = match sys::statx_mount(Some(fd.as_fd()), OsStr::new(""), libc::AT_EMPTY_PATH) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed {
                error: format!("statx {}: {e}", path.to_string_lossy()),
            };
        }
    };
    let id_matches = match stat.mnt_id {
        Some(id) => id == h.mount.id,
        // Kernel < 5.8: fall back to the namespace's own mountinfo, read now.
        None => topmost_id_at(worker, &h.mount_point) == Some(h.mount.id),
    };
    if !id_matches || stat.dev != h.mount.dev || stat.is_mount_root == Some(false) {
        // Either it went away, or something else now sits on top of it.
        let still_there = worker
            .read_mountinfo()
            .ok()
            .and_then(|t| crate::engine::mountinfo::parse(t).ok())
            .is_some_and(|t| t.mounts.iter().any(|m| m.id == h.mount.id));
        if !still_there {
            return Outcome::Gone;
        }
        return Outcome::Failed {
            error: format!(
                "{} now leads to mount {:?} (dev {}:{}), not the scanned mount {}: it is \
                 covered by another mount; nothing was unmounted",
                path.to_string_lossy(),
                stat.mnt_id,
                stat.dev.0,
                stat.dev.1,
                h.mount.id
            ),
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
        Err(e) => Outcome::Failed {
            error: format!("umount2({}, MNT_DETACH): {e}", path.to_string_lossy()),
        },
    }
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

/// A whole release: the scan it acted on, the plan, what happened, and what is left.
#[derive(Debug)]
pub struct Release {
    pub scan: Scan,
    pub plans: Vec<NamespacePlan>,
    pub results: Vec<ActionResult>,
    /// `(namespace index, mount id)` of the scanned holders still mounted after acting;
    /// `None` for a dry run.
    pub still_mounted: Option<HashSet<(usize, u64)>>,
    /// What the re-check noticed (namespaces whose processes are all gone).
    pub notes: Vec<String>,
    pub dry_run: bool,
    pub scope: Scope,
}

impl Release {
    /// Holders that are still there and in scope (foreign ones; all with `--everywhere`).
    pub fn remaining(&self) -> Vec<&Holder> {
        self.scan
            .holders
            .iter()
            .filter(|h| self.scope.protects(&self.scan, h.ns).is_none())
            .filter(|h| {
                self.still_mounted
                    .as_ref()
                    .is_none_or(|s| s.contains(&(h.ns, h.mount.id)))
            })
            .collect()
    }

    /// How many copies were removed from their namespaces (unmounted or detached).
    pub fn released(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Unmounted | Outcome::Detached { .. }))
            .count()
    }

    /// Whether a detached filesystem is still kept alive by processes.
    pub fn still_pinned(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(&r.outcome, Outcome::Detached { .. }))
    }
}

/// Scans, plans and releases `request`'s targets within `scope`, then re-checks.
pub fn run(
    request: &crate::engine::scan::ScanRequest,
    scope: Scope,
    dry_run: bool,
) -> Result<Release, crate::engine::scan::ScanError> {
    let scan = crate::engine::scan::scan(request)?;
    run_on(scan, request, scope, dry_run)
}

/// Like [`run`], on a scan already made (its namespace descriptors are still held).
pub fn run_on(
    scan: Scan,
    request: &crate::engine::scan::ScanRequest,
    scope: Scope,
    dry_run: bool,
) -> Result<Release, crate::engine::scan::ScanError> {
    let started = std::time::Instant::now();
    let plans = plan(&scan, scope.clone());
    let planned = started.elapsed();
    let results = execute(&scan, &plans, &request.proc_root, dry_run)?;
    let executed = started.elapsed();
    let (still_mounted, notes) = if dry_run {
        (None, Vec::new())
    } else {
        match recheck(&scan, &plans, request) {
            Ok((still, notes)) => (Some(still), notes),
            // The unmounts are done: report them. What remains is then what the actions
            // did not remove, as they themselves saw it.
            Err(e) => (
                Some(not_removed_ids(&scan, &results)),
                vec![format!(
                    "the re-check after the release could not run ({e}): what remains is \
                     what the actions did not remove"
                )],
            ),
        }
    };
    tracing::debug!(
        plan_ms = planned.as_secs_f64() * 1e3,
        execute_ms = (executed - planned).as_secs_f64() * 1e3,
        recheck_ms = (started.elapsed() - executed).as_secs_f64() * 1e3,
        "release done"
    );
    Ok(Release {
        scan,
        plans,
        results,
        still_mounted,
        notes,
        dry_run,
        scope,
    })
}

/// `(namespace index, mount id)` pairs.
type MountSet = HashSet<(usize, u64)>;

/// Holders the actions did not remove from their namespace, by (namespace, mount id).
fn not_removed_ids(scan: &Scan, results: &[ActionResult]) -> MountSet {
    results
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Unmounted | Outcome::Detached { .. } | Outcome::Gone
            )
        })
        .map(|r| {
            let h = &scan.holders[r.holder];
            (h.ns, h.mount.id)
        })
        .collect()
}

/// Re-reads the namespaces that were acted in (one listmount, or one mountinfo read, each)
/// and returns which scanned holders are still mounted. Holders in namespaces left alone
/// are still there by definition.
fn recheck(
    scan: &Scan,
    plans: &[NamespacePlan],
    request: &crate::engine::scan::ScanRequest,
) -> Result<(MountSet, Vec<String>), nsexec::NsError> {
    let acted: Vec<usize> = plans
        .iter()
        .filter(|p| {
            p.actions
                .iter()
                .any(|a| !matches!(a.step, Step::Keep { .. }))
        })
        .map(|p| p.ns)
        .collect();
    let present = nsexec::map_with_workers(
        &request.proc_root,
        request.threads,
        &acted,
        |worker, &ns| -> Option<HashSet<u64>> {
            let scanned = &scan.namespaces[ns];
            let table = scanned.table.as_ref()?;
            match table.ns_id {
                // listmount: the 64-bit ids never repeat, so presence is exact.
                Some(ns_id) => {
                    let unique: HashSet<u64> =
                        sys::listmount_all(ns_id).ok()?.into_iter().collect();
                    Some(
                        scan.holders
                            .iter()
                            .filter(|h| h.ns == ns)
                            .filter(|h| h.mount.unique_id.is_some_and(|u| unique.contains(&u)))
                            .map(|h| h.mount.id)
                            .collect(),
                    )
                }
                None => {
                    worker.enter(scanned.ns.fd.as_fd(), scanned.ns.inode).ok()?;
                    let now =
                        crate::engine::mountinfo::parse(worker.read_mountinfo().ok()?).ok()?;
                    Some(
                        now.mounts
                            .iter()
                            .filter(|m| {
                                scan.holders.iter().any(|h| {
                                    h.ns == ns && h.mount.id == m.id && h.mount.dev == m.dev
                                })
                            })
                            .map(|m| m.id)
                            .collect(),
                    )
                }
            }
        },
    )?;
    let mut still: HashSet<(usize, u64)> = scan
        .holders
        .iter()
        .filter(|h| !acted.contains(&h.ns))
        .map(|h| (h.ns, h.mount.id))
        .collect();
    let mut notes = Vec::new();
    for (&ns, ids) in acted.iter().zip(present) {
        let inode = scan.namespaces[ns].ns.inode;
        match ids {
            Some(ids) => still.extend(ids.into_iter().map(|id| (ns, id))),
            None => notes.push(format!(
                "mount namespace {inode} could not be re-read after the release"
            )),
        }
        let alive = scan.namespaces[ns].ns.pids.iter().any(|&pid| {
            crate::engine::namespace::mnt_ns_inode(&request.proc_root, pid) == Some(inode)
        });
        if !alive {
            notes.push(format!(
                "mount namespace {inode} has no process left (its last one exited after the \
                 scan); it goes away with its mounts when mntreap lets go of it"
            ));
        }
    }
    Ok((still, notes))
}
