//! What a release of a container may touch: its targets, its layer signature, the
//! runtime's namespaces it must spare.

use std::path::PathBuf;

use super::{Container, Daemon};
use crate::engine::namespace::mnt_ns_inode;
use crate::engine::release::Scope;
use crate::engine::scan::ScanRequest;

/// The 12-character short form of an id, as the docker CLI shows it. Never panics: an id
/// that is short or not ASCII (read from a record or a mount path) is shown whole.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The scan request for one container: `base`'s settings, the container's mount paths,
/// its layer's upperdir signature, and the runtime's namespace as a trusted view.
pub fn container_request(base: &ScanRequest, daemon: &Daemon, c: &Container) -> ScanRequest {
    ScanRequest {
        targets: c.paths.clone(),
        layer_signatures: layer_signatures(std::slice::from_ref(c)),
        trusted_namespaces: daemon.trusted_namespaces(),
        ..base.clone()
    }
}

/// The overlay upperdirs that identify these containers' layers wherever they are mounted.
pub fn layer_signatures(containers: &[Container]) -> Vec<PathBuf> {
    containers
        .iter()
        .filter_map(|c| c.upperdir.clone())
        .collect()
}

/// The release scope for a container: its copies in dockerd's namespace stay while it runs.
pub fn release_scope(daemon: &Daemon, container: &Container, everywhere: bool) -> Scope {
    // An unsure identity protects every namespace that may be the runtime's, whatever the
    // container's state: a wrong guess must never lead to an unmount.
    let protected = if daemon.unsure().is_some() {
        daemon.runtime_protection("")
    } else if !container.is_running() {
        Vec::new()
    } else {
        daemon.runtime_protection(&format!(", and container {} is running", container.name))
    };
    // The container's own namespace has the layer as its root: in use, never touched.
    let mut protected = protected;
    if let Some(ns) = container
        .pid
        .and_then(|pid| mnt_ns_inode(&daemon.proc_root, pid))
    {
        protected.push((
            ns,
            format!("container {}'s own namespace (its root)", container.name),
        ));
    }
    Scope {
        everywhere,
        protected: Some(protected),
    }
}
