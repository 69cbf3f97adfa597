//! The plan: per namespace and children first, what happens to each holder and why
//! (scope, in-use, propagation).

use std::collections::{HashMap, HashSet};

use super::{Action, NamespacePlan, Scope, Step};
use crate::engine::mountinfo::encode;
use crate::engine::namespace::FoundVia;
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
    let steps: Vec<Step> = scan
        .holders
        .iter()
        .map(|h| first_step(scan, h, &scope))
        .collect();
    let releasing: HashSet<(usize, u64)> = scan
        .holders
        .iter()
        .zip(&steps)
        .filter(|(_, s)| !matches!(s, Step::Keep { .. }))
        .map(|(h, _)| (h.ns, h.mount.id))
        .collect();

    let parents = Parents::of(scan);
    let mut plans: Vec<NamespacePlan> = Vec::new();
    for i in order {
        let h = &scan.holders[i];
        let mut step = steps[i].clone();
        if !matches!(step, Step::Keep { .. })
            && let Some(reason) = propagation_hazard(scan, h, &releasing)
        {
            step = Step::Keep { reason };
        }
        match plans.last_mut() {
            Some(p) if p.ns == h.ns => p.actions.push(Action { holder: i, step }),
            _ => plans.push(NamespacePlan {
                ns: h.ns,
                actions: vec![Action { holder: i, step }],
            }),
        }
    }
    // A mount found only because it is inside a copy goes only if that copy goes.
    for p in &mut plans {
        let kept_copies = kept_mounts(scan, p);
        for a in &mut p.actions {
            let h = &scan.holders[a.holder];
            if h.matched != crate::engine::scan::Match::InsideCopy
                || matches!(a.step, Step::Keep { .. })
            {
                continue;
            }
            if let Some(copy) = kept_copies
                .iter()
                .find(|&&k| parents.has_ancestor(h.ns, h.mount.id, k))
            {
                a.step = Step::Keep {
                    reason: format!("it is inside mount {copy}, which is kept"),
                };
            }
        }
    }
    // A parent whose child is kept cannot be unmounted without detaching that child too.
    for p in &mut plans {
        let kept = kept_mounts(scan, p);
        for a in &mut p.actions {
            if matches!(a.step, Step::Keep { .. }) {
                continue;
            }
            let h = &scan.holders[a.holder];
            if let Some(child) = kept
                .iter()
                .find(|&&k| parents.has_ancestor(h.ns, k, h.mount.id))
            {
                a.step = Step::Keep {
                    reason: format!("mount {child} inside it is kept"),
                };
            }
        }
    }
    plans
}

