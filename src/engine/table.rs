//! One mount namespace's mount table, as either scan backend reads it.
//!
//! Strings live in one arena per table (one allocation per namespace instead of four per
//! mount): on a node with hundreds of namespaces of thousands of mounts each, the text
//! backend must cost little more than the kernel's own formatting of mountinfo.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

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

/// A byte range in a [`MountTable`]'s string arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One mount as seen in one namespace. Ids are the mountinfo ids (unique among live
/// mounts, reused after unmount); `unique_id` is the never-reused 64-bit id when the
/// listmount backend read the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent_id: u64,
    pub unique_id: Option<u64>,
    /// Device of the superblock (`major:minor` in mountinfo): shared by every copy.
    pub dev: (u32, u32),
    /// Peer group when the mount is shared (`shared:N`).
    pub peer_group: Option<u64>,
    /// Peer group it receives propagation from when it is a slave (`master:N`).
    pub master: Option<u64>,
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

/// The mounts of one namespace, in the order the kernel listed them (parents before
/// children), with decoded (unescaped) strings.
#[derive(Debug, Default, Clone)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
    arena: Vec<u8>,
    /// The namespace's 64-bit id, when read through listmount (needed to read strings later).
    pub(crate) ns_id: Option<u64>,
    /// Only the mounts at or below the targets and their ancestors were read
    /// (`--paths-only` with listmount): peers elsewhere in the tree are unknown.
    pub partial: bool,
}

impl MountTable {
    pub fn with_capacity(mounts: usize, bytes: usize) -> Self {
        MountTable {
            mounts: Vec::with_capacity(mounts),
            arena: Vec::with_capacity(bytes),
            ns_id: None,
            partial: false,
        }
    }

    /// Appends `bytes` to the arena and returns its span.
    pub(crate) fn intern(&mut self, bytes: &[u8]) -> Span {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        Span {
            start,
            end: self.arena.len() as u32,
        }
    }

    /// Appends what `write` writes to the arena and returns its span (a parser decoding
    /// a field in place, with no copy of its own).
    pub(crate) fn intern_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Span {
        let start = self.arena.len() as u32;
        write(&mut self.arena);
        Span {
            start,
            end: self.arena.len() as u32,
        }
    }

    /// Gives back what the table's vectors hold beyond their length (a table kept between
    /// scans keeps only what it uses).
    pub fn shrink_to_fit(&mut self) {
        self.mounts.shrink_to_fit();
        self.arena.shrink_to_fit();
    }

    /// The heap the table takes (its mounts and its strings).
    pub fn heap_bytes(&self) -> usize {
        self.mounts.capacity() * std::mem::size_of::<Mount>() + self.arena.capacity()
    }

    pub fn str(&self, span: Span) -> &[u8] {
        &self.arena[span.range()]
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

    /// Depth of mount `i` in the tree (the root mount is 0).
    pub fn depth(&self, index: &IdMap<usize>, i: usize) -> u32 {
        let mut depth = 0;
        let mut at = i;
        // Bounded by the table size, in case of a (corrupt) cycle.
        while let Some(&p) = index.get(&self.mounts[at].parent_id) {
            if p == at || depth as usize >= self.mounts.len() {
                break;
            }
            depth += 1;
            at = p;
        }
        depth
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
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_components_with_one_component_wildcards() {
        let p = b"/k/pods/*/volume-subpaths";
        assert!(path_is_under_pattern(b"/k/pods/u1/volume-subpaths", p));
        assert!(path_is_under_pattern(
            b"/k/pods/u1/volume-subpaths/v/c/0",
            p
        ));
        assert!(!path_is_under_pattern(b"/k/pods/u1/volumes/x", p));
        assert!(!path_is_under_pattern(b"/k/pods/u1", p));
        assert!(!path_is_under_pattern(b"/k/pods/u1/volume-subpaths2/x", p));
        assert!(!path_is_under_pattern(b"/k/pods/volume-subpaths", p));
        assert!(!path_is_under_pattern(b"k/pods/u1/volume-subpaths", p));
        assert!(path_is_under_pattern(b"/k/x", b"/k"));
    }

    #[test]
    fn under_compares_whole_components() {
        assert!(path_is_under(b"/var/lib/docker/x", b"/var/lib/docker"));
        assert!(path_is_under(b"/var/lib/docker", b"/var/lib/docker"));
        assert!(path_is_under(b"/var/lib/docker", b"/var/lib/docker/"));
        assert!(!path_is_under(b"/var/lib/docker-init", b"/var/lib/docker"));
        assert!(!path_is_under(
            b"/var/lib/docker0/merged",
            b"/var/lib/docker"
        ));
        assert!(!path_is_under(b"/var/lib", b"/var/lib/docker"));
        assert!(path_is_under(b"/x", b"/"));
    }

    #[test]
    fn depth_follows_parents() {
        let mut t = MountTable::default();
        for (id, parent) in [(1, 0), (2, 1), (3, 2), (4, 1), (5, 3)] {
            let s = t.intern(b"/");
            t.mounts.push(Mount {
                id,
                parent_id: parent,
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
        let idx = t.index();
        let depths: Vec<u32> = (0..5).map(|i| t.depth(&idx, i)).collect();
        assert_eq!(depths, vec![0, 1, 2, 1, 3]);
        assert_eq!(t.root_mount(&idx), Some(0));
    }
}
