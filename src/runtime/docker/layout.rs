//! Where Docker's storage drivers mount a container's layers, and the reverse: which
//! container owns a mount point under the data root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Container, Daemon, DockerError};
pub use crate::runtime::model::Owner;

/// Where each storage driver mounts layer `<id>`: `<root>/<dir>/<id>[/<leaf>]`, for every
/// layout Docker has used (vfs copies instead of mounting).
pub(super) const LAYER_MOUNTS: &[(&str, &[&str], Option<&str>)] = &[
    ("overlay2", &["overlay2"], Some("merged")),
    ("overlay", &["overlay"], Some("merged")),
    ("fuse-overlayfs", &["fuse-overlayfs"], Some("merged")),
    ("aufs", &["aufs", "mnt"], None),
    ("devicemapper", &["devicemapper", "mnt"], None),
    ("zfs", &["zfs", "graph"], None),
    ("btrfs", &["btrfs", "subvolumes"], None),
];

/// Where a storage driver mounts layer `id`.
pub fn layer_mount(root: &Path, driver: &str, id: &str) -> Option<PathBuf> {
    let (_, dir, leaf) = LAYER_MOUNTS.iter().find(|(d, ..)| *d == driver)?;
    let mut p: PathBuf = dir.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    p.push(id);
    p.extend(leaf);
    Some(p)
}

/// containerd snapshotters Docker 24+ can use instead of a graph driver (the containerd
/// image store, the default on fresh installs of 29): a container's root filesystem is
/// then mounted at `<root>/rootfs/<snapshotter>/<container id>` (containerd namespace
/// `moby`), and there is no layerdb mount id.
const SNAPSHOTTERS: &[&str] = &["overlayfs", "native", "stargz"];

/// Where the containerd image store mounts a container's root filesystem, if `driver` is
/// one of its snapshotters.
pub fn snapshot_mount(root: &Path, driver: &str, container_id: &str) -> Option<PathBuf> {
    SNAPSHOTTERS
        .contains(&driver)
        .then(|| root.join("rootfs").join(driver).join(container_id))
}

/// Which container owns a mount point under the data root: by layer id (the reverse of
/// [`layer_mount`]) or by `containers/<id>/`. `by_layer` maps layer (mount/init) ids to
/// container ids.
pub fn owner_of(
    root: &Path,
    mount_point: &Path,
    by_layer: &HashMap<String, String>,
) -> Option<Owner> {
    let rel = mount_point.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["containers", id, ..] => return Some(Owner::Container((*id).to_string())),
        ["rootfs", snapshotter, id, ..] if SNAPSHOTTERS.contains(snapshotter) => {
            return Some(Owner::Container((*id).to_string()));
        }
        _ => {}
    }
    LAYER_MOUNTS.iter().find_map(|(_, dir, leaf)| {
        let (id, after) = parts.strip_prefix(*dir)?.split_first()?;
        if leaf.is_some_and(|l| after.first() != Some(&l)) {
            return None;
        }
        Some(layer_owner(id, by_layer))
    })
}

fn layer_owner(id: &str, by_layer: &HashMap<String, String>) -> Owner {
    match by_layer.get(id) {
        Some(c) => Owner::Container(c.clone()),
        None => Owner::UnknownLayer(id.to_string()),
    }
}

/// Layer id -> container id, from the containers' mount and init ids (as resolution read
/// them, through the host root: nothing is read again here).
pub fn layers_by_container(containers: &[Container]) -> HashMap<String, String> {
    containers
        .iter()
        .flat_map(|c| {
            c.mount_id
                .iter()
                .chain(c.init_id.iter())
                .map(move |layer| (layer.clone(), c.id.clone()))
        })
        .collect()
}

