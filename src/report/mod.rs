//! Reports: the JSON documents (schema in docs/json.md) and the human tables.
//!
//! Paths appear decoded (a space is a space). Paths that are not UTF-8 are written with
//! mountinfo's octal escapes for the offending bytes, so nothing is lost or altered.

pub mod containers;
pub mod doc;
pub mod output;
pub mod why;

use doc::{
    ActionDoc, ActionResult, HolderDoc, HolderState, NamespaceDoc, PidDoc, ReleaseDoc, ScanDoc,
    ScanSummary,
};

use crate::engine::mountinfo::encode;
use crate::engine::namespace::FoundVia;
use crate::engine::release::Outcome;
use crate::engine::scan::{Holder, Scan};

/// A path for JSON: the real string when it is UTF-8, escaped bytes otherwise.
pub fn path_json(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => encode(bytes),
    }
}

/// What a holder is, in a path scan.
pub fn state(scan: &Scan, h: &Holder) -> HolderState {
    if h.in_use.is_some() {
        HolderState::InUse
    } else if scan.namespaces[h.ns].ns.own {
        HolderState::Host
    } else if !h.pins.is_empty() {
        HolderState::Pinned
    } else {
        HolderState::Leaked
    }
}

fn state_word(s: HolderState) -> &'static str {
    match s {
        HolderState::InUse => "in-use",
        HolderState::Host => "host",
        HolderState::Pinned => "pinned",
        HolderState::Leaked => "leaked",
    }
}

/// One holder's document.
pub fn holder_doc(scan: &Scan, h: &Holder) -> HolderDoc {
    let ns = &scan.namespaces[h.ns];
    HolderDoc {
        mnt_ns: ns.ns.inode,
        own_namespace: ns.ns.own,
        mount_id: h.mount.id,
        mount_id_unique: h.mount.unique_id.map(std::num::NonZeroU64::get),
        parent_id: h.mount.parent_id,
        mount_point: path_json(&h.mount_point),
        root: path_json(&h.root),
        dev: format!("{}:{}", h.mount.dev.0, h.mount.dev.1),
        fs_type: h.fs_type.clone(),
        source: path_json(&h.source),
        matched: h.matched,
        state: state(scan, h),
        in_use: h.in_use.clone(),
        pins: h.pins.clone(),
        pids: ns
            .processes
            .iter()
            .map(|p| PidDoc {
                pid: p.pid,
                comm: p.comm.clone(),
            })
            .collect(),
        ns_via: ns.ns.via,
        ns_pinned_by: ns.ns.pinned_by.clone(),
        role: None,
        container: None,
        class: None,
        severity: None,
        owner: None,
        action: None,
        reason: None,
    }
}

fn devices_doc(scan: &Scan) -> Vec<String> {
    scan.devices
        .iter()
        .map(|(major, minor)| format!("{major}:{minor}"))
        .collect()
}

