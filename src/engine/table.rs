//! One mount namespace's mount table, as either scan backend reads it.
//!
//! Strings live in one arena per table (one allocation per namespace instead of four per
//! mount): on a node with hundreds of namespaces of thousands of mounts each, the text
//! backend must cost little more than the kernel's own formatting of mountinfo. Tables
//! kept between scans move their strings into one [`StringPool`] they share: every
//! namespace copied from the node has the node's mount points, roots and sources, so
//! without it a 600,000-mount node keeps each string hundreds of times.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::ops::Range;
use std::sync::Arc;

/// Hashes a mount id as itself: ids are small, distinct integers, so SipHash's protection
/// buys nothing here and costs most of an index build on a 600,000-mount node.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Spread the bits a little so that hashbrown's top-bit tags differ.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by mount id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A set of mount ids.
pub type IdSet = std::collections::HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Up to this many lookups by id in one table, each is a pass of compares over it: cheaper
/// than an [`IdMap`] or [`IdSet`] of every mount (most namespaces of a node hold one copy).
pub(crate) const PASSES_UP_TO: usize = 16;

/// A byte range in a [`MountTable`]'s string arena, or (with its high bit set in both
/// ends) in the [`StringPool`] the table shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    const SHARED: u32 = 1 << 31;

    fn range(self) -> Range<usize> {
        (self.start & !Self::SHARED) as usize..(self.end & !Self::SHARED) as usize
    }

    fn is_shared(self) -> bool {
        self.start & Self::SHARED != 0
    }
}

/// Offsets in an arena or a pool: below [`Span::SHARED`], which marks the pool's.
fn offset(len: usize) -> u32 {
    assert!(
        len < Span::SHARED as usize,
        "a mount table's strings exceed 2 GiB"
    );
    len as u32
}

/// One mount as seen in one namespace. Ids are the mountinfo ids (unique among live
/// mounts, reused after unmount); `unique_id` is the never-reused 64-bit id when the
/// listmount backend read the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent_id: u64,
    pub unique_id: Option<NonZeroU64>,
    /// Device of the superblock (`major:minor` in mountinfo): shared by every copy.
    pub dev: (u32, u32),
    /// Peer group when the mount is shared (`shared:N`).
    pub peer_group: Option<NonZeroU64>,
    /// Peer group it receives propagation from when it is a slave (`master:N`).
    pub master: Option<NonZeroU64>,
    pub root: Span,
    pub mount_point: Span,
    pub fs_type: Span,
    pub source: Span,
    /// Whether the strings (root, mount point, fs type, source) have been read. The
    /// listmount backend reads them only for mounts that can matter ([`crate::engine::source`]).
    pub has_strings: bool,
    /// Whether the root within its filesystem has been read (all the strings, or only
    /// the root: what identity matching needs of every mount of a seed's device).
    pub has_root: bool,
    /// For an overlay whose `upperdir` is one of the scan's layer signatures: which one.
    pub layer_signature: Option<u32>,
}

// The agent keeps one per mount of the node (600,000 on a busy one): 120 bytes before the
// ids that cannot be 0 were made `NonZeroU64`.
const _: () = assert!(std::mem::size_of::<Mount>() <= 96);

/// The mounts of one namespace, in the order the kernel listed them (parents before
/// children), with decoded (unescaped) strings.
#[derive(Debug, Default, Clone)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
    arena: Vec<u8>,
    /// The pool's strings, once the table was kept ([`StringPool::share`]).
    shared: Arc<[u8]>,
    /// Which build of the pool `shared` is: offsets hold only within one build.
    pool_build: Option<u64>,
    /// The namespace's 64-bit id, when read through listmount (needed to read strings later).
    pub(crate) ns_id: Option<u64>,
    /// Only the mounts at or below the targets and their ancestors were read
    /// (`--paths-only` with listmount): peers elsewhere in the tree are unknown.
    pub partial: bool,
    /// Mount points kept aside while the table is lent to a scan that reads them again
    /// ([`MountTable::set_aside_mount_points`]); empty otherwise.
    set_aside: Vec<Span>,
}

