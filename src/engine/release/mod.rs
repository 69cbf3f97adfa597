//! Releasing holders: plan which copies to unmount, then unmount them in their namespaces.
//!
//! The plan says, per namespace and children first, what happens to each holder and why.
//! Execution enters each namespace through the descriptor held since the scan, re-opens the
//! mount point without following symlinks, checks that the mount found there is the very
//! mount scanned (mount id and device), and only then unmounts it through that descriptor.
//! Each unmount is an audit event (`target: "mntreap::audit"`).

use std::collections::HashSet;
use std::os::fd::AsFd;

use crate::engine::nsexec::{self};
use crate::engine::scan::{Holder, Pin, Scan};
use crate::engine::sys;

mod confirm;
mod execute;
mod plan;

pub use confirm::confirm;
pub use execute::execute;
pub use plan::plan;

/// Which holders a release may touch.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Release in every namespace, protected ones included.
    pub everywhere: bool,
    /// Namespaces (by inode) whose copies are the runtime's own view and stay, with the
    /// reason shown. `None`: mntreap's own namespace.
    pub protected: Option<Vec<(u64, String)>>,
    /// For a device release: the running containers' namespaces, as the runtime's records
    /// describe them ([`Workload`]).
    pub workloads: Vec<Workload>,
    /// For a device release: the runtimes' and kubelet's directories as the node names
    /// them. Copies of their mounts are what other namespaces carry by accident (a bind
    /// of the node's `/` or of `/var/lib/kubelet`); a device mounted elsewhere is someone's
    /// own use of it.
    pub copy_roots: Vec<Vec<u8>>,
}

/// A running container's mount namespace and what the runtime mounted there for it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The namespace (by inode) of the container's init process.
    pub ns: u64,
    /// That process and its start time: after the scan it must still be there, in that
    /// namespace (an inode freed during the scan can be handed to another namespace).
    pub pid: i32,
    pub start: u64,
    /// Who it is, as reports name it (`container web`, `pod default/db`).
    pub name: String,
    /// Its mounts from the runtime's records; `None` when they could not be read.
    pub mounts: Option<Vec<WorkloadMount>>,
}

/// One mount the runtime made for a container: where, and of what node path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadMount {
    pub destination: Vec<u8>,
    pub source: Vec<u8>,
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

/// Why one holder could not be released (nothing was unmounted for it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnmountError {
    #[error("{0}")]
    EnterNamespace(String),
    #[error("opening {path}: {errno}")]
    Open { path: String, errno: nix::Error },
    #[error("statx {path}: {errno}")]
    Stat { path: String, errno: nix::Error },
    #[error(
        "{path} now leads to mount {found:?} (dev {dev}), not the scanned mount {scanned}: it \
         is covered by another mount; nothing was unmounted"
    )]
    Covered {
        path: String,
        found: Option<u64>,
        dev: String,
        scanned: u64,
    },
    #[error("umount2({path}, MNT_DETACH): {errno}")]
    Umount { path: String, errno: nix::Error },
    #[error(
        "{path} could not be shown to have nothing mounted below it any more (no longer an \
         empty directory, or unreadable): a detach would take whatever is there unseen; \
         nothing was unmounted (release again: it is then listed below)"
    )]
    MountedBelow { path: String },
}

/// In documents and audit lines, an error is its message.
impl serde::Serialize for UnmountError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
        error: UnmountError,
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
    /// For a release from kept tables: how many reads by id (`statmount` of a mount,
    /// `listmount` below one) confirmed its plan.
    pub confirmed: Option<usize>,
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
    // Kept tables may be stale in what no id or event shows (a move, a propagation
    // change): what this plan rests on is read again from the kernel first.
    let confirmed = match !dry_run && scan.from_index() {
        true => Some(confirm(&scan, &plans, request.threads)?),
        false => None,
    };
    let planned = started.elapsed();
    let results = execute(&scan, &plans, &request.proc_root, dry_run)?;
    let executed = started.elapsed();
    let (still_mounted, notes) = if dry_run {
        (None, Vec::new())
    } else {
        match recheck(&scan, &plans, &results, request) {
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
        confirmed,
    })
}

/// Which holders are still mounted, from what the re-check read in each namespace acted
/// in (`present`, in the order of `acted`; `None` where it could not read). Where it could
/// not, what the actions did not remove is still there: a failed read never makes a holder
/// look gone.
fn still_mounted(
    scan: &Scan,
    acted: &[usize],
    present: Vec<Option<HashSet<u64>>>,
    results: &[ActionResult],
) -> (MountSet, Vec<String>) {
    let mut still: MountSet = scan
        .holders
        .iter()
        .filter(|h| !acted.contains(&h.ns))
        .map(|h| (h.ns, h.mount.id))
        .collect();
    let not_removed = not_removed_ids(scan, results);
    let mut notes = Vec::new();
    for (&ns, ids) in acted.iter().zip(present) {
        match ids {
            Some(ids) => still.extend(ids.into_iter().map(|id| (ns, id))),
            None => {
                still.extend(not_removed.iter().filter(|(n, _)| *n == ns));
                notes.push(format!(
                    "mount namespace {} could not be re-read after the release: what remains \
                     there is what the actions did not remove",
                    scan.namespaces[ns].ns.inode
                ));
            }
        }
    }
    (still, notes)
}

