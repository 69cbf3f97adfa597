//! `scan --device` and `release --device`: the transports of [`crate::ops::device`].

use super::{Config, Exit, Failure, Runtime};
use crate::engine::release::Release;
use crate::ops::Decisions;
use crate::report;

/// The devices named on the command line, through the rails ([`crate::engine::policy::Policy::check_device`]).
pub fn devices(e: &Config, raw: &[String]) -> Result<Vec<(u32, u32)>, Failure> {
    let mut devices = Vec::new();
    for r in raw {
        let dev = e
            .policy
            .check_device(r)
            .map_err(|err| Failure::Usage(err.to_string()))?;
        if !devices.contains(&dev) {
            devices.push(dev);
        }
    }
    Ok(devices)
}

/// The runtime, when one answers or its records can be read; without one the release
/// still runs, keeping every mount in a namespace whose root is not the host's.
pub fn runtime(e: &Config) -> (Option<Runtime>, Option<String>) {
    match e.connect() {
        Ok(r) => (Some(r), None),
        Err(err) => (
            None,
            Some(format!(
                "no container runtime could be reached ({err}): no container's volumes are \
                 known, so every mount of the device in a namespace whose root is not the \
                 host's is kept"
            )),
        ),
    }
}

/// The device release (or its dry run), with the note about a missing runtime.
pub fn release(
    e: &Config,
    runtime: Option<&Runtime>,
    no_runtime: Option<String>,
    devices: &[(u32, u32)],
    everywhere: bool,
    dry_run: bool,
) -> Result<Release, Failure> {
    let mut rel = crate::ops::device::release_devices(
        &e.base,
        runtime.map(|r| r.as_ref()),
        devices,
        everywhere,
        dry_run,
    )?;
    rel.scan.notes.extend(no_runtime);
    Ok(rel)
}

/// `mntreap scan --device`: every mount of the devices' filesystems, with what
/// `release --device` does to each (its own plan, as a dry run). Exit 1 when a namespace
/// other than mntreap's holds one.
pub fn scan(e: &Config, raw: &[String]) -> Result<Exit, Failure> {
    let devices = devices(e, raw)?;
    let (runtime, no_runtime) = runtime(e);
    let rel = release(e, runtime.as_ref(), no_runtime, &devices, false, true)?;
    let decisions = Decisions::of_release(&rel, "release --device");
    let scan = &rel.scan;
    let plan: Vec<_> = (0..scan.holders.len())
        .map(|i| decisions.of(scan, i))
        .collect();
    let out = if e.json {
        let mut doc = report::scan_doc(scan);
        doc.runtime = runtime.as_ref().map(|r| r.daemon().clone());
        report::annotate_plan(&mut doc, &plan);
        report::doc::to_text(&doc)
    } else {
        report::scan_text(scan, &plan)
    };
    super::print(&out);
    let denied = super::denied_note(scan);
    Ok(
        if scan.foreign_holders().next().is_some() || denied.is_some() {
            Exit::Remaining
        } else {
            Exit::Clean
        },
    )
}
