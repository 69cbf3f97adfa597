//! Matching: which mounts of which namespaces hold the targets (path, identity from
//! trusted views only, inside-copy).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::os::unix::ffi::OsStrExt;

use tracing::debug;

use super::same_device::{Identity, SameDevice, broader_mount_elsewhere};
use super::{Holder, Match, Scan, target_bytes, under_any};
use crate::engine::mountinfo::encode;
use crate::engine::propagation::PropagationTree;
use crate::engine::source;
use crate::engine::table::{IdMap, MountTable, PASSES_UP_TO, path_is_under_pattern};

/// Fills `scan.holders` with every path, identity and inside-copy match.
pub(super) fn match_holders(scan: &mut Scan) {
    let targets = target_bytes(&scan.targets);
    // No seed in a trusted view (the node's own copy already unmounted, as a runtime's
    // removal does first): no identity to match by, so no mount of a seed's device is
    // gathered, nor compared below (every mount of the node, where they share one).
    let keys = trusted_seed_keys(scan);
    let seed_devs = match keys.is_empty() {
        true => HashSet::new(),
        false => seed_devices(scan),
    };
    let mut same_dev = SameDevice::of(scan, &seed_devs);
    let (identities, refused) = trusted_identities(scan, keys, &mut same_dev);
    same_dev.hydrate_for_matching(scan, &identities, &refused);
    let devices: HashSet<(u32, u32)> = scan.devices.iter().copied().collect();
    let root_lengths = RootLengths::of(identities.iter().chain(&refused));
    let listed: Option<Vec<(&Identity, bool)>> = (identities.len() + refused.len() <= LIST_UP_TO)
        .then(|| {
            let refused = refused.iter().map(|k| (k, true));
            identities
                .iter()
                .map(|k| (k, false))
                .chain(refused)
                .collect()
        });
    for ns in 0..scan.namespaces.len() {
        let scanned = &scan.namespaces[ns];
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        let known = Known {
            targets: &targets,
            seed_devs: &seed_devs,
            identities: &identities,
            refused: &refused,
            root_lengths: &root_lengths,
            listed: listed.as_deref(),
            devices: &devices,
        };
        if let Some(matched) = matches_in(table, &scanned.seeds, &known) {
            push_holders(scan, ns, &matched);
        }
    }
    if !devices.is_empty() {
        note_host_rooted(scan);
    }
}

/// Fills [`super::ScannedNamespace::host_rooted`] for the namespaces holding a device: the
/// device rule of a release tells a container's namespace (its own root filesystem) from a
/// service's or a daemon's (the host's root) by it. The reference is the namespace of pid
/// 1 when the scan sees it, else mntreap's own.
fn note_host_rooted(scan: &mut Scan) {
    // In a pid namespace that is not the host's, pid 1 is that namespace's init: no
    // reference then, and no namespace counts as rooted on the node's filesystem.
    let in_host_view = scan.blind.is_none() && scan.peers_unseen.is_none();
    let reference = scan
        .namespaces
        .iter()
        .position(|n| n.ns.pids.contains(&1))
        .or_else(|| scan.namespaces.iter().position(|n| n.ns.own))
        .filter(|_| in_host_view);
    scan.reference_ns = reference;
    let mut holding: Vec<usize> = scan.holders.iter().map(|h| h.ns).collect();
    holding.sort_unstable();
    holding.dedup();
    let root_of = |n: &mut super::ScannedNamespace| -> Option<((u32, u32), Vec<u8>)> {
        let table = n.table.as_mut()?;
        let i = table.root_position()?;
        source::hydrate(table, [i]);
        let m = &table.mounts[i];
        m.has_strings.then(|| (m.dev, table.root(m).to_vec()))
    };
    let host = reference.and_then(|r| root_of(&mut scan.namespaces[r]));
    for ns in holding {
        let root = root_of(&mut scan.namespaces[ns]);
        scan.namespaces[ns].host_rooted = match (&host, root) {
            (Some(host), Some(root)) => Some(*host == root),
            _ => None,
        };
    }
}

