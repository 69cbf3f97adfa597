//! `scan --device` and `release --device`: a block device's filesystem as the target. Its
//! identity is the device: every mount of it, in any namespace, at any path, holds it. The
//! copies go; what the runtime and kubelet mounted, and what running containers asked for
//! (their volumes), stay, decided once by the release plan for both commands.

use crate::engine::release::Release;
use crate::engine::scan::{ScanError, ScanRequest};
use crate::runtime::ContainerRuntime;

/// The release of `devices`' filesystems (a dry run for `scan --device`): scanned with the
/// runtime's namespace as a trusted view when there is a runtime, planned in
/// [`crate::runtime::scope::device_scope`], executed unless `dry_run`, re-checked.
pub fn release_devices(
    base: &ScanRequest,
    runtime: Option<&dyn ContainerRuntime>,
    devices: &[(u32, u32)],
    everywhere: bool,
    dry_run: bool,
) -> Result<Release, ScanError> {
    let mut req = ScanRequest {
        targets: Vec::new(),
        devices: devices.to_vec(),
        layer_signatures: Vec::new(),
        ..base.clone()
    };
    if let Some(runtime) = runtime {
        req = runtime.daemon().vouch(req);
    }
    let _span = tracing::info_span!("release_devices", devices = ?devices, dry_run).entered();
    let (scope, notes) = crate::runtime::scope::device_scope(runtime, everywhere);
    let mut scan = crate::engine::scan::scan(&req)?;
    scan.notes.extend(notes);
    crate::engine::release::run_on(scan, &req, scope, dry_run)
}
