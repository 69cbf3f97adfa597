//! The JSON documents every command prints, as types: the one schema (docs/json.md, "JSON
//! output", says it in words). Every document denies unknown fields when read back, which
//! the tests do with each command's real output.

use serde::{Deserialize, Serialize};

use crate::engine::namespace::{FoundVia, NsPin, PinVia};
use crate::engine::scan::{InUse, Match, Pin};
use crate::engine::source::Backend;
use crate::runtime::model::{Container, Daemon};

/// What a holder is to its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Runtime,
    Container,
    InUse,
    Pinned,
    Leaked,
    /// A namespace whose members' cgroups are unknown as the host names them, holding a
    /// pod's mount: it may be the pod's own, so a release keeps it (and says so).
    Unknown,
}

impl Role {
    pub fn word(self) -> &'static str {
        match self {
            Role::Runtime => "runtime",
            Role::Container => "container",
            Role::InUse => "in-use",
            Role::Pinned => "pinned",
            Role::Leaked => "leaked",
            Role::Unknown => "unknown",
        }
    }
}

/// A member process of a namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidDoc {
    pub pid: i32,
    pub comm: String,
}

/// What a holder is, in a path scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderState {
    InUse,
    Host,
    Pinned,
    Leaked,
}

/// A container, as a holder or a finding names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
    pub state: String,
}

/// One mount of one namespace that holds a target. Container scans add `role` and
/// `container`; the node-wide report adds `class`, `severity`, `owner` and `container`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderDoc {
    /// Inode of `/proc/PID/ns/mnt`.
    pub mnt_ns: u64,
    pub own_namespace: bool,
    pub mount_id: u64,
    /// 64-bit never-reused id (listmount backend).
    pub mount_id_unique: Option<u64>,
    pub parent_id: u64,
    /// As that namespace sees it.
    pub mount_point: String,
    pub root: String,
    /// Superblock `major:minor`.
    pub dev: String,
    pub fs_type: String,
    pub source: String,
    #[serde(rename = "match")]
    pub matched: Match,
    pub state: HolderState,
    pub in_use: Option<InUse>,
    pub pins: Vec<Pin>,
    pub pids: Vec<PidDoc>,
    /// How its namespace was found: `process`, or (no process) `kernel-list`/`descriptor`.
    #[serde(default)]
    pub ns_via: FoundVia,
    /// What pins its namespace when no process is in it: remove that to free the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns_pinned_by: Vec<NsPin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    /// The container id or layer id a finding's mount belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Scans: what `release` with the same targets does to it (its plan, as a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<HolderAction>,
    /// Why: the rule that decided, with its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a release does with a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderAction {
    /// Unmounted: nothing known uses it.
    Unmount,
    /// Unmounted, while processes keep its filesystem alive.
    Detach,
    /// Left in place.
    Keep,
}

impl HolderAction {
    pub fn word(self) -> &'static str {
        match self {
            HolderAction::Unmount => "unmount",
            HolderAction::Detach => "detach",
            HolderAction::Keep => "keep",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSummary {
    pub holders: usize,
    pub namespaces: usize,
    pub foreign_holders: usize,
    pub namespaces_scanned: usize,
}

/// `scan --path ... --json` and `scan CONTAINER... --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanDoc {
    pub backend: Backend,
    pub paths_only: bool,
    pub targets: Vec<String>,
    /// Block devices asked about (`MAJ:MIN`, `release --device`): every mount of one holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    pub holders: Vec<HolderDoc>,
    pub summary: ScanSummary,
    pub notes: Vec<String>,
    /// Container scans: the daemon and the containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "docker")]
    pub runtime: Option<Daemon>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<Container>>,
}

/// What happened to one holder (`result`), with its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionResult {
    Unmounted,
    Detached,
    Kept,
    Gone,
    Failed,
    WouldUnmount,
    WouldDetach,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDoc {
    pub mount_id: u64,
    pub mount_point: String,
    pub fs_type: String,
    #[serde(rename = "match")]
    pub matched: Match,
    pub result: ActionResult,
    /// `detached`, `would-detach`: who keeps the filesystem alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins: Option<Vec<Pin>>,
    /// `kept`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `failed`: the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceDoc {
    pub mnt_ns: u64,
    pub own_namespace: bool,
    /// 0 for a namespace with no process.
    pub pid_used: i32,
    #[serde(default)]
    pub via: FoundVia,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned_by: Vec<NsPin>,
    pub actions: Vec<ActionDoc>,
}

/// One release (of a container, or of `release --path`'s paths): an entry of
/// [`ReleasesDoc`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDoc {
    pub dry_run: bool,
    pub paths_only: bool,
    pub backend: Backend,
    pub targets: Vec<String>,
    /// Block devices asked about (`MAJ:MIN`, `release --device`): every mount of one holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    pub namespaces: Vec<NamespaceDoc>,
    /// In scope and still mounted after acting (or kept).
    pub remaining: Vec<HolderDoc>,
    pub notes: Vec<String>,
    /// The container released, in `releases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// `why TARGET --json`: every reason each filesystem is busy. A path or a device is one
/// target; a container or a pod is one per filesystem of its mounts (rootfs, shm, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhyDoc {
    /// Whether any target is held.
    pub busy: bool,
    pub targets: Vec<WhyTarget>,
    pub notes: Vec<String>,
}