/// What matching in one namespace knows from all of them.
struct Known<'a> {
    targets: &'a [Vec<u8>],
    seed_devs: &'a HashSet<(u32, u32)>,
    identities: &'a HashSet<Identity>,
    refused: &'a HashSet<Identity>,
    /// The lengths of both sets' roots: most mounts of a seed's device (on a node whose
    /// mounts share one filesystem, every mount) are ruled out by this, with no hashing.
    root_lengths: &'a RootLengths,
    /// Both sets as one list, each key with whether it is refused, when they have at most
    /// [`LIST_UP_TO`] keys (one per target, usually): comparing a root's bytes with each
    /// costs less than building and hashing a key, which every mount of a seed's device
    /// whose root has a key's length needs otherwise.
    listed: Option<&'a [(&'a Identity, bool)]>,
    /// [`Scan::devices`]: every mount of these is a holder, wherever it is.
    devices: &'a HashSet<(u32, u32)>,
}

/// See [`Known::listed`].
const LIST_UP_TO: usize = 8;

impl Known<'_> {
    /// Whether the identity (`dev`, `root`) is trusted (`Some(false)`), refused
    /// (`Some(true)`) or neither; `key` is the caller's buffer, reused across mounts.
    fn lookup(&self, dev: (u32, u32), root: &[u8], key: &mut Identity) -> Option<bool> {
        if let Some(listed) = self.listed {
            return listed
                .iter()
                .find(|((d, r), _)| *d == dev && r.as_slice() == root)
                .map(|&(_, refused)| refused);
        }
        key.0 = dev;
        key.1.clear();
        key.1.extend_from_slice(root);
        if self.identities.contains(key) {
            Some(false)
        } else {
            self.refused.contains(key).then_some(true)
        }
    }
}

/// A set of lengths: exact below 4096 (`PATH_MAX`), one flag for any longer.
struct RootLengths {
    short: [u64; 64],
    long: bool,
}

impl RootLengths {
    fn of<'a>(keys: impl Iterator<Item = &'a Identity>) -> Self {
        let mut lengths = RootLengths {
            short: [0; 64],
            long: false,
        };
        for (_, root) in keys {
            match lengths.short.get_mut(root.len() / 64) {
                Some(word) => *word |= 1 << (root.len() % 64),
                None => lengths.long = true,
            }
        }
        lengths
    }

    /// False only when no key has a root of `len` bytes.
    fn may_hold(&self, len: usize) -> bool {
        match self.short.get(len / 64) {
            Some(word) => word & (1 << (len % 64)) != 0,
            None => self.long,
        }
    }
}

/// The devices of the seeds (none with `--paths-only`: no identity matching).
fn seed_devices(scan: &Scan) -> HashSet<(u32, u32)> {
    if scan.paths_only {
        return HashSet::new();
    }
    scan.namespaces
        .iter()
        .filter_map(|n| {
            let table = n.table.as_ref()?;
            Some(n.seeds.iter().map(move |&i| table.mounts[i].dev))
        })
        .flatten()
        .collect()
}

