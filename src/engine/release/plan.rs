//! The plan: per namespace and children first, what happens to each holder and why
//! (scope, in-use, propagation).

use std::collections::{HashMap, HashSet};

use super::{Action, NamespacePlan, Scope, Step};
use crate::engine::mountinfo::encode;
use crate::engine::namespace::FoundVia;
use crate::engine::propagation::PropagationTree;
use crate::engine::scan::{Holder, InUse, Match, Scan};
use crate::engine::table::path_is_under;

/// Builds the plan for `scan` within `scope`.
pub fn plan(scan: &Scan, scope: Scope) -> Vec<NamespacePlan> {
    let mut order: Vec<usize> = (0..scan.holders.len()).collect();
    // Namespace by namespace; deepest first, later (upper) mounts first at equal depth.
    order.sort_by_key(|&i| {
        let h = &scan.holders[i];
        (
            h.ns,
            std::cmp::Reverse(h.depth),
            std::cmp::Reverse(h.mount.id),
        )
    });
    let mut steps: Vec<Step> = scan
        .holders
        .iter()
        .map(|h| first_step(scan, h, &scope))
        .collect();
    let parents = Parents::of(scan);
    let shared = scan
        .holders
        .iter()
        .any(|h| h.parent.is_some_and(|p| p.peer_group.is_some()));
    let index = shared.then(|| PeerIndex::of(scan));
    let propagation: Vec<Propagation> = scan
        .holders
        .iter()
        .zip(&steps)
        .map(|(h, step)| match &index {
            Some(index) if !is_keep(step) => propagation_of(scan, h, index),
            _ => Propagation::Nowhere,
        })
        .collect();
    // Keeping one holder can make another unsafe to release: a peer's unmount would
    // propagate to it, it lies inside a kept copy, or it is a kept mount's parent. Each
    // round only turns steps into keeps, so this ends.
    loop {
        let releasing: HashSet<(usize, u64)> = scan
            .holders
            .iter()
            .zip(&steps)
            .filter(|(_, s)| !is_keep(s))
            .map(|(h, _)| (h.ns, h.mount.id))
            // A copy no path reaches goes with the unmount that propagates onto it.
            .chain(scan.unreachable.iter().copied())
            .collect();
        let mut changed = false;
        for (p, step) in propagation.iter().zip(steps.iter_mut()) {
            if !is_keep(step)
                && let Some(reason) = propagation_hazard(scan, p, &releasing)
            {
                *step = Step::Keep { reason };
                changed = true;
            }
        }
        changed |= keep_inside_kept_copies(scan, &parents, &mut steps);
        changed |= keep_parents_of_kept(scan, &parents, &mut steps);
        changed |= keep_devices_in_use(scan, &mut steps);
        if !changed {
            break;
        }
    }
    let mut plans: Vec<NamespacePlan> = Vec::new();
    for i in order {
        let step = steps[i].clone();
        match plans.last_mut() {
            Some(p) if p.ns == scan.holders[i].ns => p.actions.push(Action { holder: i, step }),
            _ => plans.push(NamespacePlan {
                ns: scan.holders[i].ns,
                actions: vec![Action { holder: i, step }],
            }),
        }
    }
    plans
}

/// A device with any mount kept (a use: the node's own mount, a container's volume, a
/// process's files, a namespace whose owner is unknown) stays busy whatever else goes:
/// releasing its copies would free nothing and take views from whoever reads through them
/// (an agent's HostToContainer view of a live volume). So its copies stay too, until every
/// remaining mount of it is a copy.
fn keep_devices_in_use(scan: &Scan, steps: &mut [Step]) -> bool {
    let mut in_use: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, (h, step)) in scan.holders.iter().zip(steps.iter()).enumerate() {
        if h.matched == Match::Device && is_keep(step) {
            in_use.entry(h.mount.dev).or_insert(i);
        }
    }
    let mut changed = false;
    for (h, step) in scan.holders.iter().zip(steps.iter_mut()) {
        if h.matched != Match::Device || is_keep(step) {
            continue;
        }
        if let Some(&kept) = in_use.get(&h.mount.dev) {
            let k = &scan.holders[kept];
            *step = Step::Keep {
                reason: format!(
                    "the device stays in use by mount {} at {} in mount namespace {}, which \
                     is kept: releasing this copy would free nothing",
                    k.mount.id,
                    encode(&k.mount_point),
                    scan.namespaces[k.ns].ns.inode
                ),
            };
            changed = true;
        }
    }
    changed
}

