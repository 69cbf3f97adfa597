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

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use tracing::{debug, info_span};

use crate::engine::cgroups::CgroupView;
use crate::engine::index::{IndexUse, Origin, TableIndex};
use crate::engine::namespace::{self, Namespace, PinVia, Process};
use crate::engine::nsexec;
use crate::engine::source::{self, Backend, TargetMounts};
use crate::engine::table::{Mount, MountTable, path_is_under};

mod classify;
#[cfg(test)]
mod device_tests;
#[cfg(test)]
pub(crate) mod fixture;
mod matching;
mod nsfs;
mod reach;
mod same_device;
#[cfg(test)]
mod tests;

use classify::classify;
use matching::{hydrate_propagation_context, match_holders};

/// A process that keeps a holder busy, and how.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Pin {
    pub pid: i32,
    pub via: PinVia,
}

/// How a holder matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Match {
    Path,
    Identity,
    InsideCopy,
    /// A mount of a target block device's filesystem, at whatever path and root: the
    /// device number names the superblock.
    Device,
}

/// Why a holder must not simply be unmounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The 64-bit ids of the mounts this scan's lookup of a target found at their root
    /// with nothing mounted below them ([`crate::engine::source::TargetMounts`]).
    pub bare: Vec<NonZeroU64>,
    /// Member processes with details, filled for namespaces that hold a target.
    pub processes: Vec<Process>,
    /// Whether its root mount is the host's root filesystem (same device and root as the
    /// namespace of pid 1, or mntreap's own when pid 1 is out of view): a service's or a
    /// daemon's namespace, not a container's. Filled for namespaces that hold a device
    /// target; `None` when unknown.
    pub host_rooted: Option<bool>,
    /// Where its table came from: read by this scan, or kept in a [`TableIndex`].
    pub origin: Origin,
}

impl ScannedNamespace {
    /// Its table is one kept in a [`TableIndex`], not read by this scan.
    pub fn from_index(&self) -> bool {
        self.origin != Origin::Read
    }

    /// Its kept table was reused on a listing of the same ids, its namespace unwatched: a
    /// mount moved since is where the table says it was (so a copy moved to a target's
    /// path can be missing from this scan).
    pub fn moves_unseen(&self) -> bool {
        self.origin == Origin::KeptListed
    }
}

/// The result of a scan: holders, and everything that was odd along the way.
#[derive(Debug)]
pub struct Scan {
    pub backend: Backend,
    pub targets: Vec<PathBuf>,
    /// See [`ScanRequest::devices`].
    pub devices: Vec<(u32, u32)>,
    /// For a device scan: the namespace whose view is the node's own (pid 1's when the scan
    /// sees it, else mntreap's), which [`ScannedNamespace::host_rooted`] compares with.
    pub reference_ns: Option<usize>,
    /// The overlay upperdirs searched for ([`ScanRequest::layer_signatures`]).
    pub layer_signatures: Vec<PathBuf>,
    /// Copies at other paths were not searched for (`--paths-only`).
    pub paths_only: bool,
    /// See [`ScanRequest::trusted_namespaces`].
    pub trusted_namespaces: Vec<u64>,
    /// See [`ScanRequest::no_identity`].
    pub no_identity: Vec<PathBuf>,
    pub namespaces: Vec<ScannedNamespace>,
    pub holders: Vec<Holder>,
    pub notes: Vec<String>,
    /// Namespaces that exist but could not be read (permission): the scan is incomplete.
    pub denied: Vec<u64>,
    /// Why this scan cannot see every process of the host (it runs in another pid
    /// namespace): incomplete too.
    pub blind: Option<String>,
    /// Why peers of a shared mount may live where this scan cannot look although it is
    /// complete for what it releases (a machine container running its own runtime, whose
    /// manager is not known to make every inherited mount a slave): unmounts under shared
    /// parents are refused, since where they would propagate is unknown.
    pub peers_unseen: Option<String>,
    /// The note saying that some members' cgroups are unknown as the host names them.
    pub cgroups_unknown: Option<String>,
    /// How the scan used a [`TableIndex`] (`None`: every table read from the kernel). A
    /// scan that reused any table may be stale in propagation and mount points: a release
    /// from it confirms by id first ([`crate::engine::release::confirm`]).
    pub index: Option<IndexUse>,
    /// Notes that every healthy node has (identity matching limited because a layer's
    /// filesystem is also mounted at `/`): in JSON, and at debug level (`-v`), not in text.
    pub detail_notes: Vec<String>,
    /// Copies no path reaches in their namespace, `(namespace index, mount id)`: not
    /// holders (`scan::reach`), but an unmount that propagates onto one takes a copy of the
    /// target, which is no hazard.
    pub unreachable: Vec<(usize, u64)>,
}