/// Identities whose copies elsewhere are the same layer, not a shared host filesystem, and
/// those refused (with a note each). Seeded only from trusted views: mntreap's own
/// namespace and the established runtime's (when the host's user namespace owns it), plus
/// overlays that carry the layer's signature from the runtime's records. Any other
/// namespace may have been set up by someone else (an unprivileged user in its own user
/// namespace, a setuid sandbox helper binding what its user asks for): its mounts hold that
/// path, and say nothing about what the target is.
fn trusted_identities(
    scan: &mut Scan,
    keys: Vec<Identity>,
    same_dev: &mut SameDevice,
) -> (HashSet<Identity>, HashSet<Identity>) {
    let mut identities: HashSet<Identity> = HashSet::new();
    let mut refused: HashSet<Identity> = HashSet::new();
    let mut notes = Vec::new();
    let vetoes = path_only_vetoes(scan);
    // The seeds at a target (not the overlays found by their signature elsewhere: those
    // are copies, and one at a namespace's root or in a trusted view refuses its own key).
    let targets = target_bytes(&scan.targets);
    let seeds: Vec<HashSet<usize>> = scan
        .namespaces
        .iter()
        .map(|n| {
            let Some(table) = n.table.as_ref() else {
                return HashSet::new();
            };
            n.seeds
                .iter()
                .copied()
                .filter(|&i| under_any(table.mount_point(&table.mounts[i]), &targets))
                .collect()
        })
        .collect();
    for key in keys {
        if identities.contains(&key) || refused.contains(&key) {
            continue;
        }
        // A key any path-only seed names is refused, whichever seed comes first.
        let why = match vetoes.get(&key) {
            Some(why) => Some(why.clone()),
            None => broader_mount_elsewhere(scan, same_dev, &seeds, key.0, &key.1)
                .map(|found| found.note(scan, key.0, &key.1)),
        };
        match why {
            None => {
                identities.insert(key);
            }
            Some(why) => {
                debug!(note = %why, "identity matching limited");
                notes.push(why);
                refused.insert(key);
            }
        }
    }
    scan.detail_notes.extend(notes);
    (identities, refused)
}

/// The identities (device, root) of the seeds that may say what a target is: those in
/// trusted views, and overlays carrying a layer's signature, in scan order.
fn trusted_seed_keys(scan: &Scan) -> Vec<Identity> {
    let mut keys = Vec::new();
    for n in &scan.namespaces {
        let Some(table) = n.table.as_ref() else {
            continue;
        };
        let trusted =
            n.ns.own || (n.ns.host_userns && scan.trusted_namespaces.contains(&n.ns.inode));
        for &i in &n.seeds {
            let seed = &table.mounts[i];
            // Signatures were only read where the host's user namespace owns the table.
            if trusted || seed.layer_signature.is_some() {
                keys.push((seed.dev, table.root(seed).to_vec()));
            }
        }
    }
    keys
}

/// How each mount of one namespace's table matches; `None` when none does.
fn matches_in(table: &MountTable, seeds: &[usize], known: &Known) -> Option<Vec<Option<Match>>> {
    // Allocated at the first match: most tables of a node match nothing, and the pass
    // below is the only one over their mounts.
    let mut matched: Vec<Option<Match>> = Vec::new();
    let set = |matched: &mut Vec<Option<Match>>, i: usize, how: Match| {
        if matched.is_empty() {
            matched.resize(table.mounts.len(), None);
        }
        matched[i] = Some(how);
    };
    let device = |m: &crate::engine::table::Mount| {
        !known.devices.is_empty() && known.devices.contains(&m.dev)
    };
    for &i in seeds {
        if matched.get(i).is_some_and(Option::is_some) {
            continue;
        }
        let m = &table.mounts[i];
        // A device's mounts are holders as such; seeds found by their overlay signature
        // elsewhere are copies, not path matches.
        let how = if device(m) {
            Match::Device
        } else if under_any(table.mount_point(m), known.targets) {
            Match::Path
        } else {
            Match::Identity
        };
        set(&mut matched, i, how);
    }
    let mut key: Identity = ((0, 0), Vec::new());
    let mut ns_root = None;
    let by_identity = !known.identities.is_empty() || !known.refused.is_empty();
    let mounts = match by_identity || !known.devices.is_empty() {
        true => &table.mounts[..],
        false => &[],
    };
    for (i, m) in mounts.iter().enumerate() {
        if matched.get(i).is_some_and(Option::is_some) {
            continue;
        }
        if device(m) {
            set(&mut matched, i, Match::Device);
            continue;
        }
        if !m.has_root
            || !known.root_lengths.may_hold(table.root(m).len())
            || !known.seed_devs.contains(&m.dev)
        {
            continue;
        }
        // One key for the whole table: no allocation per mount of the seeds' devices.
        match known.lookup(m.dev, table.root(m), &mut key) {
            Some(false) => set(&mut matched, i, Match::Identity),
            // A container running on the layer: always kept, but worth reporting.
            Some(true) if *ns_root.get_or_insert_with(|| table.root_position()) == Some(i) => {
                set(&mut matched, i, Match::Identity)
            }
            _ => {}
        }
    }
    if matched.is_empty() {
        return None;
    }
    close_over_children(table, &mut matched);
    Some(matched)
}

