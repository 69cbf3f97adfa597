//! Reading every namespace's mount table: `listmount(2)`/`statmount(2)` where the kernel has
//! them (6.10+ for foreign namespaces), `/proc/thread-self/mountinfo` after `setns`
//! otherwise. Both give each namespace's mounts as seen from that namespace's root, with
//! mountinfo ids, so the rest of mntreap cannot tell them apart (a test checks that).

use std::collections::HashMap;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::str::FromStr;

use crate::engine::namespace::Namespace;
use crate::engine::nsexec::NsWorker;
use crate::engine::sys;
use crate::engine::table::{IdMap, IdSet, Mount, MountTable, Span, path_is_under};

mod lookup;
pub(crate) use lookup::still_nothing_below;
use lookup::{bare_mount, nothing_mounted_below, probe};

/// Which way mount tables are read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// listmount/statmount: no text formatting, 64-bit never-reused mount ids.
    Listmount,
    /// One read of mountinfo per namespace: works on every kernel (CentOS 7's 3.10 too).
    Mountinfo,
}

/// The backend choice a user makes: a backend, or the best the kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Listmount,
    Mountinfo,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// A namespace's table could not be read (the namespace is then reported, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("mount namespace {inode}: {op}: {source}")]
    Io {
        inode: u64,
        op: &'static str,
        source: io::Error,
    },
    #[error("mount namespace {inode}: {source}")]
    Parse {
        inode: u64,
        source: crate::engine::mountinfo::ParseError,
    },
    #[error(transparent)]
    Enter(#[from] crate::engine::nsexec::NsError),
}

impl SourceError {
    /// The namespace exists but may not be read by this process (no `CAP_SYS_CHROOT` for
    /// `setns`, a seccomp or LSM denial): unlike one that vanished, a gap in the result.
    pub fn denied(&self) -> bool {
        use nix::errno::Errno;
        match self {
            SourceError::Io { source, .. } => source.kind() == io::ErrorKind::PermissionDenied,
            SourceError::Enter(crate::engine::nsexec::NsError::Enter { source, .. }) => {
                matches!(source, Errno::EPERM | Errno::EACCES)
            }
            _ => false,
        }
    }
}

impl BackendChoice {
    /// Resolves `Auto` by probing the kernel on our own namespace.
    pub fn resolve(self, any_ns: std::os::fd::BorrowedFd<'_>) -> Backend {
        match self {
            BackendChoice::Listmount => Backend::Listmount,
            BackendChoice::Mountinfo => Backend::Mountinfo,
            BackendChoice::Auto => {
                let works = sys::mntns_id(any_ns).and_then(sys::listmount_all).is_ok();
                if works {
                    Backend::Listmount
                } else {
                    Backend::Mountinfo
                }
            }
        }
    }
}

/// statmount mask for the fields every mount needs: ids, parent, device, propagation.
const BASIC_MASK: u64 = sys::STATMOUNT_SB_BASIC | sys::STATMOUNT_MNT_BASIC;
/// statmount mask for the strings, read only for mounts that can matter.
const STRINGS_MASK: u64 = sys::STATMOUNT_MNT_ROOT
    | sys::STATMOUNT_MNT_POINT
    | sys::STATMOUNT_FS_TYPE
    | sys::STATMOUNT_SB_SOURCE;

/// Reads one namespace's table with `backend`. The listmount backend reads the basic
/// fields of every mount and no strings; see [`hydrate`].
pub fn read_table(
    backend: Backend,
    worker: &mut NsWorker,
    ns: &Namespace,
    signatures: &[Vec<u8>],
) -> Result<MountTable, SourceError> {
    match backend {
        Backend::Mountinfo => {
            worker.enter(ns.fd.as_fd(), ns.inode)?;
            let text = worker.read_mountinfo().map_err(|source| SourceError::Io {
                inode: ns.inode,
                op: "reading mountinfo",
                source,
            })?;
            crate::engine::mountinfo::parse_with_signatures(text, signatures).map_err(|source| {
                SourceError::Parse {
                    inode: ns.inode,
                    source,
                }
            })
        }
        Backend::Listmount => read_listmount(ns, signatures),
    }
}