fn targets_doc(scan: &Scan) -> Vec<String> {
    scan.targets
        .iter()
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// The `scan --json` document.
pub fn scan_doc(scan: &Scan) -> ScanDoc {
    let namespaces: std::collections::BTreeSet<u64> = scan
        .holders
        .iter()
        .map(|h| scan.namespaces[h.ns].ns.inode)
        .collect();
    ScanDoc {
        backend: scan.backend,
        paths_only: scan.paths_only,
        targets: targets_doc(scan),
        devices: devices_doc(scan),
        holders: scan.holders.iter().map(|h| holder_doc(scan, h)).collect(),
        summary: ScanSummary {
            holders: scan.holders.len(),
            namespaces: namespaces.len(),
            foreign_holders: scan.foreign_holders().count(),
            namespaces_scanned: scan.namespaces.len(),
        },
        notes: scan.all_notes().into_iter().cloned().collect(),
        runtime: None,
        containers: None,
    }
}

/// Per holder of a scan (by index), what `release` does with it and why.
pub type Plan = [(doc::HolderAction, String)];

/// Adds each holder's planned action and its reason to a scan document.
pub fn annotate_plan(doc: &mut doc::ScanDoc, plan: &Plan) {
    for (h, (action, reason)) in doc.holders.iter_mut().zip(plan) {
        h.action = Some(*action);
        h.reason = Some(reason.clone());
    }
}

/// The line under a holder that says what `release` does with it.
pub(crate) fn plan_line(plan: &Plan, holder: usize) -> String {
    plan.get(holder)
        .map(|(action, reason)| format!("    release: {} ({reason})\n", action.word()))
        .unwrap_or_default()
}

/// The human table for a scan.
pub fn scan_text(scan: &Scan, plan: &Plan) -> String {
    let mut out = String::new();
    if scan.holders.is_empty() {
        out.push_str("No mount namespace holds the target.\n");
    } else {
        out.push_str(&format!(
            "{:<12} {:>8}  {:<11} {:<8} {:<10} {:<40} PIDS\n",
            "MNT_NS", "MOUNT_ID", "MATCH", "STATE", "FSTYPE", "MOUNT_POINT"
        ));
        for (i, h) in scan.holders.iter().enumerate() {
            let ns = &scan.namespaces[h.ns];
            let matched = match h.matched {
                crate::engine::scan::Match::Path => "path",
                crate::engine::scan::Match::Identity => "identity",
                crate::engine::scan::Match::InsideCopy => "inside-copy",
                crate::engine::scan::Match::Device => "device",
            };
            out.push_str(&format!(
                "{:<12} {:>8}  {:<11} {:<8} {:<10} {:<40} {}\n",
                ns.ns.inode,
                h.mount.id,
                matched,
                state_word(state(scan, h)),
                h.fs_type,
                encode(&h.mount_point),
                pids_text(scan, h.ns, 4),
            ));
            if let Some(in_use) = &h.in_use {
                out.push_str(&format!("    in use: {}\n", in_use_text(in_use)));
            }
            if !h.pins.is_empty() {
                out.push_str(&format!(
                    "    used by {}: the filesystem stays alive until they let go\n",
                    pins_text(&h.pins)
                ));
            }
            out.push_str(&plan_line(plan, i));
        }
        let foreign = scan.foreign_holders().count();
        out.push_str(&format!(
            "{} holder(s), {} in other namespaces; backend {}.\n",
            scan.holders.len(),
            foreign,
            match scan.backend {
                crate::engine::source::Backend::Listmount => "listmount",
                crate::engine::source::Backend::Mountinfo => "mountinfo",
            }
        ));
    }
    for n in &scan.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn in_use_text(in_use: &crate::engine::scan::InUse) -> String {
    match in_use {
        crate::engine::scan::InUse::NamespaceRoot => {
            "root of its mount namespace (never touched)".into()
        }
        crate::engine::scan::InUse::ProcessRoot { pids } => {
            format!("root directory of pid(s) {} (never touched)", join(pids))
        }
    }
}

fn pins_text(pins: &[crate::engine::scan::Pin]) -> String {
    pins.iter()
        .map(|p| format!("pid {} ({})", p.pid, doc::pin_word(p.via)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A namespace's member processes for text reports: `pid(comm)`, at most `max`, then `+N`.
pub fn pids_text(scan: &Scan, ns: usize, max: usize) -> String {
    let procs = scan.processes(ns);
    let mut s = procs
        .iter()
        .take(max)
        .map(|p| format!("{}({})", p.pid, p.comm))
        .collect::<Vec<_>>()
        .join(",");
    if procs.len() > max {
        s.push_str(&format!(",+{}", procs.len() - max));
    }
    s
}

/// The `release --json` document.
pub fn release_doc(release: &crate::engine::release::Release) -> ReleaseDoc {
    let (scan, plans, results) = (&release.scan, &release.plans, &release.results);
    let namespaces = plans
        .iter()
        .map(|p| {
            let ns = &scan.namespaces[p.ns].ns;
            let actions = p
                .actions
                .iter()
                .filter_map(|a| results.iter().find(|r| r.holder == a.holder))
                .map(|r| action_doc(&scan.holders[r.holder], &r.outcome))
                .collect();
            NamespaceDoc {
                mnt_ns: ns.inode,
                own_namespace: ns.own,
                pid_used: ns.pid_used,
                via: ns.via,
                pinned_by: ns.pinned_by.clone(),
                actions,
            }
        })
        .collect();
    ReleaseDoc {
        dry_run: release.dry_run,
        paths_only: scan.paths_only,
        backend: scan.backend,
        targets: targets_doc(scan),
        devices: devices_doc(scan),
        namespaces,
        remaining: release
            .remaining()
            .into_iter()
            .map(|h| holder_doc(scan, h))
            .collect(),
        notes: all_notes(release, true),
        container: None,
    }
}

fn action_doc(h: &Holder, outcome: &Outcome) -> ActionDoc {
    let (result, pins, reason, error) = match outcome {
        Outcome::Unmounted => (ActionResult::Unmounted, None, None, None),
        Outcome::Detached { pins } => (ActionResult::Detached, Some(pins.clone()), None, None),
        Outcome::Kept { reason } => (ActionResult::Kept, None, Some(reason.clone()), None),
        Outcome::Gone => (ActionResult::Gone, None, None, None),
        Outcome::Failed { error } => (ActionResult::Failed, None, None, Some(error.to_string())),
        Outcome::WouldUnmount => (ActionResult::WouldUnmount, None, None, None),
        Outcome::WouldDetach { pins } => {
            (ActionResult::WouldDetach, Some(pins.clone()), None, None)
        }
    };
    ActionDoc {
        mount_id: h.mount.id,
        mount_point: path_json(&h.mount_point),
        fs_type: h.fs_type.clone(),
        matched: h.matched,
        result,
        pins,
        reason,
        error,
    }
}

/// The human report for a release.
pub fn release_text(release: &crate::engine::release::Release) -> String {
    let (scan, plans, results) = (&release.scan, &release.plans, &release.results);
    let remaining = release.remaining();
    let mut out = String::new();
    if plans.is_empty() {
        out.push_str("No mount namespace holds the target; nothing to do.\n");
    }
    for p in plans {
        let ns = &scan.namespaces[p.ns].ns;
        let entered = match ns.via {
            FoundVia::Process => format!("entered via pid {}", ns.pid_used),
            FoundVia::KernelList => "no process: entered through the kernel's list".into(),
            FoundVia::Descriptor => "no process: entered through a pinning descriptor".into(),
        };
        out.push_str(&format!(
            "mount namespace {}{} ({entered}):\n",
            ns.inode,
            if ns.own { " [own]" } else { "" },
        ));
        for a in &p.actions {
            let Some(r) = results.iter().find(|r| r.holder == a.holder) else {
                continue;
            };
            let h = &scan.holders[a.holder];
            out.push_str(&format!(
                "  {:<14} {:>8} {}\n",
                outcome_word(&r.outcome),
                h.mount.id,
                encode(&h.mount_point)
            ));
            if let Some(detail) = outcome_detail(&r.outcome) {
                out.push_str(&format!("                 {detail}\n"));
            }
        }
    }
    if !release.dry_run {
        if remaining.is_empty() {
            out.push_str("Nothing in scope holds the target any more.\n");
        } else {
            out.push_str(&format!("{} holder(s) remain:\n", remaining.len()));
            for h in remaining {
                out.push_str(&format!(
                    "  mount namespace {} mount {} {} ({})\n",
                    scan.namespaces[h.ns].ns.inode,
                    h.mount.id,
                    encode(&h.mount_point),
                    state_word(state(scan, h))
                ));
            }
        }
    }
    for n in all_notes(release, false) {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// Notes of the scan and of the re-check after a release, each once; the scan's detail
/// notes only when `details` (JSON).
fn all_notes(release: &crate::engine::release::Release, details: bool) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    let detail: &[String] = if details {
        &release.scan.detail_notes
    } else {
        &[]
    };
    for n in release
        .scan
        .notes
        .iter()
        .chain(&release.notes)
        .chain(detail)
    {
        if !notes.contains(n) {
            notes.push(n.clone());
        }
    }
    notes
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Unmounted => "unmounted",
        Outcome::Detached { .. } => "detached",
        Outcome::Kept { .. } => "kept",
        Outcome::Gone => "already-gone",
        Outcome::Failed { .. } => "FAILED",
        Outcome::WouldUnmount => "would-unmount",
        Outcome::WouldDetach { .. } => "would-detach",
    }
}

fn outcome_detail(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Detached { pins } => Some(format!(
            "removed from the namespace; the filesystem stays alive while {} use(s) it",
            pins_text(pins)
        )),
        Outcome::Kept { reason } => Some(reason.clone()),
        Outcome::Failed { error } => Some(error.to_string()),
        Outcome::WouldDetach { pins } => Some(format!(
            "used by {}; the filesystem would stay alive until they let go",
            pins_text(pins)
        )),
        _ => None,
    }
}
