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
    let mut found: Vec<PathBuf> = volume_dirs(kubelet_root, host_root, uid)?
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, p)| p)
        .collect();
    let path = match found.len() {
        0 => {
            return Err(VolumeError::NotFound {
                uid: uid.into(),
                name: name.into(),
                dir: volumes_dir(kubelet_root, uid).display().to_string(),
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
    let dev = own_filesystem(host_root, &path).ok_or_else(|| VolumeError::NotMounted {
        path: path.display().to_string(),
    })?;
    Ok((dev, path))
}

/// A pod's volume on a block device, mounted on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockVolume {
    /// Its directory's name (the volume's in the pod, the PV's for CSI).
    pub name: String,
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
}

/// Every volume of pod `uid` that is a block device's filesystem mounted on the node (a
/// CSI, rbd, iSCSI or local volume).
pub fn block_volumes(
    kubelet_root: &Path,
    host_root: &Path,
    uid: &str,
) -> Result<Vec<BlockVolume>, VolumeError> {
    Ok(volume_dirs(kubelet_root, host_root, uid)?
        .into_iter()
        .filter_map(|(name, mount_point)| {
            let dev = own_filesystem(host_root, &mount_point)?;
            std::path::Path::new(&format!("/sys/dev/block/{}:{}", dev.0, dev.1))
                .exists()
                .then_some(BlockVolume {
                    name,
                    dev,
                    mount_point,
                })
        })
        .collect())
}

fn volumes_dir(kubelet_root: &Path, uid: &str) -> PathBuf {
    kubelet_root.join("pods").join(uid).join("volumes")
}

/// Pod `uid`'s volume directories, by name: `volumes/<plugin>/<name>`, or its `mount` for
/// a CSI volume. Symlinks are not directories here.
fn volume_dirs(
    kubelet_root: &Path,
    host_root: &Path,
    uid: &str,
) -> Result<Vec<(String, PathBuf)>, VolumeError> {
    if !crate::engine::policy::is_pod_uid(uid) {
        return Err(VolumeError::BadUid(uid.into()));
    }
    let volumes = volumes_dir(kubelet_root, uid);
    let is_dir = |p: &Path| {
        std::fs::symlink_metadata(on_host(host_root, p)).is_ok_and(|m| m.file_type().is_dir())
    };
    let mut found = Vec::new();
    let plugins = std::fs::read_dir(on_host(host_root, &volumes))
        .into_iter()
        .flatten();
    for plugin in plugins.flatten() {
        let plugin_dir = volumes.join(plugin.file_name());
        if !is_dir(&plugin_dir) {
            continue;
        }
        let names = std::fs::read_dir(on_host(host_root, &plugin_dir))
            .into_iter()
            .flatten();
        for entry in names.flatten() {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            let dir = plugin_dir.join(&name);
            if !is_dir(&dir) {
                continue;
            }
            // A CSI volume's filesystem is at `mount`, next to its `vol_data.json`.
            let csi = dir.join("mount");
            found.push((name, if is_dir(&csi) { csi } else { dir }));
        }
    }
    Ok(found)
}

/// The device of the filesystem at `path` when it is one of its own (not its directory's).
fn own_filesystem(host_root: &Path, path: &Path) -> Option<(u32, u32)> {
    let dev_of = |p: &Path| {
        std::fs::symlink_metadata(on_host(host_root, p))
            .ok()
            .map(|m| m.dev())
    };
    let here = dev_of(path)?;
    if Some(here) == dev_of(path.parent()?) {
        return None;
    }
    Some((
        nix::sys::stat::major(here) as u32,
        nix::sys::stat::minor(here) as u32,
    ))
}
