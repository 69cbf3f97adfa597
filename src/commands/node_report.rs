//! `mntreap scan` with no target: the node-wide report of leaked and orphaned container
//! mounts.

use super::{Config, Exit, Failure, print};
use crate::engine::mountinfo::encode;
use crate::ops::node::{findings, node_scan};
use crate::report::containers::container_ref;
use crate::report::doc::Class;
use crate::report::doc::{DeviceDoc, HolderDoc, NodeReportDoc, NodeSummary, to_text};
use crate::report::holder_doc;
use crate::runtime::ContainerRuntime;

/// `mntreap scan` with no target.
pub fn command(e: &Config) -> Result<Exit, Failure> {
    report(e, e.connect()?.as_ref())
}

/// `mntreap scan --npd`: the node-wide report as node-problem-detector's custom plugins
/// speak (deploy/node-problem-detector/): one short line, exit 0 ok or 1 problem; a scan
/// that cannot run exits 2, which the detector reads as unknown.
pub fn problem_line(e: &Config) -> Result<Exit, Failure> {
    // The detector reads stdout only: a failure is an `unknown` line there, not silence.
    problem(e).or_else(|err| {
        print(&format!("unknown: {err}\n"));
        Ok(Exit::Usage)
    })
}

fn problem(e: &Config) -> Result<Exit, Failure> {
    let runtime = e.connect()?;
    let daemon = runtime.daemon();
    let (containers, scan) = node_facts(e, runtime.as_ref())?;
    let Some(scan) = scan else {
        print("ok: no container runtime on this node\n");
        return Ok(Exit::Clean);
    };
    let found = findings(&scan, daemon, &containers, &runtime.owner_of(&containers));
    let count = |class: Class| found.iter().filter(|f| f.class == class).count();
    let (orphaned, leaked) = (count(Class::Orphaned), count(Class::Leaked));
    let devices = held_devices(e, runtime.as_ref(), &containers, &scan)?
        .iter()
        .filter(|d| device_has_copies(d))
        .count();
    let incomplete = scan.incomplete() || daemon.unsure_note().is_some();
    // Kept short: the detector cuts a plugin's output at 80 characters by default.
    let (line, exit) = match (orphaned + leaked, incomplete) {
        (0, _) if devices > 0 => (
            format!("problem: {devices} block device(s) held by copies (mntreap scan)"),
            Exit::Remaining,
        ),
        (0, false) => (
            "ok: no leaked or orphaned container mounts".to_string(),
            Exit::Clean,
        ),
        // Unknown, not a problem: the detector leaves the condition as it was.
        (0, true) => (
            "unknown: the scan is incomplete (mntreap scan)".to_string(),
            Exit::Usage,
        ),
        (_, _) => (
            format!(
                "problem: {leaked} leaked, {orphaned} orphaned container mounts{} (mntreap scan)",
                if devices > 0 {
                    format!(", {devices} device(s)")
                } else {
                    String::new()
                }
            ),
            Exit::Remaining,
        ),
    };
    print(&format!("{line}\n"));
    Ok(exit)
}

/// The runtime's containers and the node-wide scan (`None`: no runtime root on this node).
/// A node without Docker (no daemon, no data root) still gets the other runtimes looked at.
fn node_facts(
    e: &Config,
    runtime: &dyn ContainerRuntime,
) -> Result<
    (
        Vec<crate::runtime::model::Container>,
        Option<crate::engine::scan::Scan>,
    ),
    Failure,
> {
    let daemon = runtime.daemon();
    let containers = if !runtime.online() && !daemon.root.exists() {
        Vec::new()
    } else {
        runtime.list()?
    };
    let base = e.request(&[], Vec::new())?;
    let mut roots = runtime.roots();
    roots.extend(e.runtime_roots.iter().cloned());
    let scan = node_scan(&base, daemon, &containers, &roots, None)?;
    Ok((containers, scan))
}

