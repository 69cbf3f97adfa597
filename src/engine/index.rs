//! Mount tables kept between the scans of a long-running process (the agent's sweeps and
//! releases, the plugin's cleanups: one [`SharedIndex`] each), so
//! that a namespace whose mounts have not changed costs one `listmount` instead of one
//! `statmount` per mount, or nothing at all where the kernel reports mount events.
//!
//! A kept table is reused only while `listmount` gives exactly the never-reused 64-bit ids
//! it was read with: a mount that appeared (a new copy, a bind) or went has an id of its
//! own, so no mount can be hidden by the index. With mount events (fanotify
//! `FAN_MARK_MNTNS`, Linux 6.15+, [`crate::engine::mount_events`]) a namespace is marked
//! before its table is read, and its table is reused without `listmount` until an event
//! may concern it: an attach (which names no namespace) sends every namespace back to
//! `listmount`, a detach the one namespace that held the mount; a move (which keeps the
//! ids) sends that namespace to a new read, and lost events every namespace. Without events
//! a move goes unseen until the table is [`TableIndex::max_age`] old; so, with or without
//! them, does a rename of a directory above a mount point (no new id, no event). What
//! neither ids nor events show is
//! a change of a live mount's propagation (`mount --make-private`): by a probe run by hand
//! on 6.18, neither the mountinfo poll event nor fanotify's mount events report it. So a
//! table from the index is fit for *finding* what to release; a release from it first reads
//! again by id every fact its plan rests on ([`crate::engine::release::confirm`]) and is
//! set aside for a cold scan at any difference, at a shared parent, or when a table was
//! reused without mount events (a move could then hide a copy); and only tables lent with
//! their mount points forgotten serve a release ([`TableIndex::for_releases`],
//! [`TableIndex::lend_fresh_mount_points`]: a rename above a mount point keeps its id and
//! raises no event, so a release's scan reads mount points again). The agent's sweep still
//! scans again before it acts (its classification reads more than the plan), and a kept
//! table is read again once it is older than [`TableIndex::max_age`].

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::engine::mount_events::{MountEvent, MountEvents};
use crate::engine::namespace::Namespace;
use crate::engine::source::SourceError;
use crate::engine::sys;
use crate::engine::table::{MountTable, StringPool};

/// What an event since the last scan asks of a kept table before it is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Recheck {
    /// List the namespace's mounts: reuse the table if the ids are the same.
    List,
    /// Read the table again (a move keeps the ids but changes a mount point).
    Read,
}

/// One namespace's table as kept, keyed in the index by the namespace's 64-bit id.
struct Kept {
    /// Each overlay's `upperdir` (immutable), by index in the table: the layer signatures a
    /// later scan searches for may differ, and this re-signs without a system call.
    upperdirs: crate::engine::source::Upperdirs,
    read_at: Instant,
    /// `None` while a scan holds it (lent out by [`TableIndex::table`]).
    table: Option<MountTable>,
    /// Marked in the index's event group before the table was read.
    watched: bool,
    /// Set by the events drained when a scan begins.
    recheck: Option<Recheck>,
    /// Digest of the ids the table was read with: a kept table reused on the events' word
    /// must still be, mount for mount, the one read.
    ids_digest: u64,
}

impl Kept {
    /// Whether the kept table holds mount `id` (tables are in listmount's ascending order).
    fn holds(&self, id: u64) -> bool {
        self.table
            .as_ref()
            .is_some_and(|t| t.position_of_unique(id).is_some())
    }
}

/// A digest of a table's ids, in order: a check against bugs, not an adversary (a kept
/// table lives in the agent's own memory), so a multiply-rotate fold, not SipHash.
fn ids_digest(ids: impl Iterator<Item = Option<u64>>) -> u64 {
    ids.fold(0x243F_6A88_85A3_08D3, |h, id| {
        (h ^ id.map_or(u64::MAX, |id| id))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29)
    })
}

/// Where a scan's table of one namespace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the kernel by this scan.
    Read,
    /// Kept, from a namespace watched since before it was read: a move since would have
    /// sent it to a new read.
    KeptWatched,
    /// Kept, and reused because `listmount` lists the same ids: a mount moved since (same
    /// id) is where the table says it was.
    KeptListed,
}