fn io_err(inode: u64, op: &'static str) -> impl Fn(io::Error) -> SourceError {
    move |source| SourceError::Io { inode, op, source }
}

fn read_listmount(ns: &Namespace, signatures: &[Vec<u8>]) -> Result<MountTable, SourceError> {
    let ns_id = sys::mntns_id(ns.fd.as_fd()).map_err(io_err(ns.inode, "NS_GET_MNTNS_ID"))?;
    let ids = sys::listmount_all(ns_id).map_err(io_err(ns.inode, "listmount"))?;
    let (table, _) = read_listmount_ids(ns, ns_id, &ids, signatures, false)?;
    Ok(table)
}

/// Each overlay's `upperdir`, by index in its table.
pub(crate) type Upperdirs = Vec<(usize, Vec<u8>)>;

/// Reads the basic fields of the mounts `ids` (one `listmount` of `ns`). With
/// `all_upperdirs`, also returns every overlay's `upperdir` by index (what
/// [`crate::engine::index`] re-signs kept tables with); else only overlays are read that
/// may match one of `signatures`.
pub(crate) fn read_listmount_ids(
    ns: &Namespace,
    ns_id: u64,
    ids: &[u64],
    signatures: &[Vec<u8>],
    all_upperdirs: bool,
) -> Result<(MountTable, Upperdirs), SourceError> {
    let mut table = MountTable::with_capacity(ids.len(), 0);
    table.ns_id = Some(ns_id);
    let mut upperdirs = Vec::new();
    let mut buf = sys::StatmountBuf::new();
    for &id in ids {
        let sm = match sys::statmount(ns_id, id, BASIC_MASK, &mut buf) {
            Ok(sm) => sm,
            // Unmounted since listmount listed it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(io_err(ns.inode, "statmount")(e)),
        };
        let none = Span::default();
        let mut m = basic_mount(&sm, none, none, none, none, false);
        // Only overlays can carry a layer signature: their options are worth a second call.
        if (all_upperdirs || !signatures.is_empty()) && sm.sb_magic == sys::OVERLAYFS_SUPER_MAGIC {
            let upper = sys::statmount(ns_id, id, sys::STATMOUNT_MNT_OPTS, &mut buf)
                .ok()
                .and_then(|o| o.options)
                .and_then(|o| crate::engine::mountinfo::upperdir(&o));
            if let Some(upper) = upper {
                m.layer_signature = crate::engine::mountinfo::signature_of(&upper, signatures);
                if all_upperdirs {
                    upperdirs.push((table.mounts.len(), upper));
                }
            }
        }
        table.mounts.push(m);
    }
    Ok((table, upperdirs))
}

/// The mounts at or below the targets in one namespace (indices into its table), and of
/// them the mounts whose root a lookup of a target reached and found with nothing mounted
/// below it (no directory, or an empty one of a tmpfs or ramfs, whose listing is the
/// dentry cache): the kernel's answer during this scan, which a plan from kept tables may
/// rest on instead of listing below the mount again.
#[derive(Debug, Default)]
pub struct TargetMounts {
    pub seeds: Vec<usize>,
    pub bare: Vec<NonZeroU64>,
}

