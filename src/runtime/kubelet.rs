//! kubelet's directories on the node: a pod's volume, by the name its directory has
//! (`pods/<uid>/volumes/<plugin>/<name>`: the volume's name in the pod, or the PV's for a
//! CSI volume, whose filesystem is at `<name>/mount`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::runtime::host::on_host;

/// Why a pod's volume names no device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("{0:?} is not a volume name (one path component, no `..`)")]
    BadName(String),
    #[error("{0:?} is not a pod UID")]
    BadUid(String),
    #[error("the volume's path is refused: {0}")]
    Symlink(String),
    #[error(
        "pod {uid} has no volume {name} under {dir}: kubelet names a pod's volumes by their \
         name in the pod (CSI volumes by their PV); if kubelet already unmounted it, name the \
         device with --device"
    )]
    NotFound {
        uid: String,
        name: String,
        dir: String,
    },
    #[error("pod {uid}'s volume {name} is in more than one plugin's directory: {paths}")]
    Ambiguous {
        uid: String,
        name: String,
        paths: String,
    },
    #[error(
        "{path} is not a filesystem of its own (the same device as its directory): the volume \
         is no block device's mount; use `mntreap release POD` for the pod's mounts"
    )]
    NotMounted { path: String },
}

/// The device whose filesystem is mounted at pod `uid`'s volume `name`, and that mount
/// point, as the node's view (through `host_root`) shows it. Nothing is followed: a
/// symlink on the way is no volume.
pub fn volume_device(
    kubelet_root: &Path,
    host_root: &Path,
    uid: &str,
    name: &str,
) -> Result<((u32, u32), PathBuf), VolumeError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(VolumeError::BadName(name.into()));
    }
    if !crate::engine::policy::is_pod_uid(uid) {
        return Err(VolumeError::BadUid(uid.into()));
    }
    let volumes = kubelet_root.join("pods").join(uid).join("volumes");
    let is_dir = |p: &Path| {
        std::fs::symlink_metadata(on_host(host_root, p)).is_ok_and(|m| m.file_type().is_dir())
    };
    let mut found: Vec<PathBuf> = Vec::new();
    let plugins = std::fs::read_dir(on_host(host_root, &volumes))
        .into_iter()
        .flatten();
    for plugin in plugins.flatten() {
        let dir = volumes.join(plugin.file_name()).join(name);
        if !is_dir(&dir) {
            continue;
        }
        // A CSI volume's filesystem is at `mount`, next to its `vol_data.json`; in another
        // plugin's directory a `mount` is just a directory of the volume.
        let csi = dir.join("mount");
        let is_csi = plugin.file_name() == "kubernetes.io~csi";
        found.push(if is_csi && is_dir(&csi) { csi } else { dir });
    }
    let path = match found.len() {
        0 => {
            return Err(VolumeError::NotFound {
                uid: uid.into(),
                name: name.into(),
                dir: volumes.display().to_string(),
            });
        }
        1 => found.remove(0),
        _ => {
            return Err(VolumeError::Ambiguous {
                uid: uid.into(),
                name: name.into(),
                paths: found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    // No symlink anywhere on the way, component by component from the node's `/`.
    let rails = crate::engine::policy::Policy {
        any_path: true,
        extra_roots: Vec::new(),
    };
    rails
        .check_runtime_path(&path, host_root)
        .map_err(|e| VolumeError::Symlink(e.to_string()))?;
    let dev_of = |p: &Path| std::fs::symlink_metadata(on_host(host_root, p)).map(|m| m.dev());
    let not_mounted = || VolumeError::NotMounted {
        path: path.display().to_string(),
    };
    let (here, parent) = (
        dev_of(&path).map_err(|_| not_mounted())?,
        dev_of(path.parent().unwrap_or(&path)).map_err(|_| not_mounted())?,
    );
    if here == parent {
        return Err(not_mounted());
    }
    Ok((
        (
            nix::sys::stat::major(here) as u32,
            nix::sys::stat::minor(here) as u32,
        ),
        path,
    ))
}