impl MountTable {
    pub fn with_capacity(mounts: usize, bytes: usize) -> Self {
        MountTable {
            mounts: Vec::with_capacity(mounts),
            arena: Vec::with_capacity(bytes),
            shared: Arc::default(),
            pool_build: None,
            ns_id: None,
            partial: false,
            set_aside: Vec::new(),
        }
    }

    /// For one scan that must read mount points again (a kept one can be stale): every
    /// mount's strings but its root are forgotten, so that the scan reads those it looks
    /// at, and the mount points are emptied, so that nothing can use a stale one. They
    /// are kept aside for [`MountTable::put_back_set_aside`].
    pub(crate) fn set_aside_mount_points(&mut self) {
        self.set_aside = self
            .mounts
            .iter()
            .map(|m| match m.has_strings {
                true => m.mount_point,
                false => Span::default(),
            })
            .collect();
        for m in &mut self.mounts {
            m.has_strings = false;
            m.mount_point = Span::default();
        }
    }

    /// Whether the table's mount points are the kernel's as of this scan: read by it, or
    /// lent with the kept ones set aside (a table with no mounts has none to be stale).
    pub fn mount_points_fresh(&self) -> bool {
        self.mounts.is_empty() || !self.set_aside.is_empty()
    }

    /// Puts back the mount points set aside where the scan read none: the table is kept
    /// as it was lent, plus what the scan read again.
    pub(crate) fn put_back_set_aside(&mut self) {
        let set_aside = std::mem::take(&mut self.set_aside);
        for (m, point) in self.mounts.iter_mut().zip(set_aside) {
            if !m.has_strings && point != Span::default() {
                m.mount_point = point;
                m.has_strings = true;
            }
        }
    }

    /// The position of the mount with 64-bit id `unique`, for a table in listmount's
    /// ascending order (one read by listmount, or kept from one).
    pub fn position_of_unique(&self, unique: u64) -> Option<usize> {
        self.mounts
            .binary_search_by_key(&Some(unique), |m| m.unique_id.map(NonZeroU64::get))
            .ok()
    }

    /// Appends `bytes` to the arena and returns its span.
    pub(crate) fn intern(&mut self, bytes: &[u8]) -> Span {
        self.intern_with(|arena| arena.extend_from_slice(bytes))
    }

    /// Appends what `write` writes to the arena and returns its span (a parser decoding
    /// a field in place, with no copy of its own).
    pub(crate) fn intern_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Span {
        let start = offset(self.arena.len());
        write(&mut self.arena);
        Span {
            start,
            end: offset(self.arena.len()),
        }
    }

    /// Gives back what the table's vectors hold beyond their length (a table kept between
    /// scans keeps only what it uses).
    pub fn shrink_to_fit(&mut self) {
        self.mounts.shrink_to_fit();
        self.arena.shrink_to_fit();
    }

    /// The heap the table takes (its mounts and the strings of its own; not the pool's).
    pub fn heap_bytes(&self) -> usize {
        self.mounts.capacity() * std::mem::size_of::<Mount>() + self.arena.capacity()
    }

    pub fn str(&self, span: Span) -> &[u8] {
        if span.is_shared() {
            &self.shared[span.range()]
        } else {
            &self.arena[span.range()]
        }
    }