/// How a scan used the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexUse {
    /// Namespaces whose kept table was reused.
    pub reused: usize,
    /// Of those, reused on the kernel's mount events, with no `listmount`.
    #[serde(default)]
    pub unlisted: usize,
    /// Namespaces read from the kernel (new, changed, or older than the index's age).
    pub read: usize,
    /// The reused tables' mount points were read again where the scan needed them
    /// ([`TableIndex::for_releases`]): a release from kept tables asks for this.
    #[serde(default)]
    pub fresh_mount_points: bool,
}

/// The one [`TableIndex`] of a long-running process, used by one scan at a time: a scan
/// lends the kept tables it reuses and [`TableIndex::begin`] forgets those not given back,
/// so two scans at once would undo each other's keeping (never a result: a table lent out
/// is read from the kernel instead).
///
/// Releases (a hook call, an event, a plugin cleanup) never wait: one that finds the index
/// taken reads every table. A sweep waits for the release that has it, and releases that
/// start meanwhile read every table, so that pods calling the hook in a loop cannot keep
/// the index from the sweeps.
pub struct SharedIndex {
    index: Mutex<TableIndex>,
    /// A sweep is waiting for the index.
    sweep_waiting: std::sync::atomic::AtomicBool,
}

impl SharedIndex {
    pub fn new(index: TableIndex) -> Self {
        SharedIndex {
            index: Mutex::new(index),
            sweep_waiting: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The index for a release, if no other scan has it, no sweep waits for it, and the
    /// kernel reports mount events (without them no release is made from kept tables).
    pub fn for_release(&self) -> Option<std::sync::MutexGuard<'_, TableIndex>> {
        self.try_take().filter(|index| index.events())
    }

    /// The index, unless a scan has it or a sweep waits for it.
    fn try_take(&self) -> Option<std::sync::MutexGuard<'_, TableIndex>> {
        if self.sweep_waiting.load(Ordering::Acquire) {
            return None;
        }
        match self.index.try_lock() {
            Ok(index) => Some(index),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(self.recovered(poisoned)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The index for a sweep, once the release that has it is done (a release takes one
    /// container's scan; the sweep has no deadline).
    pub fn for_sweep(&self) -> std::sync::MutexGuard<'_, TableIndex> {
        self.sweep_waiting.store(true, Ordering::Release);
        let index = self
            .index
            .lock()
            .unwrap_or_else(|poisoned| self.recovered(poisoned));
        self.sweep_waiting.store(false, Ordering::Release);
        index
    }

    /// A scan panicked with the index: its tables may be lent out or half given back.
    fn recovered<'a>(
        &'a self,
        poisoned: std::sync::PoisonError<std::sync::MutexGuard<'a, TableIndex>>,
    ) -> std::sync::MutexGuard<'a, TableIndex> {
        let index = poisoned.into_inner();
        index.clear();
        self.index.clear_poison();
        index
    }
}

/// Tables kept between scans; see the module's documentation.
pub struct TableIndex {
    kept: Mutex<HashMap<u64, Kept>>,
    /// The kept tables' strings, each once (locked only while tables are given back).
    pool: Mutex<StringPool>,
    /// A kept table older than this is read again (a propagation change since is then
    /// seen).
    pub max_age: Duration,
    events: Option<MountEvents>,
    /// Namespaces the current scan reused with no `listmount`.
    unlisted: AtomicUsize,
    /// Lend tables with their mount points forgotten ([`TableIndex::for_releases`]).
    fresh_mount_points: AtomicBool,
}

impl std::fmt::Debug for TableIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIndex")
            .field("namespaces", &self.len())
            .field("max_age", &self.max_age)
            .field("events", &self.events.is_some())
            .field("fresh_mount_points", &self.fresh_mount_points())
            .finish()
    }
}

impl TableIndex {
    /// An index that lists every namespace's mounts before it reuses a table.
    pub fn new(max_age: Duration) -> Self {
        TableIndex {
            kept: Mutex::new(HashMap::new()),
            pool: Mutex::new(StringPool::default()),
            max_age,
            events: None,
            unlisted: AtomicUsize::new(0),
            fresh_mount_points: AtomicBool::new(false),
        }
    }