/// `(namespace index, mount id)` pairs.
pub(crate) type MountSet = HashSet<(usize, u64)>;

/// Holders the actions did not remove from their namespace, by (namespace, mount id).
pub(crate) fn not_removed_ids(scan: &Scan, results: &[ActionResult]) -> MountSet {
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

/// Re-reads what was acted on (each holder by 64-bit id, or one mountinfo read per
/// namespace) and returns which scanned holders are still mounted. Holders in namespaces
/// left alone are still there by definition.
fn recheck(
    scan: &Scan,
    plans: &[NamespacePlan],
    results: &[ActionResult],
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
                // The 64-bit ids never repeat, so presence is exact: each holder is asked
                // for by id (statmount), not found in a listing of the whole namespace.
                Some(ns_id) => {
                    let mut buf = sys::StatmountBuf::new();
                    let mut present = HashSet::new();
                    for h in scan.holders.iter().filter(|h| h.ns == ns) {
                        // Without an id to ask by, nothing is known: not read again.
                        let unique = h.mount.unique_id?;
                        match sys::statmount(
                            ns_id,
                            unique.get(),
                            sys::STATMOUNT_MNT_BASIC,
                            &mut buf,
                        ) {
                            Ok(_) => {
                                present.insert(h.mount.id);
                            }
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                            Err(_) => return None,
                        }
                    }
                    Some(present)
                }
                None => {
                    worker.enter(scanned.ns.fd.as_fd(), scanned.ns.inode).ok()?;
                    let now =
                        crate::engine::mountinfo::parse(worker.read_mountinfo().ok()?).ok()?;
                    // Looked up, not searched: a node-wide release holds every namespace's
                    // holders, and a namespace has thousands of mounts.
                    let held: HashSet<(u64, (u32, u32))> = scan
                        .holders
                        .iter()
                        .filter(|h| h.ns == ns)
                        .map(|h| (h.mount.id, h.mount.dev))
                        .collect();
                    Some(
                        now.mounts
                            .iter()
                            .filter(|m| held.contains(&(m.id, m.dev)))
                            .map(|m| m.id)
                            .collect(),
                    )
                }
            }
        },
    )?;
    let (still, mut notes) = still_mounted(scan, &acted, present, results);
    for &ns in &acted {
        let inode = scan.namespaces[ns].ns.inode;
        let alive = scan.namespaces[ns].ns.pids.iter().any(|&pid| {
            crate::engine::namespace::mnt_ns_inode(&request.proc_root, pid) == Some(inode)
        });
        let had = !scan.namespaces[ns].ns.pids.is_empty();
        if !alive && had {
            notes.push(format!(
                "mount namespace {inode} has no process left (its last one exited after the \
                 scan); it goes away with its mounts when mntreap lets go of it"
            ));
        }
    }
    Ok((still, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scan::fixture::{Ns, scan_of};

    #[test]
    fn a_namespace_that_cannot_be_read_again_keeps_what_was_not_removed() {
        let table = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                     12 1 0:50 / /d/l/a/merged rw - overlay overlay rw\n\
                     13 1 0:51 / /d/l/b/merged rw - overlay overlay rw\n";
        let scan = scan_of(
            &["/d/l/a/merged", "/d/l/b/merged"],
            &[],
            &[Ns(1, true, true, table), Ns(2, false, true, table)],
        );
        let of = |ns: usize, id: u64| {
            scan.holders
                .iter()
                .position(|h| h.ns == ns && h.mount.id == id)
                .expect("a holder")
        };
        let results = vec![
            ActionResult {
                holder: of(1, 12),
                outcome: Outcome::Unmounted,
            },
            ActionResult {
                holder: of(1, 13),
                outcome: Outcome::Kept {
                    reason: "kept".into(),
                },
            },
        ];
        // Namespace 1 was acted in and could not be read again; 0 was left alone.
        let (still, notes) = still_mounted(&scan, &[1], vec![None], &results);
        let expected: MountSet = [(0, 12), (0, 13), (1, 13)].into();
        assert_eq!(still, expected);
        assert!(notes[0].contains("could not be re-read"), "{notes:?}");
        // Read again: what the kernel says, whatever the actions reported.
        let (still, notes) = still_mounted(&scan, &[1], vec![Some([12].into())], &results);
        assert_eq!(still, [(0, 12), (0, 13), (1, 12)].into());
        assert!(notes.is_empty());
    }
}