fn is_keep(step: &Step) -> bool {
    matches!(step, Step::Keep { .. })
}

/// Mount ids each namespace (by index) keeps.
fn kept_by_namespace(scan: &Scan, steps: &[Step]) -> HashMap<usize, Vec<u64>> {
    let mut kept: HashMap<usize, Vec<u64>> = HashMap::new();
    for (h, step) in scan.holders.iter().zip(steps) {
        if is_keep(step) {
            kept.entry(h.ns).or_default().push(h.mount.id);
        }
    }
    kept
}

/// A mount found only because it is inside a copy goes only if that copy goes.
fn keep_inside_kept_copies(scan: &Scan, parents: &Parents, steps: &mut [Step]) -> bool {
    let kept = kept_by_namespace(scan, steps);
    let mut changed = false;
    for (h, step) in scan.holders.iter().zip(steps.iter_mut()) {
        if h.matched != Match::InsideCopy || is_keep(step) {
            continue;
        }
        let copy = kept.get(&h.ns).and_then(|k| {
            k.iter()
                .find(|&&k| parents.has_ancestor(h.ns, h.mount.id, k))
        });
        if let Some(copy) = copy {
            *step = Step::Keep {
                reason: format!("it is inside mount {copy}, which is kept"),
            };
            changed = true;
        }
    }
    changed
}

/// A parent whose child is kept cannot be unmounted without detaching that child too.
fn keep_parents_of_kept(scan: &Scan, parents: &Parents, steps: &mut [Step]) -> bool {
    let kept = kept_by_namespace(scan, steps);
    let mut changed = false;
    for (h, step) in scan.holders.iter().zip(steps.iter_mut()) {
        if is_keep(step) {
            continue;
        }
        let child = kept.get(&h.ns).and_then(|k| {
            k.iter()
                .find(|&&k| parents.has_ancestor(h.ns, k, h.mount.id))
        });
        if let Some(child) = child {
            *step = Step::Keep {
                reason: format!("mount {child} inside it is kept"),
            };
            changed = true;
        }
    }
    changed
}

fn first_step(scan: &Scan, h: &Holder, scope: &Scope) -> Step {
    if let Some(in_use) = &h.in_use {
        let reason = match in_use {
            InUse::NamespaceRoot => "in use: it is the root of its mount namespace".to_string(),
            InUse::ProcessRoot { pids } => {
                format!("in use: root directory of {}", pid_list(scan, h.ns, pids))
            }
        };
        return Step::Keep { reason };
    }
    if let Some(reason) = scope.protects(scan, h.ns) {
        return Step::Keep { reason };
    }
    if let Some(reason) = unaccounted(scan, h.ns) {
        return Step::Keep { reason };
    }
    if h.matched == Match::Device
        && let Some(reason) = device_use(scan, h, scope)
    {
        return Step::Keep { reason };
    }
    if h.pins.is_empty() {
        Step::Unmount
    } else {
        Step::Detach {
            pins: h.pins.clone(),
        }
    }
}

