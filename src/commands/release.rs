//! `mntreap release CONTAINER... | --path P...`: unmount the copies scan finds.

use super::{Config, Exit, Failure, check_targets_exist, print, resolve_containers, unsure_note};
use crate::engine::release::Release;
use crate::report;
use crate::report::doc::{FailedDoc, ReleaseOutcome, ReleasesDoc};
use crate::runtime::model::Container;
use crate::runtime::scope::short_id;

/// What `mntreap release` was asked to do.
pub struct ReleaseArgs<'a> {
    pub containers: &'a [String],
    pub paths: &'a [String],
    /// `--device`: block devices whose filesystems are released.
    pub devices: &'a [String],
    /// `--volume`: the one named pod's volume, by its directory's name.
    pub volume: Option<&'a str>,
    pub dry_run: bool,
    pub everywhere: bool,
}

/// `mntreap release`: unmount the copies scan finds. One result per target; a failure
/// after some work reports that work and exits 1, 2 only when nothing changed.
pub fn command(config: &Config, args: ReleaseArgs) -> Result<Exit, Failure> {
    let e = config;
    if args.containers.is_empty() && args.paths.is_empty() && args.devices.is_empty() {
        return Err(Failure::Usage(
            "name the containers, --path mount points or --device block devices to release \
             (`mntreap scan` with no target shows the node's leaks)"
                .into(),
        ));
    }
    if !args.devices.is_empty() {
        return release_devices(e, &args, super::device::Targets::Devices(args.devices));
    }
    if let Some(name) = args.volume {
        let [pod] = args.containers else {
            return Err(Failure::Usage(
                "--volume names one pod's volume: name exactly one pod (or a container of it)"
                    .into(),
            ));
        };
        return release_devices(e, &args, super::device::Targets::Volume { pod, name });
    }
    let (docker, containers) = resolve_containers(e, args.containers)?;
    let releases = run_releases(e, &args, docker.as_ref(), &containers)?;
    let changed: usize = releases
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|r| r.released())
        .sum();
    let failed = releases.iter().any(|(_, r)| r.is_err());
    let remaining = releases.iter().any(|(_, r)| {
        r.as_ref().is_ok_and(|r| {
            !r.remaining().is_empty()
                || r.still_pinned()
                || r.scan.incomplete()
                || crate::ops::kept_as_unknown(r)
        })
    });
    for r in releases.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        super::denied_note(&r.scan);
    }
    let out = render(e, docker.as_ref(), &releases);
    print(&out);
    let unsure = unsure_note(docker.as_ref().map(|d| d.daemon()));
    Ok(Exit::for_targets(
        failed,
        changed,
        remaining,
        unsure.is_some(),
    ))
}

/// `release --device`: one release for the devices, in the device scope.
fn release_devices(
    e: &Config,
    args: &ReleaseArgs,
    targets: super::device::Targets,
) -> Result<Exit, Failure> {
    let (devices, runtime, no_runtime) = super::device::resolve(e, targets)?;
    let rel = super::device::release(
        e,
        runtime.as_ref(),
        no_runtime,
        &devices,
        args.everywhere,
        args.dry_run,
    )?;
    super::denied_note(&rel.scan);
    let remaining = crate::ops::device::left_held(&rel);
    let changed = rel.released();
    let unsure = unsure_note(runtime.as_ref().map(|r| r.daemon()));
    let releases: Outcomes = vec![(None, Ok(rel))];
    print(&render(e, runtime.as_ref(), &releases));
    Ok(Exit::for_targets(
        false,
        changed,
        remaining,
        unsure.is_some(),
    ))
}

/// One outcome per target: a release, or why it could not run.
type Outcomes<'c> = Vec<(Option<&'c Container>, Result<Release, String>)>;

/// Releases the paths (one target set) and each container, in order.
fn run_releases<'c>(
    e: &Config,
    args: &ReleaseArgs,
    docker: Option<&super::Runtime>,
    containers: &'c [Container],
) -> Result<Outcomes<'c>, Failure> {
    // One outcome per target: a release, or why it could not run.
    let mut releases: Outcomes = Vec::new();
    if !args.paths.is_empty() {
        let req = e.request(args.paths, Vec::new())?;
        let scan = crate::ops::scan(&req)?;
        check_targets_exist(&scan, &req.targets)?;
        let release = crate::ops::release_paths(scan, &req, args.everywhere, args.dry_run)?;
        releases.push((None, Ok(release)));
    }
    if let Some(docker) = docker {
        for c in containers {
            let outcome = crate::ops::release_container(
                &e.base,
                docker.daemon(),
                c,
                args.everywhere,
                args.dry_run,
                None,
            )
            .map_err(|err| err.to_string());
            releases.push((Some(c), outcome));
        }
    }
    Ok(releases)
}

/// The releases as JSON (always the list: `releases[]`) or text.
fn render(e: &Config, docker: Option<&super::Runtime>, releases: &Outcomes) -> String {
    if e.json {
        let docs: Vec<ReleaseOutcome> = releases
            .iter()
            .map(|(c, r)| match r {
                Ok(r) => {
                    let mut doc = report::release_doc(r);
                    doc.container = c.cloned();
                    ReleaseOutcome::Released(doc)
                }
                Err(err) => ReleaseOutcome::Failed(FailedDoc {
                    error: err.clone(),
                    container: c.cloned(),
                }),
            })
            .collect();
        // One shape whatever the targets: a path release is the list's one entry.
        report::doc::to_text(&ReleasesDoc {
            runtime: docker.map(|d| d.daemon().clone()),
            releases: docs,
        })
    } else {
        let mut text = String::new();
        for (c, r) in releases {
            if let Some(c) = c {
                text.push_str(&format!(
                    "{} {} ({}, {}):\n",
                    if c.sandbox { "pod" } else { "container" },
                    c.name,
                    short_id(&c.id),
                    c.state
                ));
            }
            match r {
                Ok(r) => text.push_str(&report::release_text(r)),
                Err(err) => text.push_str(&format!("  failed: {err}\n")),
            }
        }
        text
    }
}
