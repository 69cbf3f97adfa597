//! `scan --device` and `release --device`: the transports of [`crate::ops::device`].

use super::{Config, Exit, Failure, Runtime};
use crate::engine::release::Release;
use crate::ops::Decisions;
use crate::report;

/// What a device command names: block devices, or a pod's volume (whose device kubelet's
/// mount of it on the node gives).
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    Devices(&'a [String]),
    Volume { pod: &'a str, name: &'a str },
}

/// The devices, through the rails; the runtime, when one is reachable; the note saying
/// when none is.
pub type Resolved = (Vec<(u32, u32)>, Option<Runtime>, Option<String>);

/// The devices a command names (see [`Resolved`]). A pod's volume needs the runtime: it
/// names the pod's UID.
pub fn resolve(e: &Config, targets: Targets) -> Result<Resolved, Failure> {
    match targets {
        Targets::Devices(raw) => {
            let (runtime, note) = runtime(e);
            let host_root = runtime
                .as_ref()
                .map_or(e.cri.host_root.clone(), |r| r.daemon().host_root.clone());
            let guarded = runtime.as_ref().map(|r| r.roots()).unwrap_or_default();
            Ok((devices(e, raw, &host_root, &guarded)?, runtime, note))
        }
        Targets::Volume { pod, name } => {
            let runtime = e.connect()?;
            let containers = runtime.resolve(&[pod.to_string()])?;
            let Some(uid) = containers.iter().find_map(|c| c.pod_uid.clone()) else {
                return Err(Failure::Usage(format!(
                    "{pod} is no pod and no pod's container (the runtime gives it no pod UID): \
                     --volume names a pod's volume"
                )));
            };
            let (dev, path) = crate::runtime::kubelet::volume_device(
                &e.cri.kubelet_root,
                &runtime.daemon().host_root,
                &uid,
                name,
            )
            .map_err(|err| Failure::Usage(err.to_string()))?;
            let shown = format!("{}:{}", dev.0, dev.1);
            let host_root = runtime.daemon().host_root.clone();
            let guarded = runtime.roots();
            let dev = e
                .policy
                .check_device(&shown, &host_root, &guarded)
                .map_err(|err| {
                    Failure::Usage(format!(
                        "pod {uid}'s volume {name} at {}: {err}",
                        path.display()
                    ))
                })?;
            Ok((vec![dev], Some(runtime), None))
        }
    }
}

/// The devices named on the command line, through the rails ([`crate::engine::policy::Policy::check_device`]).
pub fn devices(
    e: &Config,
    raw: &[String],
    host_root: &std::path::Path,
    runtime_roots: &[std::path::PathBuf],
) -> Result<Vec<(u32, u32)>, Failure> {
    let mut devices = Vec::new();
    for r in raw {
        let dev = e
            .policy
            .check_device(r, host_root, runtime_roots)
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

/// The directories whose mounts other namespaces carry by accident: the runtimes' and
/// kubelet's (the known ones, `--docker-root`, `--runtime-root`, `--kubelet-root`, and the
/// established runtime's).
pub fn copy_roots(
    e: &Config,
    runtime: Option<&dyn crate::runtime::ContainerRuntime>,
) -> Result<Vec<std::path::PathBuf>, Failure> {
    let mut roots: Vec<std::path::PathBuf> = crate::engine::policy::RUNTIME_ROOTS
        .iter()
        .map(std::path::PathBuf::from)
        .chain(e.policy.extra_roots.iter().cloned())
        .chain(e.runtime_roots.iter().cloned())
        .chain(std::iter::once(e.cri.kubelet_root.clone()))
        .collect();
    if let Some(r) = runtime {
        roots.extend(r.roots());
        roots.push(r.daemon().root.clone());
    }
    roots.sort();
    roots.dedup();
    // A root of `/` or `/var` would make every mount below it a copy.
    if let Some(bad) = roots
        .iter()
        .find(|r| !crate::engine::policy::is_copy_root(r))
    {
        return Err(Failure::Usage(format!(
            "{} cannot be a runtime's or kubelet's root for a device release (a system \
             directory, or not a plain absolute path); fix --kubelet-root, --docker-root \
             or --runtime-root",
            bad.display()
        )));
    }
    Ok(roots)
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
        &copy_roots(e, runtime.map(|r| r.as_ref()))?,
        None,
        everywhere,
        dry_run,
    )?;
    rel.scan.notes.extend(no_runtime);
    Ok(rel)
}

/// `mntreap scan --device`: every mount of the devices' filesystems, with what
/// `release --device` does to each (its own plan, as a dry run). Exit 1 when a namespace
/// other than mntreap's holds one.
pub fn scan(e: &Config, targets: Targets) -> Result<Exit, Failure> {
    let (devices, runtime, no_runtime) = resolve(e, targets)?;
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
    super::denied_note(scan);
    let unsure = super::unsure_note(runtime.as_ref().map(|r| r.daemon()));
    Ok(if crate::ops::device::left_held(&rel) || unsure.is_some() {
        Exit::Remaining
    } else {
        Exit::Clean
    })
}