    /// This index lends tables whose mount points (and the other strings but the root)
    /// are forgotten, as a table just listed has none: each scan reads again the strings
    /// of the mounts it looks at. A rename of a directory above a mount point changes its
    /// path with no new id and no event, so a kept mount point can be stale; ids, devices
    /// and roots cannot. What a release decides by path (what is at a target, what is
    /// covered, which views speak for a target's identity) then comes from the kernel, at
    /// the cost of a few strings per namespace instead of one `statmount` per mount.
    /// Releases from kept tables ([`crate::engine::release::confirm`]) require it; the
    /// agent's sweeps share its one index with its releases and lend without it
    /// ([`TableIndex::lend_fresh_mount_points`]).
    pub fn for_releases(self) -> Self {
        self.lend_fresh_mount_points(true);
        self
    }

    /// Whether this index lends tables whose mount points are forgotten.
    pub fn fresh_mount_points(&self) -> bool {
        self.fresh_mount_points.load(Ordering::Relaxed)
    }

    /// Sets, for the next scans, whether tables are lent with their mount points forgotten
    /// ([`TableIndex::for_releases`]): the one scan that has a [`SharedIndex`] chooses. A
    /// sweep, which scans again before it acts, keeps them: on a node whose mounts sit
    /// in the directory that holds a runtime root (a kubelet node's volumes, under `/`),
    /// reading them again costs a `statmount` of each such mount of every namespace per
    /// sweep. The kept tables keep their mount points either way.
    pub fn lend_fresh_mount_points(&self, fresh: bool) {
        self.fresh_mount_points.store(fresh, Ordering::Relaxed);
    }

    /// An index that trusts the kernel's mount events where it has them (6.15+), and
    /// lists mounts where it does not; [`TableIndex::events`] says which.
    pub fn watching(max_age: Duration) -> Self {
        let mut index = TableIndex::new(max_age);
        match MountEvents::new() {
            Ok(events) => index.events = Some(events),
            Err(e) => {
                tracing::info!(error = %e, "no mount events (Linux 6.15+): the index lists each namespace's mounts")
            }
        }
        index
    }