impl Scan {
    /// Whether some table came from an index: fit for finding; a release confirms it first.
    pub fn from_index(&self) -> bool {
        self.index.is_some_and(|u| u.reused > 0)
    }

    /// The tables read, taken out (to keep in a [`TableIndex`]); the scan has none after.
    pub fn take_tables(&mut self) -> Vec<MountTable> {
        self.namespaces
            .iter_mut()
            .filter_map(|n| n.table.take())
            .collect()
    }

    /// Whether what the scan could not see makes its result incomplete (never clean).
    pub fn incomplete(&self) -> bool {
        !self.denied.is_empty() || self.blind.is_some()
    }

    /// Every note, details included (for JSON).
    pub fn all_notes(&self) -> Vec<&String> {
        self.notes.iter().chain(&self.detail_notes).collect()
    }
}

/// What to scan for, and how.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub targets: Vec<PathBuf>,
    /// Block devices (`major:minor`) whose filesystems are targets: every mount of one, in
    /// any namespace, at any path, holds it ([`Match::Device`]).
    pub devices: Vec<(u32, u32)>,
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
    /// Target subtrees whose mounts hold by path only: they never say what a target *is*,
    /// so copies of them at other paths are not searched. Patterns, where a `*` component
    /// stands for any one component. kubelet's `pods/*/volume-subpaths`: a subPath is a
    /// bind of whatever the pod names, a hostPath (the node's own `/dev/shm`) included.
    pub no_identity: Vec<PathBuf>,
    /// The established runtime daemon, when there is one in view: the reference for the
    /// host's cgroup namespace (pid 1 when `None`), and, in a pid namespace that is not the
    /// host's (a machine container: LXC, systemd-nspawn), the sign that what the runtime
    /// runs is in view.
    pub runtime_pid: Option<i32>,
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
    /// A release planned from kept tables ([`crate::engine::index`]) that the kernel no
    /// longer confirms ([`crate::engine::release::confirm`]): nothing was unmounted.
    #[error(
        "the kernel does not confirm the kept mount table of mount namespace {inode}: {what}; \
         nothing was unmounted (scan again without the index)"
    )]
    Unconfirmed { inode: u64, what: String },
}

/// Reads every namespace's table with the request's backend, on `request.threads`
/// workers, and finds in each the mounts at or below the targets (the seeds).
pub fn read_namespaces(
    request: &ScanRequest,
    index: Option<&TableIndex>,
    host_view: bool,
    notes: &mut Vec<String>,
    denied: &mut Vec<u64>,
) -> Result<Vec<ScannedNamespace>, ScanError> {
    let started = std::time::Instant::now();
    let namespaces = namespace::enumerate(&request.proc_root, host_view)?;
    debug!(
        namespaces = namespaces.len(),
        enumerate_ms = started.elapsed().as_secs_f64() * 1e3,
        "namespaces enumerated"
    );
    let targets = target_bytes(&request.targets);
    let signatures = target_bytes(&request.layer_signatures);
    let backend = request.backend;
    // A device's mounts may be at any path: only a path target can be read by its paths.
    let targeted =
        request.paths_only && backend == Backend::Listmount && request.devices.is_empty();
    let results = nsexec::map_with_workers(
        &request.proc_root,
        request.threads,
        &namespaces,
        |worker, ns| {
            if targeted {
                return source::read_targeted(worker, ns, &targets)
                    .map(|(t, found)| (t, found, Origin::Read));
            }
            // An overlay's `upperdir` option is whatever its mounter wrote: only root on the
            // host (CAP_SYS_ADMIN in mntreap's user namespace) can mount in a namespace that
            // user namespace owns, so only there does the signature name the runtime's layer.
            let signatures: &[Vec<u8>] = if ns.host_userns { &signatures } else { &[] };
            let (mut table, origin) = match index.filter(|_| backend == Backend::Listmount) {
                Some(index) => index.table(ns, signatures)?,
                None => (
                    source::read_table(backend, worker, ns, signatures)?,
                    Origin::Read,
                ),
            };
            let mut found = source::mounts_under(worker, ns, &mut table, &targets)?;
            let signed: Vec<usize> = (0..table.mounts.len())
                .filter(|&i| table.mounts[i].layer_signature.is_some() && !found.seeds.contains(&i))
                .collect();
            source::hydrate(&mut table, signed.iter().copied());
            found.seeds.extend(signed);
            Ok::<_, source::SourceError>((table, found, origin))
        },
    )?;
    Ok(namespaces
        .into_iter()
        .zip(results)
        .map(|(ns, read)| {
            let (table, found, origin) = match read {
                Ok((table, found, origin)) => (Some(table), found, origin),
                Err(e) => {
                    // A namespace whose last process exited mid-scan can no longer be read
                    // by pid, and one we may not enter is not ours to touch: note it.
                    if e.denied() {
                        denied.push(ns.inode);
                    }
                    notes.push(format!("skipped {e}"));
                    (None, TargetMounts::default(), Origin::Read)
                }
            };
            ScannedNamespace {
                ns,
                table,
                seeds: found.seeds,
                bare: found.bare,
                processes: Vec::new(),
                host_rooted: None,
                origin,
            }
        })
        .collect())
}