/// One filesystem asked about, and what holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhyTarget {
    /// As given, or `CONTAINER MOUNT_POINT` for a container's mount.
    pub target: String,
    /// The filesystem's device, `major:minor`.
    pub dev: String,
    /// The block device's kernel name, when it is one (`loop3`, `dm-0`).
    pub block: Option<String>,
    pub busy: bool,
    pub reasons: Vec<WhyReason>,
}

/// One reason, with whether mntreap releases it and what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhyReason {
    #[serde(flatten)]
    pub reason: crate::engine::busy::Reason,
    pub releasable: bool,
    pub remedy: String,
}

/// What a command prints on stdout under `--json` when it fails before any work (exit 2):
/// never nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDoc {
    pub error: String,
    pub kind: FailureKind,
}

/// Why a command could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Bad input (a path, a name, a setting): fix the command.
    BadInput,
    /// The container runtime does not answer and its records cannot stand in: retry.
    RuntimeUnavailable,
    /// This host refuses the work (permissions, kernel interfaces).
    CannotRun,
}

/// A container whose release could not run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedDoc {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReleaseOutcome {
    Released(ReleaseDoc),
    Failed(FailedDoc),
}

/// `release CONTAINER... --json`: one outcome per target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesDoc {
    #[serde(alias = "docker")]
    pub runtime: Option<Daemon>,
    pub releases: Vec<ReleaseOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSummary {
    pub orphaned: usize,
    pub leaked: usize,
    pub in_use: usize,
    pub containers: usize,
    pub namespaces_scanned: usize,
    /// Devices in `devices` that `release --device` would free of at least one copy.
    #[serde(default)]
    pub devices_held: usize,
}

/// `scan --json` with no target: the node-wide report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReportDoc {
    #[serde(alias = "docker")]
    pub runtime: Daemon,
    pub backend: Backend,
    pub roots: Vec<String>,
    pub findings: Vec<HolderDoc>,
    /// Block devices mounted in other namespaces and not in the host's: each with every
    /// mount of it and what `release --device` does to each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceDoc>,
    pub summary: NodeSummary,
    pub notes: Vec<String>,
}

/// A block device whose filesystem only other namespaces mount (the node report).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    /// `MAJ:MIN`.
    pub dev: String,
    /// The kernel's name for it (`loop3`, `rbd0`, `dm-2`).
    pub block: Option<String>,
    /// What kubelet's layout says the mounts are (a pod's volume, a CSI staging mount),
    /// from their paths: a label, not evidence.
    pub volume: Option<String>,
    /// Every mount of it, with `action` and `reason` as in `scan --device`.
    pub holders: Vec<HolderDoc>,
}

/// A forced removal's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalDoc {
    pub removed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReapEntry {
    pub container: Container,
    pub release: ReleaseOutcome,
    pub removal: RemovalDoc,
}

/// `reap --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReapDoc {
    #[serde(alias = "docker")]
    pub runtime: Daemon,
    pub dry_run: bool,
    pub containers: Vec<ReapEntry>,
}

/// A request on the hook socket (one JSON line): `op` is `pre-stop`; `container` names a
/// sibling in the caller's pod, else the caller's own container is meant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRequest {
    pub op: String,
    #[serde(default)]
    pub container: Option<String>,
}

/// The agent's answer on the hook socket, printed by `mntreap hook pre-stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// One outcome per container released (the caller's, or each of its pod's, sandbox
    /// included), as `release CONTAINER... --json` lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<ReleaseOutcome>,
}

impl HookReply {
    pub fn refused(error: impl Into<String>) -> HookReply {
        HookReply {
            ok: false,
            error: Some(error.into()),
            container: None,
            releases: Vec::new(),
        }
    }
}

/// A doctor check's verdict, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warning,
    Problem,
}

/// One doctor check: a stable id, a verdict, a summary, evidence and a remedy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub summary: String,
    pub evidence: Vec<String>,
    pub remedy: String,
}

/// `doctor --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorDoc {
    #[serde(alias = "docker")]
    pub runtime: Daemon,
    pub checks: Vec<Check>,
    pub worst: Status,
}

/// A document as one JSON text with a trailing newline, as the commands print it.
pub fn to_text(doc: &impl Serialize) -> String {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => s + "\n",
        Err(e) => format!("{{\"error\": \"cannot write the report: {e}\"}}\n"),
    }
}

/// The word of a pin's kind, for text reports.
pub fn pin_word(via: PinVia) -> &'static str {
    match via {
        PinVia::Cwd => "cwd",
        PinVia::Exe => "exe",
        PinVia::OpenFile => "open file",
    }
}

/// What a node-wide finding is, most severe first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Its container is gone, Dead or Removal In Progress, or no container owns the layer.
    Orphaned,
    /// A copy in a foreign namespace (not the runtime's, not the container's own).
    Leaked,
    /// A foreign copy that processes use as their root.
    InUse,
}

impl Class {
    /// The severity the report sorts by and prints: 3 orphaned, 2 leaked, 1 in use.
    pub fn severity(self) -> u8 {
        match self {
            Class::Orphaned => 3,
            Class::Leaked => 2,
            Class::InUse => 1,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Class::Orphaned => "orphaned",
            Class::Leaked => "leaked",
            Class::InUse => "in-use",
        }
    }
}