    pub fn mount_point<'a>(&'a self, m: &Mount) -> &'a [u8] {
        self.str(m.mount_point)
    }

    pub fn root<'a>(&'a self, m: &Mount) -> &'a [u8] {
        self.str(m.root)
    }

    /// Index of every mount by id.
    pub fn index(&self) -> IdMap<usize> {
        self.mounts
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, i))
            .collect()
    }

    /// The namespace's root mount: the one whose parent is not in the table.
    pub fn root_mount(&self, index: &IdMap<usize>) -> Option<usize> {
        self.mounts
            .iter()
            .position(|m| m.parent_id == m.id || !index.contains_key(&m.parent_id))
    }

    /// [`Self::root_mount`] without an index: the kernel lists a namespace's root mount
    /// first, so one pass of id compares settles it; any other order falls back to the
    /// index (a scan asks this of every namespace, and building an index of each costs
    /// more than the rest of an unchanged sweep's matching).
    pub fn root_position(&self) -> Option<usize> {
        let first = self.mounts.first()?;
        if first.parent_id == first.id || !self.mounts.iter().any(|m| m.id == first.parent_id) {
            return Some(0);
        }
        self.root_mount(&self.index())
    }

    /// A table of (id, parent id) pairs, every string "/" (tests of tree walks).
    #[cfg(test)]
    pub(crate) fn tree_of(pairs: &[(u64, u64)]) -> MountTable {
        let mut t = MountTable::default();
        for &(id, parent_id) in pairs {
            let s = t.intern(b"/");
            t.mounts.push(Mount {
                id,
                parent_id,
                unique_id: None,
                dev: (0, 0),
                peer_group: None,
                master: None,
                root: s,
                mount_point: s,
                fs_type: s,
                source: s,
                has_strings: true,
                has_root: true,
                layer_signature: None,
            });
        }
        t
    }

    /// Depth of mount `i` in the tree (the root mount is 0).
    pub fn depth(&self, index: &IdMap<usize>, i: usize) -> u32 {
        self.depth_by(|id| index.get(&id).copied(), i)
    }

    /// [`Self::depth`], positions found by `position_of` (an id's position in the table).
    pub fn depth_by(&self, position_of: impl Fn(u64) -> Option<usize>, i: usize) -> u32 {
        let mut depth = 0;
        let mut at = i;
        // Bounded by the table size, in case of a (corrupt) cycle.
        while let Some(p) = position_of(self.mounts[at].parent_id) {
            if p == at || depth as usize >= self.mounts.len() {
                break;
            }
            depth += 1;
            at = p;
        }
        depth
    }
}

/// The strings of kept tables, each once, shared by every table that has it. Append-only:
/// a table that points at an older pool finds its strings at the same offsets in a newer
/// one. Strings of tables no longer kept stay until the pool has doubled since it was last
/// built, when it is built again from the tables kept then.
#[derive(Debug)]
pub struct StringPool {
    bytes: Arc<[u8]>,
    /// Strings added since `bytes` was published.
    added: Vec<u8>,
    /// Where each string is: its offset in the pool.
    at: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    /// The pool's size when it was last built from scratch.
    built_at: usize,
    /// How many times it was built from scratch.
    build: u64,
    /// The size its offsets can address (below [`Span::SHARED`]; smaller in tests).
    limit: usize,
}

impl Default for StringPool {
    fn default() -> Self {
        StringPool {
            bytes: Arc::default(),
            added: Vec::new(),
            at: HashMap::default(),
            built_at: 0,
            build: 0,
            limit: Span::SHARED as usize,
        }
    }
}

impl StringPool {
    /// An empty pool whose build follows this one's: every table that points into this
    /// one is read again from where it points (after a panic left this one half-built).
    pub fn restart(&mut self) {
        *self = self.next_build();
    }

    /// An empty pool of the next build, with this one's limit.
    fn next_build(&self) -> StringPool {
        StringPool {
            build: self.build + 1,
            limit: self.limit,
            ..StringPool::default()
        }
    }

    /// The pool's size in bytes, roughly: its strings twice (the pool and the index's
    /// keys), and per slot of the index a boxed key and offset, a control byte and the
    /// key's allocation header.
    pub fn heap_bytes(&self) -> usize {
        2 * (self.bytes.len() + self.added.capacity()) + self.at.capacity() * (24 + 1 + 16)
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.added.len()
    }

    #[cfg(test)]
    pub(crate) fn build(&self) -> u64 {
        self.build
    }

    /// Moves `table`'s own strings into the pool; the table keeps only its mounts. Call
    /// [`StringPool::publish`] once the tables of a scan are shared. False, with the table
    /// untouched, when its strings could take the pool past what its offsets address: the
    /// caller keeps no such table (its namespace is read again), rather than fail.
    #[must_use]
    pub fn share(&mut self, table: &mut MountTable) -> bool {
        // A table that points into an earlier build (one lent out while the pool was built
        // again) reads its strings there and takes them all again.
        let stale = table.pool_build.is_some_and(|b| b != self.build);
        // A table with no strings of its own points only into the pool (or at nothing).
        if !stale && table.arena.is_empty() {
            return true;
        }
        if !self.fits(table, stale) {
            return false;
        }
        self.respan(table, stale);
        true
    }

