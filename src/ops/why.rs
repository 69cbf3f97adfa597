//! `why`: every reason a filesystem or device is busy, each with whether mntreap can
//! release it and what the operator does otherwise. The reasons are the engine's facts
//! ([`crate::engine::busy`]); the remedies are decided here, once.

use crate::engine::busy::{self, BusyTarget, ProcessUse, Reason};
use crate::engine::scan::{ScanError, ScanRequest};

/// One reason, explained.
#[derive(Debug, Clone)]
pub struct Explained {
    pub reason: Reason,
    /// A mount copy in another namespace: what `release` unmounts.
    pub releasable: bool,
    pub remedy: String,
}

/// Every reason each of `targets` is busy, explained (position for position), and the
/// scan's notes.
pub fn why(
    base: &ScanRequest,
    targets: &[BusyTarget],
) -> Result<(Vec<Vec<Explained>>, Vec<String>), ScanError> {
    let (reasons, notes) = busy::reasons(base, targets)?;
    let explained = reasons
        .into_iter()
        .map(|of_target| {
            of_target
                .into_iter()
                .map(|reason| {
                    let (releasable, remedy) = remedy(&reason);
                    Explained {
                        reason,
                        releasable,
                        remedy,
                    }
                })
                .collect()
        })
        .collect();
    Ok((explained, notes))
}

/// The filesystems of `containers`' mounts, as the scan `release CONTAINER` makes finds
/// them (whatever is still mounted here: a stuck container's rootfs may be held only in
/// other namespaces), one target per device, named `CONTAINER MOUNT_POINT`.
pub fn container_targets(
    base: &ScanRequest,
    daemon: &crate::runtime::model::Daemon,
    containers: &[crate::runtime::model::Container],
) -> Result<Vec<(String, BusyTarget)>, ScanError> {
    let mut out: Vec<(String, BusyTarget)> = Vec::new();
    for c in containers {
        let req = crate::runtime::scope::container_request(base, daemon, c);
        let scan = crate::engine::scan::scan(&req)?;
        for h in scan
            .holders
            .iter()
            .filter(|h| h.matched == crate::engine::scan::Match::Path)
        {
            if out.iter().any(|(_, t)| t.dev == h.mount.dev) {
                continue;
            }
            let name = format!(
                "{} {}",
                c.name,
                crate::engine::mountinfo::encode(&h.mount_point)
            );
            out.push((name, BusyTarget::of_dev(h.mount.dev)));
        }
    }
    Ok(out)
}

fn remedy(reason: &Reason) -> (bool, String) {
    match reason {
        Reason::Mount {
            own_namespace: true,
            mount_point,
            ..
        } => (
            false,
            format!(
                "the mount itself, in mntreap's namespace: `umount {mount_point}` once nothing else holds it"
            ),
        ),
        Reason::Mount {
            mount_point,
            pids,
            pinned_by,
            ..
        } => {
            let enter = match (pids.first(), pinned_by.first()) {
                (Some(pid), _) => format!("/proc/{pid}/ns/mnt"),
                (None, Some(crate::engine::namespace::NsPin::Bind { path, .. })) => path.clone(),
                (None, Some(crate::engine::namespace::NsPin::Descriptor { pid, fd, .. })) => {
                    format!("/proc/{pid}/fd/{fd}")
                }
                (None, None) => "<the namespace>".into(),
            };
            (
                true,
                format!(
                    "a copy in another mount namespace: `mntreap release` unmounts it for a \
                     container's or pod's mounts; by hand: `nsenter --mount={enter} umount \
                     {mount_point}`{}",
                    if pids.is_empty() && !pinned_by.is_empty() {
                        "; then remove the pin, which keeps the namespace alive"
                    } else {
                        ""
                    }
                ),
            )
        }
        Reason::Process { pid, via, .. } => (
            false,
            match via {
                ProcessUse::Cwd => {
                    format!("pid {pid} works in it: stop it, or have it leave the directory")
                }
                ProcessUse::Root => format!("pid {pid} has its root in it: stop it"),
                ProcessUse::Exe => format!("pid {pid} runs a program from it: stop it"),
                ProcessUse::OpenFile => {
                    format!("pid {pid} holds a file open on it: stop it, or have it close the file")
                }
                ProcessUse::Mmap => format!("pid {pid} maps a file of it into memory: stop it"),
                ProcessUse::OpenDevice => format!(
                    "pid {pid} holds the device itself open (a raw block volume, a VM's disk): \
                     stop it, or have it close the device"
                ),
            },
        ),
        Reason::Loop { device, .. } => (
            false,
            format!("detach the loop device: `losetup -d {device}`"),
        ),
        Reason::Swap { path } => (false, format!("`swapoff {path}`")),
        Reason::Holder { device } => (
            false,
            format!(
                "{device} is stacked on it: close that first (`dmsetup remove {device}`, \
                 `cryptsetup close`, `vgchange -an`, `mdadm --stop`)"
            ),
        ),
        Reason::NoMount { .. } => (
            false,
            "no mount holds it any more, but the filesystem is still alive: a lazily detached \
             mount whose files are still in use (the processes above), or a mount out of view"
                .into(),
        ),
    }
}