/// Why a mount of a target device may be its namespace's own use of the device rather
/// than a copy, if it may be. A copy is what a namespace carries by accident: a mount under
/// the runtimes' or kubelet's directories, in a namespace rooted on the node's filesystem
/// (a service's, an old daemon's, one pinned by nsfs), or in a container under a bind of a
/// node directory that holds those (an agent's `/host`). Everything else may be someone's
/// use of the device and stays: the node's own namespace, a container's volume where the
/// runtime put it, a mount a container or a service made itself, whatever no record
/// explains. Processes using files on it make it a use too: detaching would leave the
/// device as busy as before.
fn device_use(scan: &Scan, h: &Holder, scope: &Scope) -> Option<String> {
    if !h.pins.is_empty() {
        let pids: Vec<i32> = h.pins.iter().map(|p| p.pid).collect();
        return Some(format!(
            "processes use files on it ({}): detaching it would leave the device busy; stop \
             them first (`mntreap why` names them)",
            pid_list(scan, h.ns, &pids)
        ));
    }
    if scan.reference_ns == Some(h.ns) && !scope.everywhere {
        return Some("the node's own namespace (pid 1's): the node's mount of it".into());
    }
    let n = &scan.namespaces[h.ns];
    let under_roots = |p: &[u8]| scope.copy_roots.iter().any(|r| path_is_under(p, r));
    let workloads: Vec<&crate::engine::release::Workload> = scope
        .workloads
        .iter()
        .filter(|w| w.ns == n.ns.inode)
        .collect();
    let point = encode(&h.mount_point);
    match workloads.as_slice() {
        [] if n.host_rooted != Some(true) => Some(
            "its namespace's root is not the node's (a container's) and no runtime record \
             names that container: whose volume this is is unknown"
                .into(),
        ),
        [] if !under_roots(&h.mount_point) => Some(format!(
            "{point} is outside the runtimes' and kubelet's directories: a mount this \
             namespace made or uses itself, not a copy of theirs"
        )),
        [] => None,
        [w] => carried_into(w, h, &scope.copy_roots),
        several => Some(format!(
            "several containers ({}) name this namespace: whose volume this is is unknown",
            several
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why a container's mount of the device is its own, unless a bind the runtime made of a
/// node directory above the runtimes' directories (the agent's `/host` of `/`) carried it
/// in from under those directories.
fn carried_into(
    w: &crate::engine::release::Workload,
    h: &Holder,
    roots: &[Vec<u8>],
) -> Option<String> {
    let point = encode(&h.mount_point);
    let Some(mounts) = &w.mounts else {
        return Some(format!(
            "{}'s namespace, whose mounts the runtime's records do not give: whose volume \
             this is is unknown",
            w.name
        ));
    };
    let point_bytes = trim_slashes(&h.mount_point);
    if mounts
        .iter()
        .any(|m| trim_slashes(&m.destination) == point_bytes)
    {
        return Some(format!(
            "{} mounted it at {point} (a volume it asked for): it uses the device; stop it \
             first",
            w.name
        ));
    }
    let carried = mounts.iter().any(|m| {
        let (destination, source) = (trim_slashes(&m.destination), trim_slashes(&m.source));
        // Only absolute paths name a place; `/` trims to nothing.
        if !m.source.starts_with(b"/") || !m.destination.starts_with(b"/") {
            return false;
        }
        let Some(rel) = point_bytes.strip_prefix(destination) else {
            return false;
        };
        if !rel.starts_with(b"/") {
            return false;
        }
        let on_node = [source, rel].concat();
        // The bind is of a directory at or above a runtime's (`/`, `/var/lib`, kubelet's
        // root), and the copy is of a mount under one.
        let above_a_root = roots.iter().any(|r| path_is_under(r, &m.source));
        above_a_root && roots.iter().any(|r| path_is_under(&on_node, r))
    });
    (!carried).then(|| {
        format!(
            "{} has it at {point}, which no bind of the node's directories explains: a mount \
             of its own",
            w.name
        )
    })
}

/// `path` without trailing slashes (`/` becomes empty: the prefix of every absolute path).
fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 0 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

/// A namespace found with no process and nothing in view that pins it (no descriptor of a
/// process in view, no nsfs bind in a table read): it may be one a runtime is setting up
/// between unshare and exec, or one held from out of view. Whose it is is unknown, so it is
/// left alone, whatever the scope.
fn unaccounted(scan: &Scan, ns: usize) -> Option<String> {
    let n = &scan.namespaces[ns].ns;
    (n.via != FoundVia::Process && n.pids.is_empty() && n.pinned_by.is_empty()).then(|| {
        "its namespace has no process and nothing in view pins it (a runtime may be setting \
         it up, or something out of view holds it): whose it is is unknown"
            .to_string()
    })
}

/// Parent links of the namespaces in a plan, to ask "is this mount inside that one". A
/// namespace's links are built when first asked for: most plans never ask (nothing kept,
/// nothing failed), and building them for every table costs more than the rest of a plan.
pub(super) struct Parents<'a> {
    scan: &'a Scan,
    built: std::sync::Mutex<HashMap<usize, HashMap<u64, u64>>>,
}

impl<'a> Parents<'a> {
    pub(super) fn of(scan: &'a Scan) -> Parents<'a> {
        Parents {
            scan,
            built: Default::default(),
        }
    }

    /// True when mount `child` has `ancestor` above it in namespace `ns`.
    pub(super) fn has_ancestor(&self, ns: usize, child: u64, ancestor: u64) -> bool {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        let Some(table) = self.scan.namespaces.get(ns).and_then(|n| n.table.as_ref()) else {
            return false;
        };
        let parents = built
            .entry(ns)
            .or_insert_with(|| table.mounts.iter().map(|m| (m.id, m.parent_id)).collect());
        let mut at = child;
        for _ in 0..parents.len() {
            match parents.get(&at) {
                Some(&p) if p == ancestor => return true,
                Some(&p) if p != at => at = p,
                _ => return false,
            }
        }
        false
    }
}

/// Where an unmount of a holder would propagate: to the mounts at the same place under
/// every peer and slave of its shared parent, and their slaves' slaves (shared subtrees,
/// kernel docs). Whether each of those is released too changes as the plan keeps more;
/// where they are does not, so it is worked out once per holder.
enum Propagation {
    /// Its parent is not shared: the unmount stays where it is.
    Nowhere,
    /// Where it would go is unknown: refuse, with this reason.
    Unknown(String),
    /// Its parent (`parent`, in peer group `group`) propagates the unmount to these.
    To {
        parent: u64,
        group: std::num::NonZeroU64,
        sites: Vec<Site>,
    },
}

/// A mount an unmount would reach by propagation.
struct Site {
    ns: usize,
    mount: u64,
    mount_point: String,
}

/// The members and slaves of each peer group in the scan, the propagation tree between
/// the groups, and each mount's children: built once for a plan whose holders have shared
/// parents.
struct PeerIndex {
    by_group: HashMap<std::num::NonZeroU64, Vec<(usize, usize)>>,
    tree: PropagationTree,
    children: HashMap<(usize, u64), Vec<usize>>,
}

impl PeerIndex {
    fn of(scan: &Scan) -> PeerIndex {
        let mut by_group: HashMap<std::num::NonZeroU64, Vec<(usize, usize)>> = HashMap::new();
        let mut children: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
        for (ns, n) in scan.namespaces.iter().enumerate() {
            let Some(table) = n.table.as_ref() else {
                continue;
            };
            for (i, m) in table.mounts.iter().enumerate() {
                for g in m.peer_group.iter().chain(&m.master) {
                    by_group.entry(*g).or_default().push((ns, i));
                }
                if m.parent_id != m.id {
                    children.entry((ns, m.parent_id)).or_default().push(i);
                }
            }
        }
        let tree = PropagationTree::of(scan.namespaces.iter().filter_map(|n| n.table.as_ref()));
        PeerIndex {
            by_group,
            tree,
            children,
        }
    }

    /// Every mount an event on a member of `group` propagates to: the members and slaves
    /// of every group of its propagation tree, whatever each member has mounted.
    fn propagation_tree(&self, group: std::num::NonZeroU64) -> Vec<(usize, usize)> {
        let mut members: Vec<(usize, usize)> = self
            .tree
            .reach([group])
            .into_iter()
            .flat_map(|g| self.by_group.get(&g).into_iter().flatten().copied())
            .collect();
        // In table order, each once: the refusal a plan gives names the same site each run.
        members.sort_unstable();
        members.dedup();
        members
    }
}

fn propagation_of(scan: &Scan, h: &Holder, index: &PeerIndex) -> Propagation {
    let Some(parent) = h.parent else {
        return Propagation::Nowhere;
    };
    let Some(group) = parent.peer_group else {
        return Propagation::Nowhere;
    };
    let Some(parent_table) = scan.namespaces[h.ns].table.as_ref() else {
        return Propagation::Nowhere;
    };
    if parent_table.partial {
        return Propagation::Unknown(format!(
            "its parent mount {} is shared (peer group {group}) and --paths-only did not read \
             the other namespaces' mounts, so where the unmount would propagate is unknown; \
             run without --paths-only",
            parent.id
        ));
    }
    // Peers may live in namespaces the scan could not read or see at all.
    if scan.incomplete() {
        return Propagation::Unknown(format!(
            "its parent mount {} is shared (peer group {group}) and the scan is incomplete \
             (see the notes), so where the unmount would propagate is unknown",
            parent.id
        ));
    }
    if let Some(why) = &scan.peers_unseen {
        return Propagation::Unknown(format!(
            "its parent mount {} is shared (peer group {group}) and {why}, so where the \
             unmount would propagate is unknown",
            parent.id
        ));
    }
    let Some(location) = fs_location(
        parent_table.root(&parent),
        parent_table.mount_point(&parent),
        &h.mount_point,
    ) else {
        return Propagation::Nowhere;
    };
    let mut sites = Vec::new();
    for (ns, p) in index.propagation_tree(group) {
        let table = scan.namespaces[ns]
            .table
            .as_ref()
            .expect("indexed from a table");
        let peer = &table.mounts[p];
        if ns == h.ns && peer.id == parent.id {
            continue;
        }
        for &c in index.children.get(&(ns, peer.id)).into_iter().flatten() {
            let child = &table.mounts[c];
            let same_place = fs_location(
                table.root(peer),
                table.mount_point(peer),
                table.mount_point(child),
            )
            .is_some_and(|l| l == location);
            if same_place {
                sites.push(Site {
                    ns,
                    mount: child.id,
                    mount_point: crate::engine::mountinfo::encode(table.mount_point(child)),
                });
            }
        }
    }
    Propagation::To {
        parent: parent.id,
        group,
        sites,
    }
}

/// If unmounting the holder would also unmount a mount that is not being released (a
/// peer's copy at the same place), or where it would propagate is unknown: why to refuse.
fn propagation_hazard(
    scan: &Scan,
    propagation: &Propagation,
    releasing: &HashSet<(usize, u64)>,
) -> Option<String> {
    match propagation {
        Propagation::Nowhere => None,
        Propagation::Unknown(why) => Some(why.clone()),
        Propagation::To {
            parent,
            group,
            sites,
        } => sites
            .iter()
            .find(|s| !releasing.contains(&(s.ns, s.mount)))
            .map(|s| {
                format!(
                    "its parent mount {parent} is shared (peer group {group}): unmounting it \
                     would also unmount mount {} at {} in mount namespace {}, which is not \
                     being released",
                    s.mount, s.mount_point, scan.namespaces[s.ns].ns.inode
                )
            }),
    }
}

/// Where a child mount point sits inside its parent's filesystem: the parent's root plus
/// the child's path relative to the parent's mount point.
fn fs_location(parent_root: &[u8], parent_point: &[u8], child_point: &[u8]) -> Option<Vec<u8>> {
    if !path_is_under(child_point, parent_point) {
        return None;
    }
    let rel = if parent_point == b"/" {
        &child_point[1..]
    } else {
        child_point[parent_point.len()..]
            .strip_prefix(b"/")
            .unwrap_or_default()
    };
    let mut loc = parent_root.to_vec();
    if !loc.ends_with(b"/") {
        loc.push(b'/');
    }
    loc.extend_from_slice(rel);
    Some(loc)
}

fn pid_list(scan: &Scan, ns: usize, pids: &[i32]) -> String {
    let procs = scan.processes(ns);
    pids.iter()
        .map(|pid| match procs.iter().find(|p| p.pid == *pid) {
            Some(p) => format!("{pid} ({})", p.comm),
            None => pid.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
