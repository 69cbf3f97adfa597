//! Which mounts, in which namespaces, hold a target: the matching rules.
//!
//! A mount *holds* a target path `P` when, in some namespace:
//! - its mount point is `P` or lies below `P` (by whole components: `<id>` never matches
//!   `<id>-init` or `<id>0`), a **path** match; or
//! - it is a copy of such a mount at another path: same superblock (`major:minor`) and same
//!   root within it, an **identity** match (an agent's `/host/var/lib/docker/...`, a bind
//!   into a chroot); or
//! - it is mounted inside such a copy, **inside-copy** (it must go before the copy can).
//!
//! Identity only says "same mount" for filesystems private to the targets: when the
//! superblock is also mounted, with a root at or above the seed's, outside the targets (a
//! bind of `/var` from the root filesystem), copies elsewhere are not the layer but the
//! host's own filesystem, so they are not matched and the report says so.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tracing::{debug, info_span};

use crate::namespace::{self, MountRef, Namespace, PinVia, Process};
use crate::nsexec;
use crate::source::{self, Backend};
use crate::table::{Mount, MountTable, path_is_under};

/// A process that keeps a holder busy, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Pin {
    pub pid: i32,
    pub via: PinVia,
}

/// How a holder matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Match {
    Path,
    Identity,
    InsideCopy,
}

/// Why a holder must not simply be unmounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InUse {
    /// The mount is its namespace's root (a container's rootfs after pivot_root).
    NamespaceRoot,
    /// The root directory of these processes is in it or below it (a container, a chroot).
    ProcessRoot { pids: Vec<i32> },
}

/// One mount of one namespace that holds a target.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Index into [`Scan::namespaces`].
    pub ns: usize,
    pub mount: Mount,
    pub mount_point: Vec<u8>,
    pub root: Vec<u8>,
    pub fs_type: String,
    pub source: Vec<u8>,
    pub matched: Match,
    pub parent: Option<Mount>,
    pub depth: u32,
    pub in_use: Option<InUse>,
    /// Processes that keep this mount (or one below it) busy, and how.
    pub pins: Vec<Pin>,
}

/// A namespace as scanned.
#[derive(Debug)]
pub struct ScannedNamespace {
    pub ns: Namespace,
    pub table: Option<MountTable>,
    /// Member processes with details, filled for namespaces that hold a target.
    pub processes: Vec<Process>,
}

/// The result of a scan: holders, and everything that was odd along the way.
#[derive(Debug)]
pub struct Scan {
    pub backend: Backend,
    pub targets: Vec<PathBuf>,
    pub namespaces: Vec<ScannedNamespace>,
    pub holders: Vec<Holder>,
    pub notes: Vec<String>,
}

/// What to scan for, and how.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub targets: Vec<PathBuf>,
    pub backend: Backend,
    pub proc_root: PathBuf,
}

/// A scan that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Namespaces(#[from] namespace::NamespaceError),
    #[error(transparent)]
    Worker(#[from] nsexec::NsError),
}

/// Reads every namespace's table with the request's backend.
pub fn read_namespaces(
    request: &ScanRequest,
    notes: &mut Vec<String>,
) -> Result<Vec<ScannedNamespace>, ScanError> {
    let namespaces = namespace::enumerate(&request.proc_root)?;
    let backend = request.backend;
    let results = nsexec::with_worker(&request.proc_root, |worker| {
        namespaces
            .iter()
            .map(|ns| source::read_table(backend, worker, ns))
            .collect::<Vec<_>>()
    })?;
    Ok(namespaces
        .into_iter()
        .zip(results)
        .map(|(ns, table)| {
            let table = table
                .map_err(|e| {
                    // A namespace whose last process exited mid-scan can no longer be read
                    // by pid, and one we may not enter is not ours to touch: note it.
                    notes.push(format!("skipped {e}"));
                })
                .ok();
            ScannedNamespace {
                ns,
                table,
                processes: Vec::new(),
            }
        })
        .collect())
}

/// Scans the host for every holder of the request's targets.
pub fn scan(request: &ScanRequest) -> Result<Scan, ScanError> {
    let span = info_span!("scan", targets = ?request.targets, backend = ?request.backend);
    let _guard = span.enter();
    let mut notes = Vec::new();
    let namespaces = read_namespaces(request, &mut notes)?;
    let mut scan = Scan {
        backend: request.backend,
        targets: request.targets.clone(),
        namespaces,
        holders: Vec::new(),
        notes,
    };
    match_holders(&mut scan);
    classify(&mut scan, &request.proc_root);
    debug!(holders = scan.holders.len(), "scan done");
    Ok(scan)
}