/// The node-wide report for one runtime.
fn report(e: &Config, runtime: &dyn ContainerRuntime) -> Result<Exit, Failure> {
    let daemon = runtime.daemon();
    let (containers, scan) = node_facts(e, runtime)?;
    let Some(mut scan) = scan else {
        print(&format!(
            "No container runtime found on this node: no dockerd at {}, and none of {}, \
             /var/lib/containerd, /run/containerd, /var/lib/kubelet exists.\n",
            daemon.socket.display(),
            daemon.root.display()
        ));
        return Ok(Exit::Clean);
    };
    let found = findings(&scan, daemon, &containers, &runtime.owner_of(&containers));
    let devices = held_devices(e, runtime, &containers, &scan)?;
    // What the agent's sweep would do with each finding now: its own selection and plan.
    let plan = crate::ops::sweep_decisions(&mut scan, daemon, &found);
    let unsure = daemon.unsure_note();
    let facts = Facts {
        scan: &scan,
        daemon,
        containers: &containers,
        found: &found,
        plan: &plan,
        devices: &devices,
    };
    if e.json {
        print(&json(&facts));
    } else {
        print(&text(&facts, unsure.as_deref()));
    }
    let denied = super::denied_note(&scan);
    let devices_held = devices.iter().any(device_has_copies);
    Ok(
        if found.is_empty() && !devices_held && unsure.is_none() && denied.is_none() {
            Exit::Clean
        } else {
            Exit::Remaining
        },
    )
}

/// What the report shows: the scan, the findings and, per finding, the sweep's decision;
/// the devices only other namespaces mount, with `release --device`'s decisions.
struct Facts<'a> {
    scan: &'a crate::engine::scan::Scan,
    daemon: &'a crate::runtime::model::Daemon,
    containers: &'a [crate::runtime::model::Container],
    found: &'a [crate::ops::node::Finding],
    plan: &'a [(crate::report::doc::HolderAction, String)],
    devices: &'a [DeviceDoc],
}

/// The block devices that only other namespaces mount (read from the node scan's tables),
/// each with every mount of it and what `release --device` would do: its own plan, as a
/// dry run (one more scan, only when there is such a device).
fn held_devices(
    e: &Config,
    runtime: &dyn ContainerRuntime,
    containers: &[crate::runtime::model::Container],
    scan: &crate::engine::scan::Scan,
) -> Result<Vec<DeviceDoc>, Failure> {
    let devices = crate::ops::device::held_elsewhere(scan);
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let roots = super::device::copy_roots(e, Some(runtime))?;
    let rel = crate::ops::device::release_devices(
        &e.base,
        Some(runtime),
        &devices,
        &roots,
        Some(containers),
        false,
        true,
    )?;
    let decisions = crate::ops::Decisions::of_release(&rel, "release --device");
    Ok(devices
        .iter()
        .map(|&dev| {
            let mut holders = Vec::new();
            let mut volume = None;
            for (i, h) in rel.scan.holders.iter().enumerate() {
                if h.mount.dev != dev {
                    continue;
                }
                volume = volume.or_else(|| crate::ops::device::volume_label(&h.mount_point));
                let mut doc = holder_doc(&rel.scan, h);
                let (action, reason) = decisions.of(&rel.scan, i);
                doc.action = Some(action);
                doc.reason = Some(reason);
                holders.push(doc);
            }
            DeviceDoc {
                dev: format!("{}:{}", dev.0, dev.1),
                block: crate::engine::busy::BusyTarget::of_dev(dev).block,
                volume,
                holders,
            }
        })
        .collect())
}

/// Whether `release --device` would free the device of at least one copy.
fn device_has_copies(d: &DeviceDoc) -> bool {
    d.holders
        .iter()
        .any(|h| h.action != Some(crate::report::doc::HolderAction::Keep))
}

