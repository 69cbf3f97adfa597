//! `mntreap scan CONTAINER... | --path P...`: who holds these mounts, in every namespace.

use std::path::PathBuf;

use super::{Config, Exit, Failure, check_targets_exist, print, resolve_containers, unsure_note};
use crate::ops::Decisions;
use crate::report;

/// `mntreap scan`: containers or paths; with neither, the node-wide report.
pub fn command(
    config: &Config,
    names: &[String],
    paths: &[String],
    devices: &[String],
    volume: Option<&str>,
) -> Result<Exit, Failure> {
    let e = config;
    if !devices.is_empty() {
        return super::device::scan(e, super::device::Targets::Devices(devices));
    }
    if let Some(name) = volume {
        let [pod] = names else {
            return Err(Failure::Usage(
                "--volume names one pod's volume: name exactly one pod (or a container of it)"
                    .into(),
            ));
        };
        return super::device::scan(e, super::device::Targets::Volume { pod, name });
    }
    if names.is_empty() && paths.is_empty() {
        return super::node_report::command(e);
    }
    let (docker, containers) = resolve_containers(e, names)?;
    let trusted: Vec<PathBuf> = containers.iter().flat_map(|c| c.paths.clone()).collect();
    let mut req = e.request(paths, trusted)?;
    req.layer_signatures = crate::runtime::scope::layer_signatures(&containers);
    if let Some(d) = &docker {
        req = d.daemon().vouch(req);
    }
    let scan = crate::ops::scan(&req)?;
    let checked: Vec<PathBuf> = req
        .targets
        .iter()
        .filter(|t| !containers.iter().any(|c| c.paths.contains(t)))
        .cloned()
        .collect();
    check_targets_exist(&scan, &checked)?;
    let view = docker
        .as_ref()
        .map(|d| crate::report::containers::ContainerView::new(&scan, d.daemon(), &containers));
    let leaks = match &view {
        None => scan.foreign_holders().next().is_some(),
        Some(v) => v.has_leaks(),
    };
    // What `release` with the same targets does to each holder: its own plan, as a dry run.
    let mut decisions = match &docker {
        Some(d) => Decisions::for_containers(&e.base, d.daemon(), &containers),
        None => Decisions::default(),
    };
    if !paths.is_empty() {
        decisions.extend(if docker.is_some() {
            Decisions::for_path_request(&e.request(paths, Vec::new())?)?
        } else {
            Decisions::for_paths(&scan)
        });
    }
    // What release would unmount is a finding, whatever the role (a stopped container's
    // copy in the runtime's namespace).
    let leaks = leaks || decisions.releases_any();
    let plan: Vec<_> = (0..scan.holders.len())
        .map(|i| decisions.of(&scan, i))
        .collect();
    let out = match (&view, e.json) {
        (_, true) => {
            let mut doc = report::scan_doc(&scan);
            if let Some(v) = &view {
                v.annotate(&mut doc);
            }
            report::annotate_plan(&mut doc, &plan);
            report::doc::to_text(&doc)
        }
        (None, false) => report::scan_text(&scan, &plan),
        (Some(v), false) => v.text(&plan),
    };
    print(&out);
    let unsure = unsure_note(docker.as_ref().map(|d| d.daemon()));
    let denied = super::denied_note(&scan);
    Ok(if leaks || unsure.is_some() || denied.is_some() {
        Exit::Remaining
    } else {
        Exit::Clean
    })
}
