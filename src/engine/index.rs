//! Mount tables kept between the scans of a long-running process (the agent's sweeps), so
//! that a namespace whose mounts have not changed costs one `listmount` instead of one
//! `statmount` per mount.
//!
//! A kept table is reused only while `listmount` gives exactly the never-reused 64-bit ids
//! it was read with: a mount that appeared (a new copy, a bind) or went has an id of its
//! own, so no mount can be hidden by the index. What an id set does not show is a change of
//! a live mount's propagation (`mount --make-private`) or a `mount --move`; by a probe run
//! by hand on 6.18, neither the mountinfo poll event nor fanotify's mount events report
//! propagation changes either. So a table from the index is fit for *finding* what to release, never for
//! releasing it: every release scans cold (the agent's sweep scans again before it acts),
//! and a kept table is read again once it is older than [`TableIndex::max_age`].

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::namespace::Namespace;
use crate::engine::source::SourceError;
use crate::engine::sys;
use crate::engine::table::MountTable;

/// One namespace's table as kept, keyed in the index by the namespace's 64-bit id.
struct Kept {
    /// Each overlay's `upperdir` (immutable), by index in the table: the layer signatures a
    /// later scan searches for may differ, and this re-signs without a system call.
    upperdirs: crate::engine::source::Upperdirs,
    read_at: Instant,
    /// `None` while a scan holds it (lent out by [`TableIndex::table`]).
    table: Option<MountTable>,
}

/// How a scan used the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexUse {
    /// Namespaces whose kept table was reused.
    pub reused: usize,
    /// Namespaces read from the kernel (new, changed, or older than the index's age).
    pub read: usize,
}

/// Tables kept between scans; see the module's documentation.
pub struct TableIndex {
    kept: Mutex<HashMap<u64, Kept>>,
    /// A kept table older than this is read again (a move or a propagation change since is
    /// then seen).
    pub max_age: Duration,
}

impl std::fmt::Debug for TableIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIndex")
            .field("namespaces", &self.len())
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl TableIndex {
    pub fn new(max_age: Duration) -> Self {
        TableIndex {
            kept: Mutex::new(HashMap::new()),
            max_age,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Kept>> {
        // A worker that panicked mid-scan leaves nothing half-written: entries are whole.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
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
        self.kept()
            .values()
            .map(|k| {
                k.upperdirs
                    .iter()
                    .map(|(_, u)| u.capacity() + 32)
                    .sum::<usize>()
                    + k.table.as_ref().map_or(0, MountTable::heap_bytes)
            })
            .sum()
    }

    /// `ns`'s table, and whether it is the kept one: that is when `listmount` still lists
    /// exactly the kept table's mounts, in its order, and it is young enough (re-signed
    /// for `signatures`); else the table is read from the kernel.
    pub fn table(
        &self,
        ns: &Namespace,
        signatures: &[Vec<u8>],
    ) -> Result<(MountTable, bool), SourceError> {
        let io = |op: &'static str| {
            move |source| SourceError::Io {
                inode: ns.inode,
                op,
                source,
            }
        };
        let ns_id = sys::mntns_id(ns.fd.as_fd()).map_err(io("NS_GET_MNTNS_ID"))?;
        let ids = sys::listmount_all(ns_id).map_err(io("listmount"))?;
        // The kept table itself says which mounts it was read with: a table changed since
        // (by a bug, or by whoever could) no longer matches, and is read again.
        let same = |t: &MountTable| {
            t.ns_id == Some(ns_id)
                && t.mounts
                    .iter()
                    .map(|m| m.unique_id)
                    .eq(ids.iter().map(|&id| Some(id)))
        };
        let reused = self.kept().get_mut(&ns_id).and_then(|k| {
            let young = k.read_at.elapsed() < self.max_age;
            let mut table = k.table.take_if(|t| young && same(t))?;
            // Only these overlays carry a signature: each is signed for this scan's.
            for (i, upper) in &k.upperdirs {
                table.mounts[*i].layer_signature =
                    crate::engine::mountinfo::signature_of(upper, signatures);
            }
            Some(table)
        });
        if let Some(table) = reused {
            return Ok((table, true));
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
            },
        );
        Ok((table, false))
    }

    /// Takes the tables of a finished scan back (strings it read included), and forgets
    /// namespaces the scan did not lend a table to (gone, or unreadable now).
    pub fn keep(&self, tables: impl IntoIterator<Item = MountTable>) {
        let mut kept = self.kept();
        let mut returned = std::collections::HashSet::new();
        for mut table in tables {
            if let Some((id, k)) = table.ns_id.and_then(|id| Some((id, kept.get_mut(&id)?))) {
                table.shrink_to_fit();
                k.table = Some(table);
                returned.insert(id);
            }
        }
        // Namespaces gone since, and tables lent to a scan that never gave them back.
        kept.retain(|id, _| returned.contains(id));
    }

    /// Starts a scan: forgets tables lent to a scan that ended without giving them back
    /// (it failed, or was skipped).
    pub fn begin(&self) {
        self.kept().retain(|_, k| k.table.is_some());
    }
}