fn json(facts: &Facts) -> String {
    let Facts {
        scan,
        daemon,
        containers,
        found,
        plan,
        devices,
    } = *facts;
    let items: Vec<HolderDoc> = found
        .iter()
        .zip(plan)
        .map(|(f, (action, reason))| {
            let mut v = holder_doc(scan, &scan.holders[f.holder]);
            v.class = Some(f.class);
            v.severity = Some(f.class.severity());
            v.owner = Some(f.owner.clone());
            v.container = f.container.as_ref().map(container_ref);
            v.action = Some(*action);
            v.reason = Some(reason.clone());
            v
        })
        .collect();
    let count = |class: Class| found.iter().filter(|f| f.class == class).count();
    to_text(&NodeReportDoc {
        runtime: daemon.clone(),
        backend: scan.backend,
        roots: scan
            .targets
            .iter()
            .map(|t| t.to_string_lossy().into_owned())
            .collect(),
        findings: items,
        devices: devices.to_vec(),
        summary: NodeSummary {
            orphaned: count(Class::Orphaned),
            leaked: count(Class::Leaked),
            in_use: count(Class::InUse),
            containers: containers.len(),
            namespaces_scanned: scan.namespaces.len(),
            devices_held: devices.iter().filter(|d| device_has_copies(d)).count(),
        },
        notes: scan.all_notes().into_iter().cloned().collect(),
    })
}

fn text(facts: &Facts, unsure: Option<&str>) -> String {
    let Facts {
        scan,
        containers,
        found,
        plan,
        devices,
        ..
    } = *facts;
    let mut out = String::new();
    if found.is_empty() {
        out.push_str(&format!(
            "No leaked or orphaned container mounts ({} containers, {} namespaces).\n",
            containers.len(),
            scan.namespaces.len()
        ));
    } else {
        out.push_str(&format!(
            "{:<9} {:<14} {:<20} {:<11} {:>7}  {:<60} PIDS\n",
            "CLASS", "CONTAINER", "NAME", "MNT_NS", "MOUNT", "MOUNT_POINT"
        ));
        for (i, f) in found.iter().enumerate() {
            let h = &scan.holders[f.holder];
            let (id, name) = match &f.container {
                Some(c) => (
                    crate::runtime::scope::short_id(&c.id).to_string(),
                    c.name.clone(),
                ),
                None => (
                    crate::runtime::scope::short_id(&f.owner).to_string(),
                    "(gone)".into(),
                ),
            };
            out.push_str(&format!(
                "{:<9} {:<14} {:<20} {:<11} {:>7}  {:<60} {}\n",
                f.class.word(),
                id,
                name,
                scan.namespaces[h.ns].ns.inode,
                h.mount.id,
                encode(&h.mount_point),
                crate::report::pids_text(scan, h.ns, 4)
            ));
            out.push_str(&crate::report::plan_line(plan, i).replacen(
                "    release:",
                "    sweep:",
                1,
            ));
        }
        out.push_str(
            "Release with `mntreap release CONTAINER` (leaked) or `mntreap reap` (stuck \
             containers).\n",
        );
    }
    out.push_str(&devices_text(devices));
    for n in unsure
        .into_iter()
        .chain(scan.notes.iter().map(String::as_str))
    {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// The devices section of the text report.
fn devices_text(devices: &[DeviceDoc]) -> String {
    let mut out = String::new();
    if devices.is_empty() {
        return out;
    }
    out.push_str("Block devices that only other namespaces mount:\n");
    for d in devices {
        out.push_str(&format!(
            "{} ({}){}:\n",
            d.dev,
            d.block.as_deref().unwrap_or("?"),
            d.volume
                .as_deref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default()
        ));
        for h in &d.holders {
            out.push_str(&format!(
                "  mnt_ns {} mount {} {}: {} ({})\n",
                h.mnt_ns,
                h.mount_id,
                h.mount_point,
                h.action.map_or("keep", |a| a.word()),
                h.reason.as_deref().unwrap_or_default()
            ));
        }
    }
    out.push_str(
        "Free a device of its copies with `mntreap release --device DEV`; `mntreap why DEV` \
         names every other holder.\n",
    );
    out
}
