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

use crate::engine::namespace::{self, MountRef, Namespace, PinVia, Process};
use crate::engine::nsexec;
use crate::engine::source::{self, Backend};
use crate::engine::table::{IdMap, Mount, MountTable, path_is_under};

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
    /// Indices (into the table) of the mounts at or below a target.
    pub seeds: Vec<usize>,
    /// Member processes with details, filled for namespaces that hold a target.
    pub processes: Vec<Process>,
}

/// The result of a scan: holders, and everything that was odd along the way.
#[derive(Debug)]
pub struct Scan {
    pub backend: Backend,
    pub targets: Vec<PathBuf>,
    /// The overlay upperdirs searched for ([`ScanRequest::layer_signatures`]).
    pub layer_signatures: Vec<PathBuf>,
    /// Copies at other paths were not searched for (`--paths-only`).
    pub paths_only: bool,
    /// See [`ScanRequest::trusted_namespaces`].
    pub trusted_namespaces: Vec<u64>,
    pub namespaces: Vec<ScannedNamespace>,
    pub holders: Vec<Holder>,
    pub notes: Vec<String>,
    /// Notes that every healthy node has (identity matching limited because a layer's
    /// filesystem is also mounted at `/`): in JSON, and at debug level (`-v`), not in text.
    pub detail_notes: Vec<String>,
}

impl Scan {
    /// Every note, details included (for JSON).
    pub fn all_notes(&self) -> Vec<&String> {
        self.notes.iter().chain(&self.detail_notes).collect()
    }
}

/// What to scan for, and how.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub targets: Vec<PathBuf>,
    pub backend: Backend,
    pub proc_root: PathBuf,
    /// Worker threads reading namespaces in parallel.
    pub threads: usize,
    /// Match only mounts at or below the targets; do not search for copies elsewhere.
    pub paths_only: bool,
    /// Overlay `upperdir`s of the targeted layers: an overlay with one of them is that
    /// layer wherever it is mounted, even when no namespace has it at its own path any more
    /// (after dockerd's Put and rmdir, an agent's `/host/...` copy is all that is left).
    pub layer_signatures: Vec<PathBuf>,
    /// Mount namespaces (by inode) whose mounts at a target path say what the target *is*,
    /// besides mntreap's own: the established runtime's (honoured only when the host's
    /// user namespace owns it). Only these views (and the runtime's records, as
    /// `layer_signatures`) seed identity matches; a mount at a target path in any other
    /// namespace holds that path and nothing else, since whoever set that namespace up may
    /// have put it there.
    pub trusted_namespaces: Vec<u64>,
}

/// The default worker count: the machine's cores, at most 4.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A scan that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Namespaces(#[from] namespace::NamespaceError),
    #[error(transparent)]
    Worker(#[from] nsexec::NsError),
}

/// Reads every namespace's table with the request's backend, on `request.threads`
/// workers, and finds in each the mounts at or below the targets (the seeds).
pub fn read_namespaces(
    request: &ScanRequest,
    notes: &mut Vec<String>,
) -> Result<Vec<ScannedNamespace>, ScanError> {
    let namespaces = namespace::enumerate(&request.proc_root)?;
    let targets = target_bytes(&request.targets);
    let signatures = target_bytes(&request.layer_signatures);
    let backend = request.backend;
    let targeted = request.paths_only && backend == Backend::Listmount;
    let results = nsexec::map_with_workers(
        &request.proc_root,
        request.threads,
        &namespaces,
        |worker, ns| {
            if targeted {
                return source::read_targeted(worker, ns, &targets);
            }
            // An overlay's `upperdir` option is whatever its mounter wrote: only root on the
            // host (CAP_SYS_ADMIN in mntreap's user namespace) can mount in a namespace that
            // user namespace owns, so only there does the signature name the runtime's layer.
            let signatures: &[Vec<u8>] = if ns.host_userns { &signatures } else { &[] };
            let mut table = source::read_table(backend, worker, ns, signatures)?;
            let mut seeds = source::mounts_under(worker, ns, &mut table, &targets)?;
            let signed: Vec<usize> = (0..table.mounts.len())
                .filter(|&i| table.mounts[i].layer_signature.is_some() && !seeds.contains(&i))
                .collect();
            source::hydrate(&mut table, signed.iter().copied());
            seeds.extend(signed);
            Ok::<_, source::SourceError>((table, seeds))
        },
    )?;
    Ok(namespaces
        .into_iter()
        .zip(results)
        .map(|(ns, read)| {
            let (table, seeds) = match read {
                Ok((table, seeds)) => (Some(table), seeds),
                Err(e) => {
                    // A namespace whose last process exited mid-scan can no longer be read
                    // by pid, and one we may not enter is not ours to touch: note it.
                    notes.push(format!("skipped {e}"));
                    (None, Vec::new())
                }
            };
            ScannedNamespace {
                ns,
                table,
                seeds,
                processes: Vec::new(),
            }
        })
        .collect())
}