fn under_any(point: &[u8], targets: &[Vec<u8>]) -> bool {
    targets.iter().any(|t| path_is_under(point, t))
}

fn target_bytes(targets: &[PathBuf]) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    targets
        .iter()
        .map(|t| t.as_os_str().as_bytes().to_vec())
        .collect()
}

/// Fills `scan.holders` with every path, identity and inside-copy match.
fn match_holders(scan: &mut Scan) {
    let targets = target_bytes(&scan.targets);
    let tables: Vec<(usize, &MountTable)> = scan
        .namespaces
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i, n.table.as_ref()?)))
        .collect();

    // Seeds: mounts at or below a target path, in any namespace.
    let mut seeds: Vec<(usize, Mount)> = Vec::new();
    for &(ns, table) in &tables {
        seeds.extend(
            table
                .mounts
                .iter()
                .filter(|m| under_any(table.mount_point(m), &targets))
                .map(|m| (ns, *m)),
        );
    }

    // Identities whose copies elsewhere are the same layer, not a shared host filesystem.
    let mut identities: HashSet<((u32, u32), Vec<u8>)> = HashSet::new();
    let mut refused: HashSet<((u32, u32), Vec<u8>)> = HashSet::new();
    for &(seed_ns, seed) in &seeds {
        let seed_root = scan.namespaces[seed_ns]
            .table
            .as_ref()
            .expect("seed tables exist")
            .root(&seed)
            .to_vec();
        let key = (seed.dev, seed_root);
        if identities.contains(&key) || refused.contains(&key) {
            continue;
        }
        match broader_mount_elsewhere(scan, &tables, &targets, key.0, &key.1) {
            None => {
                identities.insert(key);
            }
            Some(why) => {
                scan.notes.push(why);
                refused.insert(key);
            }
        }
    }

    for &(ns, table) in &tables {
        let index = table.index();
        let depths = table.depths(&index);
        let ns_root = table.root_mount(&index);
        let mut matched: Vec<Option<Match>> = table
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if under_any(table.mount_point(m), &targets) {
                    Some(Match::Path)
                } else if identities.contains(&(m.dev, table.root(m).to_vec())) {
                    Some(Match::Identity)
                } else if Some(i) == ns_root && refused.contains(&(m.dev, table.root(m).to_vec())) {
                    // A container running on the layer: always kept, but worth reporting.
                    Some(Match::Identity)
                } else {
                    None
                }
            })
            .collect();
        // Whatever is mounted inside a matched copy must go first: close over children.
        // Not below a namespace's root mount, though: that copy is a container's rootfs,
        // never released, and everything in its namespace is "inside" it. The kernel lists
        // parents before children, but a later mount can land on an earlier parent, so
        // iterate to a fixed point.
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
        for (i, m) in table.mounts.iter().enumerate() {
            let Some(how) = matched[i] else { continue };
            scan.holders.push(Holder {
                ns,
                mount: *m,
                mount_point: table.mount_point(m).to_vec(),
                root: table.root(m).to_vec(),
                fs_type: String::from_utf8_lossy(table.str(m.fs_type)).into_owned(),
                source: table.str(m.source).to_vec(),
                matched: how,
                parent: index.get(&m.parent_id).map(|&p| table.mounts[p]),
                depth: depths[i],
                in_use: None,
                pins: Vec::new(),
            });
        }
    }
}

/// Why copies of `(dev, root)` at other paths must not count as the target, if they must
/// not: the same filesystem is mounted outside the targets with a broader root (a bind of
/// `/var` from the root filesystem), or with the same root as some namespace's root mount
/// (a bind of a host's or container's `/`). Then "same superblock and root" no longer
/// means "the same layer" but "the same system filesystem".
fn broader_mount_elsewhere(
    scan: &Scan,
    tables: &[(usize, &MountTable)],
    targets: &[Vec<u8>],
    dev: (u32, u32),
    root: &[u8],
) -> Option<String> {
    for &(ns, table) in tables {
        let index = table.index();
        let ns_root = table.root_mount(&index).map(|i| table.mounts[i].id);
        for m in &table.mounts {
            if m.dev != dev || under_any(table.mount_point(m), targets) {
                continue;
            }
            let other_root = table.root(m);
            let broader = path_is_under(root, other_root) && other_root != root;
            let same_as_ns_root = other_root == root && Some(m.id) == ns_root;
            if broader || same_as_ns_root {
                return Some(format!(
                    "copies of {}:{} {} at other paths were not searched: that filesystem is \
                     also mounted at {} (root {}) in mount namespace {}, so it is not private \
                     to the target",
                    dev.0,
                    dev.1,
                    crate::mountinfo::encode(root),
                    crate::mountinfo::encode(table.mount_point(m)),
                    crate::mountinfo::encode(other_root),
                    scan.namespaces[ns].ns.inode,
                ));
            }
        }
    }
    None
}