    /// Whether the index uses the kernel's mount events.
    pub fn events(&self) -> bool {
        self.events.is_some()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Kept>> {
        self.kept.lock().unwrap_or_else(|poisoned| {
            // A panic while tables were given back can leave one pointing into a pool it
            // does not hold: forget them all (the next scan reads every namespace).
            let mut kept = poisoned.into_inner();
            kept.clear();
            self.kept.clear_poison();
            kept
        })
    }

    /// Namespaces kept.
    pub fn len(&self) -> usize {
        self.kept().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every table (before a release, whose unmounts change them anyway).
    pub fn clear(&self) {
        self.kept().clear();
    }

    /// The heap the kept tables take, roughly (for the agent's memory metric).
    pub fn heap_bytes(&self) -> usize {
        let pool = self.pool.lock().map_or(0, |p| p.heap_bytes());
        pool + self
            .kept()
            .values()
            .map(|k| {
                k.upperdirs
                    .iter()
                    .map(|(_, u)| u.capacity() + 32)
                    .sum::<usize>()
                    + k.table.as_ref().map_or(0, MountTable::heap_bytes)
            })
            .sum::<usize>()
    }

    /// Namespaces the current scan reused with no `listmount`.
    pub fn unlisted(&self) -> usize {
        self.unlisted.load(Ordering::Relaxed)
    }

    /// `ns`'s table, and whether it is the kept one: that is when it is young enough and
    /// either no event since concerns it, or `listmount` still lists exactly the kept
    /// table's mounts, in its order (re-signed for `signatures`); else the table is read
    /// from the kernel.
    pub fn table(
        &self,
        ns: &Namespace,
        signatures: &[Vec<u8>],
    ) -> Result<(MountTable, Origin), SourceError> {
        let io = |op: &'static str| {
            move |source| SourceError::Io {
                inode: ns.inode,
                op,
                source,
            }
        };
        let ns_id = sys::mntns_id(ns.fd.as_fd()).map_err(io("NS_GET_MNTNS_ID"))?;
        if let Some(table) = self.reuse(ns_id, None, signatures) {
            self.unlisted.fetch_add(1, Ordering::Relaxed);
            return Ok((table, Origin::KeptWatched));
        }
        // Marked before its mounts are listed and read: no change after goes unreported.
        let watched = self.watch(ns, ns_id);
        let ids = sys::listmount_all(ns_id).map_err(io("listmount"))?;
        // A release refuses a table reused on a listing alone (a move since would not
        // show): lending one would only make it read everything again. This namespace is
        // read now, marked first, so its next table is reused on events.
        let unwatched = !self.kept().get(&ns_id).is_some_and(|k| k.watched);
        let reusable = !(self.fresh_mount_points() && self.events.is_some() && unwatched);
        if let Some(table) = reusable
            .then(|| self.reuse(ns_id, Some(&ids), signatures))
            .flatten()
        {
            // Watched only if it was before its table was read (marked then, or earlier).
            let origin = match unwatched {
                false => Origin::KeptWatched,
                true => Origin::KeptListed,
            };
            return Ok((table, origin));
        }
        // Only a namespace of mntreap's user namespace can carry a layer signature (see
        // the scan): elsewhere no upperdir is worth a system call.
        let (table, upperdirs) =
            crate::engine::source::read_listmount_ids(ns, ns_id, &ids, signatures, ns.host_userns)?;
        self.kept().insert(
            ns_id,
            Kept {
                upperdirs,
                read_at: Instant::now(),
                table: None,
                watched,
                recheck: None,
                // Of the mounts read: one gone between listmount and statmount is not in
                // the table, and a digest of the listing would never match it again.
                ids_digest: ids_digest(
                    table
                        .mounts
                        .iter()
                        .map(|m| m.unique_id.map(NonZeroU64::get)),
                ),
            },
        );
        Ok((table, Origin::Read))
    }

    /// Marks `ns` in the event group unless it is already: whether its events are seen.
    fn watch(&self, ns: &Namespace, ns_id: u64) -> bool {
        let Some(events) = &self.events else {
            return false;
        };
        if self.kept().get(&ns_id).is_some_and(|k| k.watched) {
            return true;
        }
        match events.watch(ns.fd.as_fd()) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(ns = ns.inode, error = %e, "namespace not watched: its mounts are listed");
                false
            }
        }
    }

    /// The kept table of `ns_id`, lent out, if it may be reused: with `ids` (what
    /// `listmount` gives now) when they are the table's; without, when the namespace is
    /// watched, no event since concerns it, and the table still has the ids it was read with.
    fn reuse(&self, ns_id: u64, ids: Option<&[u64]>, signatures: &[Vec<u8>]) -> Option<MountTable> {
        let mut kept = self.kept();
        if ids.is_none() {
            self.apply_events(&mut kept);
        }
        let k = kept.get_mut(&ns_id)?;
        if k.read_at.elapsed() >= self.max_age {
            return None;
        }
        let mut table = match (ids, k.recheck) {
            (None, None) if k.watched => {
                let digest = k.ids_digest;
                k.table.take_if(|t| {
                    t.ns_id == Some(ns_id)
                        && ids_digest(t.mounts.iter().map(|m| m.unique_id.map(NonZeroU64::get)))
                            == digest
                })?
            }
            // The kept table itself says which mounts it was read with: a table changed
            // since (by a bug, or by whoever could) no longer matches, and is read again.
            (Some(ids), None | Some(Recheck::List)) => k.table.take_if(|t| {
                t.ns_id == Some(ns_id)
                    && t.mounts
                        .iter()
                        .map(|m| m.unique_id.map(NonZeroU64::get))
                        .eq(ids.iter().map(|&id| Some(id)))
            })?,
            _ => return None,
        };
        // Listed just now, after the events were drained: events from here on are queued.
        k.recheck = None;
        // Only these overlays carry a signature: each is signed for this scan's.
        for (i, upper) in &k.upperdirs {
            table.mounts[*i].layer_signature =
                crate::engine::mountinfo::signature_of(upper, signatures);
        }
        if self.fresh_mount_points() {
            // Read again on demand by `source::hydrate`. A root never changes for its id,
            // so roots stay (identity matching reads the root of every mount of a target's
            // device); the mount points are put back when the table is.
            table.set_aside_mount_points();
        }
        Some(table)
    }

    /// Takes the tables of a finished scan back (strings it read included), and forgets
    /// namespaces the scan did not lend a table to (gone, or unreadable now).
    pub fn keep(&self, tables: impl IntoIterator<Item = MountTable>) {
        let mut kept = self.kept();
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| {
            // Poisoned with `kept` (both are held here), whose tables were forgotten.
            let mut pool = poisoned.into_inner();
            pool.restart();
            self.pool.clear_poison();
            pool
        });
        let mut returned = std::collections::HashSet::new();
        let mut refused = 0;
        for mut table in tables {
            if let Some((id, k)) = table.ns_id.and_then(|id| Some((id, kept.get_mut(&id)?))) {
                table.put_back_set_aside();
                table.shrink_to_fit();
                if pool.share(&mut table) {
                    k.table = Some(table);
                } else {
                    k.table = None;
                    refused += 1;
                }
                returned.insert(id);
            }
        }
        if refused > 0 {
            tracing::info!(
                namespaces = refused,
                "the index's string pool is full: these namespaces are read from the kernel"
            );
        }
        // Namespaces gone since, and tables lent to a scan that never gave them back.
        kept.retain(|id, _| returned.contains(id));
        pool.compact_and_publish(kept.values_mut().filter_map(|k| k.table.as_mut()).collect());
    }

    /// Starts a scan: forgets tables lent to a scan that ended without giving them back
    /// (it failed, or was skipped).
    pub fn begin(&self) {
        self.unlisted.store(0, Ordering::Relaxed);
        let mut kept = self.kept();
        kept.retain(|_, k| k.table.is_some());
        self.apply_events(&mut kept);
    }

    /// Drains the queued mount events into the kept tables' rechecks: at the start of a
    /// scan, and again before each table reused unlisted (a copy made while the scan reads
    /// other namespaces is then seen, as a listing would see it).
    fn apply_events(&self, kept: &mut HashMap<u64, Kept>) {
        let Some(events) = &self.events else {
            return;
        };
        let mut all = None;
        for event in events.drain() {
            let (id, asks) = match event {
                MountEvent::Detached(id) => (Some(id), Recheck::List),
                MountEvent::Moved(id) => (Some(id), Recheck::Read),
                // An attach names a mount no kept table has, so not its namespace.
                MountEvent::Attached(_) => (None, Recheck::List),
                // A move may be among lost events, and a move keeps the ids: read again.
                MountEvent::Lost => (None, Recheck::Read),
            };
            match id.and_then(|id| kept.values_mut().find(|k| k.holds(id))) {
                Some(k) => k.recheck = k.recheck.max(Some(asks)),
                None => all = all.max(Some(asks)),
            }
        }
        if let Some(asks) = all {
            for k in kept.values_mut() {
                k.recheck = k.recheck.max(Some(asks));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_sweep_gets_the_index_before_releases_that_start_meanwhile() {
        let shared = SharedIndex::new(TableIndex::new(Duration::from_secs(60)));
        let release = shared.try_take().expect("free");
        assert!(shared.try_take().is_none(), "one scan at a time");
        let swept = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sweep = s.spawn(|| {
                let _index = shared.for_sweep();
                swept.store(true, Ordering::Release);
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !shared.sweep_waiting.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the sweep never waited");
                std::thread::yield_now();
            }
            drop(release);
            // The sweep takes it next; a release meanwhile does not get in before it.
            loop {
                if let Some(index) = shared.try_take() {
                    assert!(
                        swept.load(Ordering::Acquire),
                        "a release took the index from a waiting sweep"
                    );
                    drop(index);
                    break;
                }
                std::thread::yield_now();
            }
            sweep.join().unwrap();
        });
        assert!(shared.try_take().is_some(), "free again after the sweep");
        assert!(
            shared.for_release().is_none(),
            "no release is made from kept tables without mount events"
        );
    }

    #[test]
    fn a_panic_while_tables_were_given_back_forgets_them_all() {
        let index = TableIndex::new(Duration::from_secs(60));
        let kept = Kept {
            upperdirs: Vec::new(),
            read_at: Instant::now(),
            table: Some(MountTable::default()),
            watched: false,
            recheck: None,
            ids_digest: 0,
        };
        index.kept().insert(7, kept);
        std::thread::scope(|s| {
            let poisoned = s.spawn(|| {
                let (_kept, _pool) = (index.kept.lock(), index.pool.lock());
                panic!("a panic inside keep");
            });
            assert!(poisoned.join().is_err());
        });
        let build = index.pool.lock().map_or(None, |p| Some(p.build()));
        assert_eq!(build, None, "both locks are poisoned");
        assert_eq!(index.len(), 0, "no table that may be half-written is kept");
        index.keep(std::iter::empty());
        let pool = index.pool.lock().expect("poison cleared");
        assert_eq!(
            pool.build(),
            1,
            "tables lent before read again from where they point"
        );
    }
}