/// `--paths-only` with listmount: reads only the mounts at or below `targets` in `ns`, and
/// their ancestors up to the namespace's root (so that the root, and whether a process's
/// root or cwd lies in a holder, are still known), instead of every mount. Returns the
/// partial table and the mounts under the targets. A namespace of another user namespace
/// is read whole and filtered by its strings instead, never walked: its owner may have
/// mounted a FUSE filesystem on a target's path, and a lookup there waits on that daemon
/// for as long as it likes.
pub fn read_targeted(
    worker: &mut NsWorker,
    ns: &Namespace,
    targets: &[Vec<u8>],
) -> Result<(MountTable, TargetMounts), SourceError> {
    if !ns.host_userns {
        let mut table = read_listmount(ns, &[])?;
        let found = mounts_under(worker, ns, &mut table, targets)?;
        return Ok((table, found));
    }
    let ns_id = sys::mntns_id(ns.fd.as_fd()).map_err(io_err(ns.inode, "NS_GET_MNTNS_ID"))?;
    worker.enter(ns.fd.as_fd(), ns.inode)?;
    let mut wanted: Vec<u64> = Vec::new();
    let mut bare = Vec::new();
    let mut buf = sys::StatmountBuf::new();
    let mut loaded: HashMap<u64, sys::Statmount> = HashMap::new();
    let full = BASIC_MASK | STRINGS_MASK;
    for target in targets {
        let Some((fd, found)) = probe(target) else {
            continue;
        };
        let Ok(Some(unique)) = sys::statx_unique_mnt_id(fd.as_fd()) else {
            continue;
        };
        // The found mount and its ancestors.
        let mut at = unique;
        while !loaded.contains_key(&at) {
            let Ok(sm) = sys::statmount(ns_id, at, full, &mut buf) else {
                break;
            };
            let parent = sm.parent_id;
            // The namespace's "/" is the top: above it is only the hidden rootfs mount,
            // which listings of the whole namespace do not show either.
            let is_top = sm.mount_point.as_deref() == Some(b"/");
            loaded.insert(at, sm);
            if parent == at || is_top {
                break;
            }
            at = parent;
        }
        let magic = loaded.get(&unique).map(|sm| sm.sb_magic);
        match magic.is_some_and(|m| nothing_mounted_below(fd.as_fd(), found.is_dir, m)) {
            true if found.known_mount_root() => bare.extend(NonZeroU64::new(unique)),
            true => {}
            false => wanted.extend(sys::listmount_below(ns_id, unique).unwrap_or_default()),
        }
    }
    for id in wanted {
        if let std::collections::hash_map::Entry::Vacant(e) = loaded.entry(id)
            && let Ok(sm) = sys::statmount(ns_id, id, full, &mut buf)
        {
            e.insert(sm);
        }
    }
    let mut sorted: Vec<sys::Statmount> = loaded.into_values().collect();
    sorted.sort_by_key(|sm| sm.mnt_id);
    let mut table = MountTable::with_capacity(sorted.len(), sorted.len() * 96);
    table.ns_id = Some(ns_id);
    table.partial = true;
    for sm in sorted {
        let root = table.intern(sm.root.as_deref().unwrap_or_default());
        let mount_point = table.intern(sm.mount_point.as_deref().unwrap_or_default());
        let fs_type = table.intern(sm.fs_type.as_deref().unwrap_or_default());
        let source = table.intern(sm.source.as_deref().unwrap_or(b"none"));
        table
            .mounts
            .push(basic_mount(&sm, root, mount_point, fs_type, source, true));
    }
    let seeds = (0..table.mounts.len())
        .filter(|&i| {
            let m = &table.mounts[i];
            targets
                .iter()
                .any(|p| path_is_under(table.mount_point(m), p))
        })
        .collect();
    Ok((table, TargetMounts { seeds, bare }))
}

fn basic_mount(
    sm: &sys::Statmount,
    root: Span,
    mount_point: Span,
    fs_type: Span,
    source: Span,
    has_strings: bool,
) -> Mount {
    Mount {
        layer_signature: None,
        id: u64::from(sm.mnt_id_old),
        parent_id: u64::from(sm.parent_id_old),
        unique_id: NonZeroU64::new(sm.mnt_id),
        dev: sm.dev,
        peer_group: NonZeroU64::new(sm.peer_group).filter(|_| sm.propagation & sys::MS_SHARED != 0),
        master: NonZeroU64::new(sm.master),
        root,
        mount_point,
        fs_type,
        source,
        has_strings,
        has_root: has_strings,
    }
}

/// Reads the strings of the mounts at `indices` (listmount tables; a no-op for mountinfo
/// tables, which have them all). A mount that has been unmounted since keeps none, and
/// so matches no path.
pub fn hydrate(table: &mut MountTable, indices: impl IntoIterator<Item = usize>) {
    let Some(ns_id) = table.ns_id else {
        return;
    };
    let mut buf = sys::StatmountBuf::new();
    for i in indices {
        let m = table.mounts[i];
        let Some(unique) = m.unique_id.filter(|_| !m.has_strings).map(NonZeroU64::get) else {
            continue;
        };
        let Ok(sm) = sys::statmount(ns_id, unique, STRINGS_MASK, &mut buf) else {
            continue;
        };
        let root = table.intern(sm.root.as_deref().unwrap_or_default());
        let mount_point = table.intern(sm.mount_point.as_deref().unwrap_or_default());
        let fs_type = table.intern(sm.fs_type.as_deref().unwrap_or_default());
        let source = table.intern(sm.source.as_deref().unwrap_or(b"none"));
        let m = &mut table.mounts[i];
        (m.root, m.mount_point, m.fs_type, m.source) = (root, mount_point, fs_type, source);
        m.has_strings = true;
        m.has_root = true;
    }
}