/// Whatever is mounted inside a matched copy must go first: close over children. Not below
/// a namespace's root mount, though: that copy is a container's rootfs, never released, and
/// everything in its namespace is "inside" it. The kernel lists parents before children,
/// but a later mount can land on an earlier parent, so iterate to a fixed point.
fn close_over_children(table: &MountTable, matched: &mut [Option<Match>]) {
    // Most copies have nothing inside them: one pass of compares says so, with no index.
    let ids: Vec<u64> = (0..matched.len())
        .filter(|&i| matched[i].is_some())
        .map(|i| table.mounts[i].id)
        .collect();
    if ids.len() <= PASSES_UP_TO
        && !table
            .mounts
            .iter()
            .any(|m| m.parent_id != m.id && ids.contains(&m.parent_id))
    {
        return;
    }
    let index = table.index();
    let ns_root = table.root_mount(&index);
    loop {
        let mut changed = false;
        for i in 0..table.mounts.len() {
            if matched[i].is_none()
                && index
                    .get(&table.mounts[i].parent_id)
                    .is_some_and(|&p| p != i && matched[p].is_some() && Some(p) != ns_root)
            {
                matched[i] = Some(Match::InsideCopy);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// Where the mounts of one table are, by id: [`MountTable::index`] where many are looked
/// up, else a pass over the table each.
enum Positions {
    Index(IdMap<usize>),
    Passes,
}

impl Positions {
    fn of(table: &MountTable, lookups: usize) -> Self {
        match lookups <= PASSES_UP_TO {
            true => Positions::Passes,
            false => Positions::Index(table.index()),
        }
    }

    fn get(&self, table: &MountTable, id: u64) -> Option<usize> {
        match self {
            Positions::Index(index) => index.get(&id).copied(),
            Positions::Passes => table.mounts.iter().position(|m| m.id == id),
        }
    }
}

/// The matched mounts of namespace `ns` as holders, with their strings read.
fn push_holders(scan: &mut Scan, ns: usize, matched: &[Option<Match>]) {
    let picked: Vec<usize> = (0..matched.len())
        .filter(|&i| matched[i].is_some())
        .collect();
    let table = scan.namespaces[ns]
        .table
        .as_mut()
        .expect("matched in a read table");
    // A parent and a walk to the root per holder (a handful of levels).
    let positions = Positions::of(table, picked.len() * 8);
    // Inside-copy mounts and the parents of holders may still lack their strings.
    let parents: Vec<usize> = picked
        .iter()
        .filter_map(|&i| positions.get(table, table.mounts[i].parent_id))
        .collect();
    source::hydrate(table, picked.iter().copied().chain(parents));
    let mut unreachable = 0;
    for i in picked {
        let m = &table.mounts[i];
        // listmount also lists mounts no path of the namespace reaches (left under a root
        // that systemd moved away from for a PrivateTmp service): statmount gives them no
        // mount point. mountinfo does not list them, nothing can unmount them by path, and
        // they go when the mount they were copied from goes.
        if table.mount_point(m).is_empty() {
            unreachable += 1;
            continue;
        }
        scan.holders.push(Holder {
            ns,
            mount: *m,
            mount_point: table.mount_point(m).to_vec(),
            root: table.root(m).to_vec(),
            fs_type: String::from_utf8_lossy(table.str(m.fs_type)).into_owned(),
            source: table.str(m.source).to_vec(),
            matched: matched[i].expect("picked"),
            parent: positions.get(table, m.parent_id).map(|p| table.mounts[p]),
            depth: table.depth_by(|id| positions.get(table, id), i),
            in_use: None,
            pins: Vec::new(),
        });
    }
    if unreachable > 0 {
        scan.detail_notes.push(format!(
            "{unreachable} cop{} in mount namespace {} not reachable by any path there \
             (under a root moved away from): not listed, as with the mountinfo backend",
            if unreachable == 1 { "y" } else { "ies" },
            scan.namespaces[ns].ns.inode
        ));
    }
}

/// The identities that seeds under [`Scan::no_identity`] name (kubelet's subPaths), with
/// the note that says why they are refused: a subPath binds whatever the pod names. A
/// layer's own signature still says what it is, wherever it is mounted.
fn path_only_vetoes(scan: &Scan) -> HashMap<Identity, String> {
    let mut vetoes = HashMap::new();
    for n in &scan.namespaces {
        let Some(table) = n.table.as_ref() else {
            continue;
        };
        for &i in &n.seeds {
            let seed = &table.mounts[i];
            let point = table.mount_point(seed);
            let Some(pattern) = scan
                .no_identity
                .iter()
                .find(|p| path_is_under_pattern(point, p.as_os_str().as_bytes()))
            else {
                continue;
            };
            if seed.layer_signature.is_some() {
                continue;
            }
            let key = (seed.dev, table.root(seed).to_vec());
            vetoes.entry(key.clone()).or_insert_with(|| {
                format!(
                    "copies of {}:{} {} at other paths were not searched: it is mounted at {} \
                     (under {}), whose mounts hold by path only (a subPath binds whatever \
                     the pod names, a host path included)",
                    key.0.0,
                    key.0.1,
                    encode(&key.1),
                    encode(point),
                    pattern.display(),
                )
            });
        }
    }
    vetoes
}

/// Reads the strings the propagation check of a release needs: for holders whose parent
/// is shared, every member and slave of that peer group, on through slaves shared in
/// groups of their own, and their children.
pub(super) fn hydrate_propagation_context(scan: &mut Scan) {
    let shared_parents: Vec<std::num::NonZeroU64> = scan
        .holders
        .iter()
        .filter_map(|h| h.parent?.peer_group)
        .collect();
    if shared_parents.is_empty() {
        return;
    }
    let groups = PropagationTree::of(scan.namespaces.iter().filter_map(|n| n.table.as_ref()))
        .reach(shared_parents);
    for n in &mut scan.namespaces {
        let Some(table) = n.table.as_mut() else {
            continue;
        };
        let related: HashSet<u64> = table
            .mounts
            .iter()
            .filter(|m| {
                m.peer_group.is_some_and(|g| groups.contains(&g))
                    || m.master.is_some_and(|g| groups.contains(&g))
            })
            .map(|m| m.id)
            .collect();
        let wanted: Vec<usize> = (0..table.mounts.len())
            .filter(|&i| {
                let m = &table.mounts[i];
                related.contains(&m.id) || related.contains(&m.parent_id)
            })
            .collect();
        source::hydrate(table, wanted);
    }
}

#[cfg(test)]
#[test]
fn root_lengths_rule_out_only_lengths_no_key_has() {
    let keys: Vec<Identity> = [0, 1, 63, 64, 4095, 5000]
        .map(|n| ((0, 1), vec![b'/'; n]))
        .into();
    let lengths = RootLengths::of(keys.iter());
    for n in [0, 1, 63, 64, 4095, 4096, 9000] {
        assert!(lengths.may_hold(n), "{n}");
    }
    for n in [2, 62, 65, 128, 4094] {
        assert!(!lengths.may_hold(n), "{n}");
    }
    assert!(!RootLengths::of(keys[..1].iter()).may_hold(4096));
}