    /// Whether the strings `respan` would move fit, counting each as new (an upper bound).
    fn fits(&self, table: &MountTable, all: bool) -> bool {
        let moved: usize = (table.mounts.iter())
            .flat_map(|m| [m.root, m.mount_point, m.fs_type, m.source])
            .filter(|span| all || !span.is_shared())
            .map(|span| span.range().len())
            .sum();
        self.len().saturating_add(moved) < self.limit
    }

    /// Points `table`'s spans (its own strings', and with `all` the pool's too) into this
    /// pool, adding the strings it lacks.
    fn respan(&mut self, table: &mut MountTable, all: bool) {
        let mut mounts = std::mem::take(&mut table.mounts);
        for m in &mut mounts {
            for span in [
                &mut m.root,
                &mut m.mount_point,
                &mut m.fs_type,
                &mut m.source,
            ] {
                if span.start == span.end {
                    // Empty, or never read: the same in any arena.
                    *span = Span::default();
                } else if all || !span.is_shared() {
                    *span = self.span_of(table.str(*span));
                }
            }
        }
        table.mounts = mounts;
        table.arena = Vec::new();
    }

    fn span_of(&mut self, bytes: &[u8]) -> Span {
        let start = match self.at.get(bytes) {
            Some(&start) => start,
            None => {
                let start = offset(self.len());
                self.added.extend_from_slice(bytes);
                // `fits` was asked first: a pool past its reach is a bug here, not input.
                assert!(self.len() < self.limit, "the string pool passed its limit");
                self.at.insert(bytes.into(), start);
                start
            }
        };
        Span {
            start: start | Span::SHARED,
            end: (start + bytes.len() as u32) | Span::SHARED,
        }
    }

    /// Makes the strings shared since the last call readable through `tables`: every table
    /// kept, so that none holds on to an older copy of the pool.
    pub fn publish<'a>(&mut self, tables: impl Iterator<Item = &'a mut MountTable>) {
        if !self.added.is_empty() {
            let mut bytes = Vec::with_capacity(self.len());
            bytes.extend_from_slice(&self.bytes);
            bytes.append(&mut self.added);
            self.bytes = bytes.into();
            self.added = Vec::new();
        }
        for t in tables {
            t.shared = self.bytes.clone();
            t.pool_build = Some(self.build);
        }
    }

    /// Builds the pool again from `tables` (every table kept) once it has doubled since it
    /// was last built, so that the strings of namespaces gone do not accumulate; then
    /// publishes to them.
    pub fn compact_and_publish(&mut self, mut tables: Vec<&mut MountTable>) {
        // Every span must be readable through its table before it is read again.
        self.publish(tables.iter_mut().map(|t| &mut **t));
        // Doubling, or halfway to the limit where doubling would pass it (else a pool
        // built at over half its limit would never be built again, and fill up).
        let threshold = (2 * self.built_at + (1 << 20))
            .min(self.built_at + self.limit.saturating_sub(self.built_at) / 2);
        if self.len() > threshold {
            let mut fresh = self.next_build();
            // A table whose strings might not fit keeps reading the build it points into,
            // stale: the next `share` takes them again, or refuses it.
            tables.retain_mut(|t| {
                let fits = fresh.fits(t, true);
                if fits {
                    fresh.respan(t, true);
                }
                fits
            });
            fresh.built_at = fresh.len();
            *self = fresh;
            self.publish(tables.into_iter());
        }
    }
}

/// True when `path` is `prefix` or lies below it, comparing whole components
/// (`/a/b` is under `/a`, `/ab` is not).
pub fn path_is_under(path: &[u8], prefix: &[u8]) -> bool {
    let prefix = if prefix.len() > 1 && prefix.ends_with(b"/") {
        &prefix[..prefix.len() - 1]
    } else {
        prefix
    };
    if prefix == b"/" {
        return path.starts_with(b"/");
    }
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// True when `path` lies at or below a path that `pattern` describes, where a `*`
/// component stands for any one component (`/k/pods/*/volume-subpaths`).
pub fn path_is_under_pattern(path: &[u8], pattern: &[u8]) -> bool {
    let mut parts = path.split(|&b| b == b'/').filter(|c| !c.is_empty());
    path.starts_with(b"/")
        && pattern
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .all(|want| parts.next().is_some_and(|got| want == b"*" || want == got))
}

#[cfg(test)]
mod tests;
