//! Every mount of a seed's superblock, anywhere: whether copies of a seed's (device,
//! root) at other paths are the target, or the same system filesystem mounted elsewhere.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::Scan;
use crate::engine::mountinfo::encode;
use crate::engine::source;
use crate::engine::table::path_is_under;

/// A seed's (device, root within its filesystem).
pub(super) type Identity = ((u32, u32), Vec<u8>);

/// Every mount of a seed's superblock, anywhere, by device: their roots decide the
/// identity matches and whether identity may be used at all. Roots are read lazily (one
/// statmount each on listmount tables): whether identity is refused is usually settled
/// by the first mount looked at (the node's `/` of the same filesystem), and the other
/// mounts' roots are needed only for the identities that stand.
pub(super) struct SameDevice {
    by_dev: HashMap<(u32, u32), Vec<(usize, usize)>>,
    /// Each namespace's root mount, once asked for.
    ns_roots: HashMap<usize, Option<usize>>,
}

impl SameDevice {
    pub(super) fn of(scan: &Scan, seed_devs: &HashSet<(u32, u32)>) -> SameDevice {
        let mut by_dev: HashMap<(u32, u32), Vec<(usize, usize)>> = HashMap::new();
        if !seed_devs.is_empty() {
            for (ns, n) in scan.namespaces.iter().enumerate() {
                let Some(table) = n.table.as_ref() else {
                    continue;
                };
                for (i, m) in table.mounts.iter().enumerate() {
                    if seed_devs.contains(&m.dev) {
                        by_dev.entry(m.dev).or_default().push((ns, i));
                    }
                }
            }
        }
        SameDevice {
            by_dev,
            ns_roots: HashMap::new(),
        }
    }

    fn ns_root(&mut self, scan: &Scan, ns: usize) -> Option<usize> {
        *self
            .ns_roots
            .entry(ns)
            .or_insert_with(|| scan.namespaces[ns].table.as_ref()?.root_position())
    }

    /// Reads the roots matching needs: every mount of a device with an identity that
    /// stands, and each namespace's root mount of a refused one (a container running on
    /// the layer is reported).
    pub(super) fn hydrate_for_matching(
        &mut self,
        scan: &mut Scan,
        identities: &HashSet<Identity>,
        refused: &HashSet<Identity>,
    ) {
        let accepted: HashSet<(u32, u32)> = identities.iter().map(|k| k.0).collect();
        let refused: HashSet<(u32, u32)> = refused.iter().map(|k| k.0).collect();
        let devs: Vec<(u32, u32)> = self.by_dev.keys().copied().collect();
        for dev in devs {
            let every = accepted.contains(&dev);
            if !every && !refused.contains(&dev) {
                continue;
            }
            // Taken out for the loop (ns_root needs `self`), put back after. On a node
            // whose mounts share one filesystem the list is every mount of the node: it is
            // walked once, a namespace's run at a time (it was built in namespace order).
            let list = std::mem::take(self.by_dev.get_mut(&dev).expect("a key of by_dev"));
            for run in list.chunk_by(|a, b| a.0 == b.0) {
                let ns = run[0].0;
                let wanted: Vec<usize> = if every {
                    run.iter().map(|&(_, i)| i).collect()
                } else {
                    self.ns_root(scan, ns)
                        .filter(|root| run.iter().any(|&(_, i)| i == *root))
                        .into_iter()
                        .collect()
                };
                if let Some(table) = scan.namespaces[ns].table.as_mut() {
                    source::hydrate_roots(table, wanted);
                }
            }
            self.by_dev.insert(dev, list);
        }
    }
}

/// Where the same filesystem is mounted outside the targets such that copies of a seed's
/// (device, root) at other paths must not count as the target.
pub(super) struct Elsewhere {
    ns: usize,
    mount: usize,
}

impl Elsewhere {
    /// The note that says why, with that mount's strings read.
    pub(super) fn note(&self, scan: &mut Scan, dev: (u32, u32), root: &[u8]) -> String {
        let n = &mut scan.namespaces[self.ns];
        let table = n.table.as_mut().expect("found in a read table");
        source::hydrate(table, [self.mount]);
        let m = &table.mounts[self.mount];
        format!(
            "copies of {}:{} {} at other paths were not searched: that filesystem is also \
             mounted at {} (root {}) in mount namespace {}, so it is not private to the \
             target",
            dev.0,
            dev.1,
            encode(root),
            encode(table.mount_point(m)),
            encode(table.root(m)),
            n.ns.inode,
        )
    }
}

/// Whether copies of `(dev, root)` at other paths must not count as the target: the same
/// filesystem is mounted outside the targets (`seeds`, per namespace, are the seeds at the
/// targets) with a broader root (a bind of `/var` from the root filesystem), or with
/// the same root as some namespace's root mount (a bind of a host's or container's `/`),
/// or with the same root at a path no target covers in a trusted view (the node's own
/// `/dev/shm` that a pod's subPath binds, an NFS export the node also mounts elsewhere).
/// Then "same superblock and root" no longer means "the same layer" but "the same system
/// filesystem": only a superblock that trusted views mount at target paths alone is the
/// target's.
pub(super) fn broader_mount_elsewhere(
    scan: &mut Scan,
    same_dev: &mut SameDevice,
    seeds: &[HashSet<usize>],
    dev: (u32, u32),
    root: &[u8],
) -> Option<Elsewhere> {
    let count = same_dev.by_dev.get(&dev).map_or(0, Vec::len);
    for k in 0..count {
        let (ns, i) = same_dev.by_dev[&dev][k];
        if seeds[ns].contains(&i) {
            continue;
        }
        if let Some(table) = scan.namespaces[ns].table.as_mut() {
            source::hydrate_roots(table, [i]);
        }
        let n = &scan.namespaces[ns];
        let Some(table) = n.table.as_ref() else {
            continue;
        };
        let m = &table.mounts[i];
        if !m.has_root {
            continue;
        }
        let trusted =
            n.ns.own || (n.ns.host_userns && scan.trusted_namespaces.contains(&n.ns.inode));
        let other_root = table.root(m).to_vec();
        let broader = path_is_under(root, &other_root) && other_root != root;
        let same_as_ns_root = other_root == root && same_dev.ns_root(scan, ns) == Some(i);
        // Whatever the filesystem: a tmpfs or overlay makes a superblock per mount, but a
        // bind of one lands anywhere (kubelet binds a pod's subPath of a hostPath onto the
        // root of the node's /dev/shm), so the same one at a path no target covers in a
        // trusted view is the node's, not the target's.
        let trusted_elsewhere = other_root == root && trusted;
        if broader || same_as_ns_root || trusted_elsewhere {
            return Some(Elsewhere { ns, mount: i });
        }
    }
    None
}
