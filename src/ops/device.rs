//! `scan --device` and `release --device`: a block device's filesystem as the target. Its
//! identity is the device: every mount of it, in any namespace, at any path, holds it. The
//! copies go; what the runtime and kubelet mounted, and what running containers asked for
//! (their volumes), stay, decided once by the release plan for both commands.

use crate::engine::release::Release;
use crate::engine::scan::{ScanError, ScanRequest};
use crate::runtime::ContainerRuntime;

/// The release of `devices`' filesystems (a dry run for `scan --device`), with the
/// runtime's containers when the caller has just listed them (`listed`): scanned with the
/// runtime's namespace as a trusted view when there is a runtime, planned in
/// [`crate::runtime::scope::device_scope`], executed unless `dry_run`, re-checked.
pub fn release_devices(
    base: &ScanRequest,
    runtime: Option<&dyn ContainerRuntime>,
    devices: &[(u32, u32)],
    copy_roots: &[std::path::PathBuf],
    listed: Option<&[crate::runtime::model::Container]>,
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
    let (mut scope, notes) = crate::runtime::scope::device_scope(
        runtime,
        listed,
        &base.proc_root,
        copy_roots,
        everywhere,
    );
    let mut scan = crate::engine::scan::scan(&req)?;
    // A container's init still in the namespace it was in before the scan: that inode is
    // still its namespace's, not one handed out again meanwhile.
    scope.workloads.retain(|w| {
        crate::engine::namespace::mnt_ns_inode(&base.proc_root, w.pid) == Some(w.ns)
            && crate::engine::namespace::start_time(&base.proc_root, w.pid) == Some(w.start)
    });
    scan.notes.extend(notes);
    // btrfs and bcachefs give their mounts an anonymous device, not the disk's.
    if scan.holders.is_empty() {
        scan.notes.extend(devices.iter().map(|(major, minor)| {
            format!(
                "no mount in any namespace has device {major}:{minor}; a btrfs or bcachefs \
                 filesystem on it shows another device number in mount tables: name its \
                 mount point with --path, or ask `mntreap why {major}:{minor}`"
            )
        }));
    }
    crate::engine::release::run_on(scan, &req, scope, dry_run)
}

/// Whether a device release leaves the devices held where it looked: a holder in scope
/// still mounted (for a dry run, any holder in scope), a detached copy still pinned, or
/// namespaces it could not see. `scan --device` and `release --device` exit by it.
pub fn left_held(rel: &Release) -> bool {
    !rel.remaining().is_empty() || rel.still_pinned() || rel.scan.incomplete()
}

/// Block devices that namespaces other than the host's mount while the host's own namespace
/// (pid 1's, or mntreap's when pid 1 is out of view) does not: a volume whose node mount is
/// gone and whose copies keep it busy (a CSI volume that will not detach, an rbd or LUKS
/// device), or one a container mounted itself. Read from `scan`'s tables, which hold every
/// mount's device whatever the targets.
pub fn held_elsewhere(scan: &crate::engine::scan::Scan) -> Vec<(u32, u32)> {
    use std::collections::BTreeSet;
    let reference = scan
        .namespaces
        .iter()
        .position(|n| n.ns.pids.contains(&1))
        .or_else(|| scan.namespaces.iter().position(|n| n.ns.own));
    let Some(reference) = reference else {
        return Vec::new();
    };
    let devices_of = |n: &crate::engine::scan::ScannedNamespace| -> BTreeSet<(u32, u32)> {
        n.table
            .iter()
            .flat_map(|t| t.mounts.iter().map(|m| m.dev))
            .filter(|d| d.0 != 0)
            .collect()
    };
    let Some(host) = scan.namespaces[reference]
        .table
        .as_ref()
        .map(|_| devices_of(&scan.namespaces[reference]))
    else {
        return Vec::new();
    };
    let elsewhere: BTreeSet<(u32, u32)> = scan
        .namespaces
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != reference)
        .flat_map(|(_, n)| devices_of(n))
        .collect();
    elsewhere
        .difference(&host)
        .filter(|d| std::path::Path::new(&format!("/sys/dev/block/{}:{}", d.0, d.1)).exists())
        .copied()
        .collect()
}

/// What a mount point says of the Kubernetes volume it is, by kubelet's layout: a pod's
/// volume (`pods/<uid>/volumes/<plugin>/<name>`) or a CSI staging mount
/// (`plugins/kubernetes.io/csi/<driver>/<hash>/globalmount`). A label from a path, which
/// whoever made the mount chose: it names, it decides nothing.
pub fn volume_label(mount_point: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(mount_point);
    let parts: Vec<&str> = text.split('/').collect();
    let at = |name: &str| parts.iter().position(|p| *p == name);
    if let Some(i) = at("pods")
        && parts.get(i + 2) == Some(&"volumes")
        && let (Some(uid), Some(plugin), Some(volume)) =
            (parts.get(i + 1), parts.get(i + 3), parts.get(i + 4))
    {
        return Some(format!("pod {uid} volume {volume} ({plugin})"));
    }
    if let Some(i) = at("plugins")
        && parts.get(i + 1) == Some(&"kubernetes.io")
        && parts.get(i + 2) == Some(&"csi")
        && parts.last() == Some(&"globalmount")
    {
        return Some(format!(
            "CSI {} staging (globalmount)",
            parts.get(i + 3).unwrap_or(&"?")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::volume_label;

    #[test]
    fn kubelets_layout_names_the_volume() {
        assert_eq!(
            volume_label(b"/host/var/lib/kubelet/pods/7f3c/volumes/kubernetes.io~csi/pv-1/mount")
                .as_deref(),
            Some("pod 7f3c volume pv-1 (kubernetes.io~csi)")
        );
        assert_eq!(
            volume_label(
                b"/var/lib/kubelet/plugins/kubernetes.io/csi/driver.longhorn.io/ab12/globalmount"
            )
            .as_deref(),
            Some("CSI driver.longhorn.io staging (globalmount)")
        );
        assert_eq!(volume_label(b"/data"), None);
        assert_eq!(volume_label(b"/pods/volumes"), None);
    }
}