/// In a machine container, whether a shared mount's peers may live outside it. systemd-nspawn
/// makes every mount its machine inherits a slave before the guest starts, so the peer groups
/// inside are the guest's own (measured: under an rshared host the guest's `/` is
/// `shared:21 master:1`, and no guest group appears outside). Its pid 1 says so in the
/// environment nspawn gave it; forging that takes root in the machine, which can unmount
/// under those parents itself. Any other manager: unknown, so protect.
fn machine_peers_unseen(proc_root: &Path, detail_notes: &mut Vec<String>) -> Option<String> {
    match namespace::machine_manager(proc_root).as_deref() {
        Some("systemd-nspawn") => {
            detail_notes.push(
                "this machine was started by systemd-nspawn, which makes every mount it \
                 inherits a slave: its shared peer groups have no members outside it"
                    .to_string(),
            );
            None
        }
        other => Some(format!(
            "this is a machine container (its pid 1's manager is {}), and a peer group it \
             inherited may have members outside it, where the scan cannot look",
            other.map_or("not named".to_string(), |m| format!("`{m}`"))
        )),
    }
}

/// Scans the host for every holder of the request's targets.
pub fn scan(request: &ScanRequest) -> Result<Scan, ScanError> {
    scan_indexed(request, None)
}

/// [`scan`], with the tables of namespaces whose mounts have not changed taken from `index`
/// (listmount backend). Such a scan finds what to release; a release from it reads again
/// by id what its plan rests on first ([`crate::engine::index`],
/// [`crate::engine::release::confirm`]).
pub fn scan_indexed(request: &ScanRequest, index: Option<&TableIndex>) -> Result<Scan, ScanError> {
    let span = info_span!("scan", targets = ?request.targets, backend = ?request.backend);
    let _guard = span.enter();
    let started = std::time::Instant::now();
    let mut notes = Vec::new();
    let mut denied = Vec::new();
    let blindness = namespace::pid_namespace_blindness(&request.proc_root);
    if let Some(index) = index {
        index.begin();
    }
    let namespaces = read_namespaces(request, index, blindness.is_none(), &mut notes, &mut denied)?;
    let index_use = index.map(|index| IndexUse {
        reused: namespaces.iter().filter(|n| n.from_index()).count(),
        unlisted: index.unlisted(),
        read: namespaces
            .iter()
            .filter(|n| n.table.is_some() && !n.from_index())
            .count(),
        // From the tables themselves, not the index's mode now: a scan whose tables were
        // lent in the other mode is never taken for one that read its mount points again.
        fresh_mount_points: namespaces
            .iter()
            .filter(|n| n.from_index())
            .all(|n| n.table.as_ref().is_some_and(MountTable::mount_points_fresh)),
    });
    let read = started.elapsed();
    // Not the host's pid namespace: incomplete, unless the established runtime is in this
    // one (a machine container running its own runtime): then what it runs is in view.
    let mut detail_notes = Vec::new();
    let (blind, peers_unseen) = match (blindness, request.runtime_pid) {
        (Some(why), Some(pid)) => {
            detail_notes.push(format!(
                "{why}; the established runtime (pid {pid}) runs in this pid namespace, so \
                 what it runs is in view"
            ));
            (
                None,
                machine_peers_unseen(&request.proc_root, &mut detail_notes),
            )
        }
        (blind, _) => (blind, None),
    };
    detail_notes.extend(peers_unseen.clone());
    notes.extend(blind.clone());
    let mut scan = Scan {
        backend: request.backend,
        targets: request.targets.clone(),
        devices: request.devices.clone(),
        reference_ns: None,
        layer_signatures: request.layer_signatures.clone(),
        paths_only: request.paths_only,
        trusted_namespaces: request.trusted_namespaces.clone(),
        no_identity: request.no_identity.clone(),
        namespaces,
        holders: Vec::new(),
        notes,
        denied,
        blind,
        peers_unseen,
        cgroups_unknown: None,
        detail_notes,
        unreachable: Vec::new(),
        index: index_use,
    };
    match_holders(&mut scan);
    nsfs::attach_bind_pins(&mut scan);
    let matched = started.elapsed();
    let cgroups = CgroupView::of(&request.proc_root, request.runtime_pid.unwrap_or(1));
    classify(&mut scan, &request.proc_root, request.threads, &cgroups);
    reach::drop_covered(&mut scan, &request.proc_root, request.threads);
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