/// Scans the host for every holder of the request's targets.
pub fn scan(request: &ScanRequest) -> Result<Scan, ScanError> {
    let span = info_span!("scan", targets = ?request.targets, backend = ?request.backend);
    let _guard = span.enter();
    let started = std::time::Instant::now();
    let mut notes = Vec::new();
    let namespaces = read_namespaces(request, &mut notes)?;
    let read = started.elapsed();
    let mut scan = Scan {
        backend: request.backend,
        targets: request.targets.clone(),
        layer_signatures: request.layer_signatures.clone(),
        paths_only: request.paths_only,
        trusted_namespaces: request.trusted_namespaces.clone(),
        namespaces,
        holders: Vec::new(),
        notes,
        detail_notes: Vec::new(),
    };
    match_holders(&mut scan);
    let matched = started.elapsed();
    classify(&mut scan, &request.proc_root, request.threads);
    hydrate_propagation_context(&mut scan);
    debug!(
        namespaces = scan.namespaces.len(),
        holders = scan.holders.len(),
        read_ms = read.as_secs_f64() * 1e3,
        match_ms = (matched - read).as_secs_f64() * 1e3,
        classify_ms = (started.elapsed() - matched).as_secs_f64() * 1e3,
        "scan done"
    );
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

type Identity = ((u32, u32), Vec<u8>);

/// Fills `scan.holders` with every path, identity and inside-copy match.
fn match_holders(scan: &mut Scan) {
    let targets = target_bytes(&scan.targets);
    // Every mount of a seed's superblock, anywhere, needs its strings: they decide both
    // the identity matches and whether identity may be used at all.
    let seed_devs: HashSet<(u32, u32)> = if scan.paths_only {
        HashSet::new()
    } else {
        scan.namespaces
            .iter()
            .filter_map(|n| {
                let table = n.table.as_ref()?;
                Some(n.seeds.iter().map(move |&i| table.mounts[i].dev))
            })
            .flatten()
            .collect()
    };
    for n in &mut scan.namespaces {
        if let Some(table) = n.table.as_mut() {
            let same_dev: Vec<usize> = (0..table.mounts.len())
                .filter(|&i| seed_devs.contains(&table.mounts[i].dev))
                .collect();
            source::hydrate(table, same_dev);
        }
    }

    // Identities whose copies elsewhere are the same layer, not a shared host filesystem.
    // Seeded only from trusted views: mntreap's own namespace and the established
    // runtime's (when the host's user namespace owns it), plus overlays that carry the
    // layer's signature from the runtime's records. Any other namespace may have been
    // set up by someone else (an unprivileged user in its own user namespace, a setuid
    // sandbox helper binding what its user asks for): its mounts hold that path, and say
    // nothing about what the target is.
    let mut identities: HashSet<Identity> = HashSet::new();
    let mut refused: HashSet<Identity> = HashSet::new();
    for n in &scan.namespaces {
        let Some(table) = n.table.as_ref() else {
            continue;
        };
        let trusted =
            n.ns.own || (n.ns.host_userns && scan.trusted_namespaces.contains(&n.ns.inode));
        for &i in &n.seeds {
            let seed = &table.mounts[i];
            // Signatures were only read where the host's user namespace owns the table.
            if !trusted && seed.layer_signature.is_none() {
                continue;
            }
            let key = (seed.dev, table.root(seed).to_vec());
            if identities.contains(&key) || refused.contains(&key) {
                continue;
            }
            match broader_mount_elsewhere(scan, &targets, key.0, &key.1) {
                None => {
                    identities.insert(key);
                }
                Some(why) => {
                    debug!(note = %why, "identity matching limited");
                    scan.detail_notes.push(why);
                    refused.insert(key);
                }
            }
        }
    }

    for ns in 0..scan.namespaces.len() {
        let scanned = &scan.namespaces[ns];
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        let mut matched: Vec<Option<Match>> = vec![None; table.mounts.len()];
        for &i in &scanned.seeds {
            // Seeds found by their overlay signature elsewhere are copies, not path matches.
            matched[i] = Some(
                if under_any(table.mount_point(&table.mounts[i]), &targets) {
                    Match::Path
                } else {
                    Match::Identity
                },
            );
        }
        let mut index = None;
        for (i, m) in table.mounts.iter().enumerate() {
            if matched[i].is_some() || !m.has_strings || !seed_devs.contains(&m.dev) {
                continue;
            }
            let key = (m.dev, table.root(m).to_vec());
            if identities.contains(&key) {
                matched[i] = Some(Match::Identity);
            } else if refused.contains(&key) {
                // A container running on the layer: always kept, but worth reporting.
                let index = index.get_or_insert_with(|| table.index());
                if table.root_mount(index) == Some(i) {
                    matched[i] = Some(Match::Identity);
                }
            }
        }
        if matched.iter().all(Option::is_none) {
            continue;
        }
        let index = index.unwrap_or_else(|| table.index());
        let ns_root = table.root_mount(&index);
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
        let picked: Vec<usize> = (0..matched.len())
            .filter(|&i| matched[i].is_some())
            .collect();
        let table = scan.namespaces[ns].table.as_mut().expect("checked above");
        // Inside-copy mounts and the parents of holders may still lack their strings.
        let parents: Vec<usize> = picked
            .iter()
            .filter_map(|&i| index.get(&table.mounts[i].parent_id).copied())
            .collect();
        source::hydrate(table, picked.iter().copied().chain(parents));
        let mut unreachable = 0;
        for i in picked {
            let m = &table.mounts[i];
            // listmount also lists mounts no path of the namespace reaches (left under a
            // root that systemd moved away from for a PrivateTmp service): statmount gives
            // them no mount point. mountinfo does not list them, nothing can unmount them
            // by path, and they go when the mount they were copied from goes.
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
                parent: index.get(&m.parent_id).map(|&p| table.mounts[p]),
                depth: table.depth(&index, i),
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
}

/// Reads the strings the propagation check of a release needs: for holders whose parent
/// is shared, every member and slave of that peer group and their children.
fn hydrate_propagation_context(scan: &mut Scan) {
    let groups: HashSet<u64> = scan
        .holders
        .iter()
        .filter_map(|h| h.parent?.peer_group)
        .collect();
    if groups.is_empty() {
        return;
    }
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

/// Why copies of `(dev, root)` at other paths must not count as the target, if they must
/// not: the same filesystem is mounted outside the targets with a broader root (a bind of
/// `/var` from the root filesystem), or with the same root as some namespace's root mount
/// (a bind of a host's or container's `/`). Then "same superblock and root" no longer
/// means "the same layer" but "the same system filesystem".
fn broader_mount_elsewhere(
    scan: &Scan,
    targets: &[Vec<u8>],
    dev: (u32, u32),
    root: &[u8],
) -> Option<String> {
    for n in &scan.namespaces {
        let Some(table) = n.table.as_ref() else {
            continue;
        };
        let mut ns_root = None;
        for (i, m) in table.mounts.iter().enumerate() {
            if m.dev != dev || !m.has_strings || under_any(table.mount_point(m), targets) {
                continue;
            }
            let other_root = table.root(m);
            let broader = path_is_under(root, other_root) && other_root != root;
            let same_as_ns_root = other_root == root
                && *ns_root.get_or_insert_with(|| table.root_mount(&table.index())) == Some(i);
            if broader || same_as_ns_root {
                return Some(format!(
                    "copies of {}:{} {} at other paths were not searched: that filesystem is \
                     also mounted at {} (root {}) in mount namespace {}, so it is not private \
                     to the target",
                    dev.0,
                    dev.1,
                    crate::engine::mountinfo::encode(root),
                    crate::engine::mountinfo::encode(table.mount_point(m)),
                    crate::engine::mountinfo::encode(other_root),
                    n.ns.inode,
                ));
            }
        }
    }
    None
}

/// Reads member processes of holder namespaces and marks holders that are a namespace's
/// root, contain a process's root, or contain a process's working directory.
fn classify(scan: &mut Scan, proc_root: &Path, threads: usize) {
    let holder_ns: HashSet<usize> = scan.holders.iter().map(|h| h.ns).collect();
    let members: Vec<(usize, i32)> = holder_ns
        .iter()
        .flat_map(|&ns| {
            scan.namespaces[ns]
                .ns
                .pids
                .iter()
                .map(move |&pid| (ns, pid))
        })
        .collect();
    // A few syscalls per process, but thousands of processes on a busy node: in parallel.
    let threads = threads.clamp(1, members.len().max(1));
    let details: Vec<Option<Process>> = std::thread::scope(|scope| {
        let chunk = members.len().div_ceil(threads).max(1);
        let handles: Vec<_> = members
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&(_, pid)| namespace::process(proc_root, pid))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (&(ns, pid), detail) in members.iter().zip(details) {
        let scanned = &mut scan.namespaces[ns];
        match detail {
            Some(p) => scanned.processes.push(p),
            None => scan.notes.push(format!(
                "pid {pid} of mount namespace {} exited during the scan",
                scanned.ns.inode
            )),
        }
    }
    for &ns in &holder_ns {
        let scanned = &scan.namespaces[ns];
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
    let mut ns_sorted: Vec<usize> = holder_ns.into_iter().collect();
    ns_sorted.sort_unstable();
    let mut use_pins: HashMap<(usize, u64), Vec<Pin>> = HashMap::new();
    let mut ns_roots: HashSet<(usize, u64)> = HashSet::new();
    for &ns in &ns_sorted {
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
fn containing_mounts(table: &MountTable, index: &IdMap<usize>, what: MountRef) -> Vec<u64> {
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