/// Reads only the root within its filesystem of the mounts at `indices` (listmount tables;
/// a no-op for mountinfo tables): what identity matching needs of every mount of a
/// seed's device, at a third of the cost of all the strings.
pub fn hydrate_roots(table: &mut MountTable, indices: impl IntoIterator<Item = usize>) {
    let Some(ns_id) = table.ns_id else {
        return;
    };
    let mut buf = None;
    for i in indices {
        let m = table.mounts[i];
        let Some(unique) = m.unique_id.filter(|_| !m.has_root).map(NonZeroU64::get) else {
            continue;
        };
        let buf = buf.get_or_insert_with(sys::StatmountBuf::new);
        let Ok(sm) = sys::statmount(ns_id, unique, sys::STATMOUNT_MNT_ROOT, buf) else {
            continue;
        };
        let root = table.intern(sm.root.as_deref().unwrap_or_default());
        let m = &mut table.mounts[i];
        m.root = root;
        m.has_root = true;
    }
}

/// Indices of the mounts at or below any of `targets` in `ns`, strings read.
///
/// mountinfo tables are filtered by their strings. For listmount tables that would mean
/// reading every mount's strings, so the worker enters the namespace and looks each target
/// up (`openat2` without symlinks, `statx`): a target that is a mount root gives the
/// mounts stacked there and everything below them; a target inside a mount gives that
/// mount's children below it, unless nothing can be mounted below the target (see
/// [`TargetMounts`]). The result is then checked against the strings, so it is never
/// more than the text backend finds; it can miss only mounts hidden under another mount,
/// which nothing could unmount by path anyway. Namespaces of other user namespaces are
/// never walked (their owner can put a FUSE daemon on any path there): their strings are
/// read and filtered, as the text backend does.
pub fn mounts_under(
    worker: &mut NsWorker,
    ns: &Namespace,
    table: &mut MountTable,
    targets: &[Vec<u8>],
) -> Result<TargetMounts, SourceError> {
    let under = |t: &MountTable, i: usize| {
        let m = &t.mounts[i];
        m.has_strings && targets.iter().any(|p| path_is_under(t.mount_point(m), p))
    };
    // A namespace of another user namespace is filtered by its strings too, never walked:
    // its owner may have mounted a FUSE filesystem on a target's path, and a lookup there
    // waits on that daemon, for as long as it likes.
    let Some(ns_id) = table.ns_id.filter(|_| ns.host_userns) else {
        hydrate(table, 0..table.mounts.len());
        let seeds = (0..table.mounts.len())
            .filter(|&i| under(table, i))
            .collect();
        return Ok(TargetMounts {
            seeds,
            bare: Vec::new(),
        });
    };
    worker.enter(ns.fd.as_fd(), ns.inode)?;
    let mut bare = Vec::new();
    let mut buf = None;
    // No id map or children map of the table: a sweep asks this of every namespace of the
    // node, and building both cost more than the probes. Lookups below are passes over
    // the table, a few per target.
    let mut candidates: Vec<usize> = Vec::new();
    for target in targets {
        let Some((fd, found)) = probe(target) else {
            continue;
        };
        let Some(at) = found.mnt_id.and_then(|id| position_of(table, id)) else {
            continue;
        };
        let buf = buf.get_or_insert_with(sys::StatmountBuf::new);
        let nothing_below = bare_mount(ns_id, fd.as_fd(), &found, buf);
        if found.is_mount_root() {
            bare.extend(nothing_below.flatten());
            // Walk down the stack at the target to its lowest mount, then take its subtree.
            let mut lowest = at;
            loop {
                hydrate(table, [lowest]);
                match position_of(table, table.mounts[lowest].parent_id) {
                    Some(p) if p != lowest => {
                        hydrate(table, [p]);
                        if table.mount_point(&table.mounts[p]) == target.as_slice() {
                            lowest = p;
                            continue;
                        }
                    }
                    _ => {}
                }
                break;
            }
            candidates.extend(subtree(table, &[lowest]));
        } else if nothing_below.is_none() {
            let id = table.mounts[at].id;
            let direct: Vec<usize> = (0..table.mounts.len())
                .filter(|&i| table.mounts[i].parent_id == id && table.mounts[i].id != id)
                .collect();
            hydrate(table, direct.iter().copied());
            let under_target: Vec<usize> =
                direct.into_iter().filter(|&c| under(table, c)).collect();
            candidates.extend(subtree(table, &under_target));
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    hydrate(table, candidates.iter().copied());
    let seeds = candidates
        .into_iter()
        .filter(|&i| under(table, i))
        .collect();
    Ok(TargetMounts { seeds, bare })
}

/// Where the mount with id `id` is in `table` (ids are distinct among the mounts one
/// listing gives).
fn position_of(table: &MountTable, id: u64) -> Option<usize> {
    table.mounts.iter().position(|m| m.id == id)
}

/// `roots` and every mount below them. The children map is built only here: most
/// namespaces of a sweep have no mount under a target and never get one.
pub(crate) fn subtree(table: &MountTable, roots: &[usize]) -> Vec<usize> {
    let mut out = roots.to_vec();
    if roots.is_empty() {
        return out;
    }
    let mut children: IdMap<Vec<usize>> = IdMap::default();
    for (i, m) in table.mounts.iter().enumerate() {
        if m.parent_id != m.id {
            children.entry(m.parent_id).or_default().push(i);
        }
    }
    // Each mount is taken once (the set), so a corrupted (cyclic) table ends too.
    let mut inside: IdSet = roots.iter().map(|&r| table.mounts[r].id).collect();
    let mut next = 0;
    while next < out.len() {
        let id = table.mounts[out[next]].id;
        for &c in children.get(&id).into_iter().flatten() {
            if inside.insert(table.mounts[c].id) {
                out.push(c);
            }
        }
        next += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn subtree_finds_children_listed_before_their_parents() {
        // id 1 is the root; 5 was mounted first and moved under 4, which sits on 2; 3 is
        // on 5. Indices: 0 (5), 1 (3), 2 (1), 3 (2), 4 (4), 5 (6).
        let t = MountTable::tree_of(&[(5, 4), (3, 5), (1, 1), (2, 1), (4, 2), (6, 1)]);
        assert_eq!(sorted(subtree(&t, &[3])), vec![0, 1, 3, 4]);
        assert_eq!(sorted(subtree(&t, &[4])), vec![0, 1, 4]);
        assert_eq!(sorted(subtree(&t, &[1])), vec![1]);
        assert_eq!(sorted(subtree(&t, &[1, 4])), vec![0, 1, 4]);
        assert_eq!(sorted(subtree(&t, &[2])), vec![0, 1, 2, 3, 4, 5]);
        assert!(subtree(&t, &[]).is_empty());
    }

    #[test]
    fn subtree_of_a_chain_of_moves_listed_backwards_is_whole() {
        // id 1 the root, then 1000 mounts each moved onto the one listed after it: every
        // child is listed before its parent.
        let n = 1000u64;
        let mut pairs: Vec<(u64, u64)> = (2..=n + 1).map(|id| (id, id + 1)).collect();
        pairs.push((n + 2, 1));
        pairs.push((1, 1));
        let t = MountTable::tree_of(&pairs);
        let top = t.mounts.iter().position(|m| m.id == n + 2).unwrap();
        let got = sorted(subtree(&t, &[top]));
        assert_eq!(got, (0..=n as usize).collect::<Vec<_>>());
    }

    #[test]
    fn subtree_of_a_cyclic_table_ends() {
        let t = MountTable::tree_of(&[(1, 2), (2, 1), (3, 3)]);
        assert_eq!(sorted(subtree(&t, &[0])), vec![0, 1]);
        assert_eq!(position_of(&t, 2), Some(1));
        assert_eq!(position_of(&t, 9), None);
    }
}