/// Mount ids the plan for one namespace keeps.
fn kept_mounts(scan: &Scan, p: &NamespacePlan) -> Vec<u64> {
    p.actions
        .iter()
        .filter(|a| matches!(a.step, Step::Keep { .. }))
        .map(|a| scan.holders[a.holder].mount.id)
        .collect()
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

/// Why a mount of a target device is its namespace's own use of the device rather than a
/// copy, if it may be. A copy is what a namespace got by copying the host's mounts (a
/// service's or a daemon's namespace, an agent's bind of the host's `/`); a use is a mount
/// a container asked for (its volume), or one in a container's namespace that no runtime
/// record explains. Processes using files on it make it a use too: detaching would leave
/// the device as busy as before.
fn device_use(scan: &Scan, h: &Holder, scope: &Scope) -> Option<String> {
    if !h.pins.is_empty() {
        let pids: Vec<i32> = h.pins.iter().map(|p| p.pid).collect();
        return Some(format!(
            "processes use files on it ({}): detaching it would leave the device busy; stop              them first (`mntreap why` names them)",
            pid_list(scan, h.ns, &pids)
        ));
    }
    let n = &scan.namespaces[h.ns];
    let Some(w) = scope.workloads.iter().find(|w| w.ns == n.ns.inode) else {
        return (n.host_rooted != Some(true)).then(|| {
            "its namespace's root is not the host's (a container's) and no runtime record              names that container: whose volume this is is unknown"
                .to_string()
        });
    };
    let Some(points) = &w.mount_points else {
        return Some(format!(
            "{}'s namespace, whose mounts the runtime's records do not give: whose volume              this is is unknown",
            w.name
        ));
    };
    // The volume itself, or a mount inside the volume where the runtime put the device.
    let volume = points.iter().find(|p| {
        h.mount_point == **p
            || (path_is_under(&h.mount_point, p)
                && scan
                    .holders
                    .iter()
                    .any(|o| o.ns == h.ns && o.matched == Match::Device && o.mount_point == **p))
    })?;
    Some(format!(
        "{} mounted it at {} (a volume it asked for): it uses the device; stop it first",
        w.name,
        encode(volume)
    ))
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

/// Parent links of the namespaces in a plan, to ask "is this mount inside that one".
pub(super) struct Parents(HashMap<usize, HashMap<u64, u64>>);

impl Parents {
    pub(super) fn of(scan: &Scan) -> Parents {
        let namespaces: HashSet<usize> = scan.holders.iter().map(|h| h.ns).collect();
        Parents(
            namespaces
                .into_iter()
                .filter_map(|ns| {
                    let table = scan.namespaces[ns].table.as_ref()?;
                    Some((
                        ns,
                        table.mounts.iter().map(|m| (m.id, m.parent_id)).collect(),
                    ))
                })
                .collect(),
        )
    }

    /// True when mount `child` has `ancestor` above it in namespace `ns`.
    pub(super) fn has_ancestor(&self, ns: usize, child: u64, ancestor: u64) -> bool {
        let Some(parents) = self.0.get(&ns) else {
            return false;
        };
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

/// An unmount under a shared parent propagates to the mounts at the same place under every
/// peer and slave of that parent (shared subtrees, kernel docs). If any of those is not
/// being released too, unmounting here would remove it as well: refuse.
fn propagation_hazard(
    scan: &Scan,
    h: &Holder,
    releasing: &HashSet<(usize, u64)>,
) -> Option<String> {
    let parent = h.parent?;
    let group = parent.peer_group?;
    let parent_table = scan.namespaces[h.ns].table.as_ref()?;
    if parent_table.partial {
        return Some(format!(
            "its parent mount {} is shared (peer group {group}) and --paths-only did not read \
             the other namespaces' mounts, so where the unmount would propagate is unknown; \
             run without --paths-only",
            parent.id
        ));
    }
    // Peers may live in namespaces the scan could not read or see at all.
    if scan.incomplete() {
        return Some(format!(
            "its parent mount {} is shared (peer group {group}) and the scan is incomplete \
             (see the notes), so where the unmount would propagate is unknown",
            parent.id
        ));
    }
    if let Some(why) = &scan.peers_unseen {
        return Some(format!(
            "its parent mount {} is shared (peer group {group}) and {why}, so where the \
             unmount would propagate is unknown",
            parent.id
        ));
    }
    let location = fs_location(
        parent_table.root(&parent),
        parent_table.mount_point(&parent),
        &h.mount_point,
    )?;
    for (ns, scanned) in scan.namespaces.iter().enumerate() {
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        for peer in &table.mounts {
            let related = peer.peer_group == Some(group) || peer.master == Some(group);
            if !related || (ns == h.ns && peer.id == parent.id) {
                continue;
            }
            for child in table.mounts.iter().filter(|c| c.parent_id == peer.id) {
                let same_place = fs_location(
                    table.root(peer),
                    table.mount_point(peer),
                    table.mount_point(child),
                )
                .is_some_and(|l| l == location);
                if same_place && !releasing.contains(&(ns, child.id)) {
                    return Some(format!(
                        "its parent mount {} is shared (peer group {group}): unmounting it \
                         would also unmount mount {} at {} in mount namespace {}, which is not \
                         being released",
                        parent.id,
                        child.id,
                        crate::engine::mountinfo::encode(table.mount_point(child)),
                        scanned.ns.inode
                    ));
                }
            }
        }
    }
    None
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