/// Every target is derived from the data root: it passes the operator's rails (`origin`
/// says where it was read, for the error).
pub(super) fn railed_data_root(
    daemon: &Daemon,
    host_root: &Path,
    origin: &str,
) -> Result<(), DockerError> {
    let rails = crate::engine::policy::Policy {
        any_path: true,
        extra_roots: Vec::new(),
    };
    match rails.check_runtime_path(&daemon.root, host_root) {
        Ok(_) => Ok(()),
        Err(e) => Err(DockerError::BadDataRoot {
            who: match daemon.pid {
                Some(pid) => format!("dockerd pid {pid}"),
                None => "dockerd (not established)".into(),
            },
            value: daemon.root.display().to_string(),
            origin: origin.into(),
            problem: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_root_the_rails_refuse_names_the_daemon_and_the_value() {
        let daemon = |root: &str| Daemon {
            runtime: crate::runtime::model::RuntimeKind::Docker,
            via: super::super::Via::Api,
            socket: super::super::DEFAULT_SOCKET.into(),
            root: root.into(),
            driver: None,
            pid: Some(42),
            mnt_ns: None,
            identity: Default::default(),
            live_restore: None,
            offline_reason: None,
            host_root: "/".into(),
            proc_root: "/proc".into(),
        };
        for bad in ["/", "/var", "/var/lib", "/tmp", "relative", "/proc/1/root"] {
            let err = railed_data_root(&daemon(bad), Path::new("/"), "its /info DockerRootDir")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("dockerd pid 42") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
        assert!(railed_data_root(&daemon(super::super::DEFAULT_ROOT), Path::new("/"), "x").is_ok());
        assert!(railed_data_root(&daemon("/data/docker"), Path::new("/"), "x").is_ok());
    }

    use crate::runtime::docker::tests::c;

    #[test]
    fn layers_map_to_their_containers() {
        let mut a = c("A", "a");
        a.mount_id = Some("L1".into());
        a.init_id = Some("L1-init".into());
        let b = c("B", "b");
        let map = layers_by_container(&[a, b]);
        assert_eq!(map.len(), 2);
        assert_eq!(map["L1"], "A");
        assert_eq!(map["L1-init"], "A");
    }

    #[test]
    fn owners_by_layer_and_container_dir() {
        let root = Path::new("/var/lib/docker");
        let by_layer = HashMap::from([("L1".to_string(), "C1".to_string())]);
        let own = |p: &str| owner_of(root, Path::new(p), &by_layer);
        assert_eq!(
            own("/var/lib/docker/overlay2/L1/merged"),
            Some(Owner::Container("C1".into()))
        );
        assert_eq!(
            own("/var/lib/docker/overlay2/L2/merged"),
            Some(Owner::UnknownLayer("L2".into()))
        );
        assert_eq!(
            own("/var/lib/docker/containers/C9/mounts/shm"),
            Some(Owner::Container("C9".into()))
        );
        assert_eq!(
            own("/var/lib/docker/devicemapper/mnt/L1"),
            Some(Owner::Container("C1".into()))
        );
        assert_eq!(own("/var/lib/docker/overlay2"), None);
        assert_eq!(own("/var/lib/docker/overlay2/L1/diff"), None);
        assert_eq!(
            own("/var/lib/docker/btrfs/subvolumes/L1"),
            Some(Owner::Container("C1".into()))
        );
        // Every layer mount path maps back to its layer.
        for (driver, ..) in LAYER_MOUNTS {
            let p = layer_mount(root, driver, "L1").unwrap();
            assert_eq!(
                own(p.to_str().unwrap()),
                Some(Owner::Container("C1".into()))
            );
        }
        assert_eq!(own("/srv/other"), None);
        // Docker 29's containerd image store: by container id.
        assert_eq!(
            own("/var/lib/docker/rootfs/overlayfs/C7"),
            Some(Owner::Container("C7".into()))
        );
        assert_eq!(
            snapshot_mount(root, "overlayfs", "C7"),
            Some(PathBuf::from("/var/lib/docker/rootfs/overlayfs/C7"))
        );
        assert_eq!(snapshot_mount(root, "overlay2", "C7"), None);
    }
}