/// Reads member processes of holder namespaces and marks holders that are a namespace's
/// root, contain a process's root, or contain a process's working directory.
fn classify(scan: &mut Scan, proc_root: &Path) {
    let holder_ns: HashSet<usize> = scan.holders.iter().map(|h| h.ns).collect();
    for &ns in &holder_ns {
        let scanned = &mut scan.namespaces[ns];
        for &pid in &scanned.ns.pids {
            match namespace::process(proc_root, pid) {
                Some(p) => scanned.processes.push(p),
                None => scan.notes.push(format!(
                    "pid {pid} of mount namespace {} exited during the scan",
                    scanned.ns.inode
                )),
            }
        }
        if scanned.processes.is_empty() && !scanned.ns.own {
            scan.notes.push(format!(
                "mount namespace {} has no live process any more; mntreap holds it open \
                 until it exits",
                scanned.ns.inode
            ));
        }
    }

    // Per namespace: mount id -> processes whose root is in / that use that mount's subtree.
    let mut root_pins: HashMap<(usize, u64), Vec<i32>> = HashMap::new();
    let mut use_pins: HashMap<(usize, u64), Vec<Pin>> = HashMap::new();
    let mut ns_roots: HashSet<(usize, u64)> = HashSet::new();
    for &ns in &holder_ns {
        let scanned = &scan.namespaces[ns];
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        let index = table.index();
        if let Some(r) = table.root_mount(&index) {
            ns_roots.insert((ns, table.mounts[r].id));
        }
        for p in &scanned.processes {
            if let Some(root) = p.root {
                for id in containing_mounts(table, &index, root) {
                    root_pins.entry((ns, id)).or_default().push(p.pid);
                }
            }
            for &(via, used) in &p.uses {
                for id in containing_mounts(table, &index, used) {
                    use_pins
                        .entry((ns, id))
                        .or_default()
                        .push(Pin { pid: p.pid, via });
                }
            }
        }
    }
    for h in &mut scan.holders {
        let key = (h.ns, h.mount.id);
        if ns_roots.contains(&key) {
            h.in_use = Some(InUse::NamespaceRoot);
        } else if let Some(pids) = root_pins.get(&key) {
            h.in_use = Some(InUse::ProcessRoot { pids: dedup(pids) });
        }
        if let Some(pins) = use_pins.get(&key) {
            let mut pins = pins.clone();
            pins.sort_unstable();
            pins.dedup();
            h.pins = pins;
        }
    }
}

/// The mount a process refers to and all its ancestors (they all contain it). Without a
/// mount id (kernel < 5.8) every mount of the same filesystem counts: conservative.
fn containing_mounts(table: &MountTable, index: &HashMap<u64, usize>, what: MountRef) -> Vec<u64> {
    let Some(id) = what.id else {
        return table
            .mounts
            .iter()
            .filter(|m| Some(m.dev) == what.dev)
            .map(|m| m.id)
            .collect();
    };
    let mut ids = Vec::new();
    let mut at = index.get(&id).copied();
    while let Some(i) = at {
        let m = &table.mounts[i];
        ids.push(m.id);
        at = index
            .get(&m.parent_id)
            .copied()
            .filter(|&q| q != i && ids.len() <= table.mounts.len());
    }
    ids
}

fn dedup(pids: &[i32]) -> Vec<i32> {
    let mut v = pids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

impl Scan {
    /// Holders in namespaces other than mntreap's own.
    pub fn foreign_holders(&self) -> impl Iterator<Item = &Holder> {
        self.holders
            .iter()
            .filter(|h| !self.namespaces[h.ns].ns.own)
    }

    /// The processes of a namespace, for reports.
    pub fn processes(&self, ns: usize) -> &[Process] {
        &self.namespaces[ns].processes
    }
}
