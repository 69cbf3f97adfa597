//! What dockerd recorded of a container's mounts (`config.v2.json`): where it asked for
//! them, and which bind the runtime's roots privately.

use super::{Container, Daemon};
use crate::engine::release::WorkloadMount;

/// One of a container's mounts in its `config.v2.json`, keyed there by destination.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordedMount {
    #[serde(default)]
    source: String,
    #[serde(default)]
    propagation: String,
}

/// A container's mounts as its `config.v2.json` records them (destination to mount), when
/// that record can be read.
fn recorded_mounts(
    daemon: &Daemon,
    c: &Container,
) -> Option<std::collections::HashMap<String, RecordedMount>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Config {
        // No default: a record without the field says nothing, which is not "no mounts".
        mount_points: Option<std::collections::HashMap<String, RecordedMount>>,
    }
    let id = crate::engine::policy::container_id(&c.id).ok()?;
    let path = daemon
        .root
        .join("containers")
        .join(id)
        .join("config.v2.json");
    let text =
        crate::runtime::host::read_small(&crate::runtime::host::on_host(&daemon.host_root, &path))
            .ok()?;
    serde_json::from_slice::<Config>(&text).ok()?.mount_points
}

/// What dockerd mounted in a container's namespace: its volumes and binds (destination and
/// node source, from `config.v2.json`), and the files dockerd binds into every container
/// from its own directory. `None` when the record cannot be read or lists no mounts.
pub fn container_mounts(daemon: &Daemon, c: &Container) -> Option<Vec<WorkloadMount>> {
    use std::os::unix::ffi::OsStrExt;
    let mut mounts: Vec<WorkloadMount> = recorded_mounts(daemon, c)?
        .into_iter()
        .map(|(destination, m)| WorkloadMount {
            destination: destination.into_bytes(),
            source: m.source.into_bytes(),
        })
        .collect();
    let own = daemon.root.join("containers").join(&c.id);
    for (destination, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/hostname", "hostname"),
        ("/etc/resolv.conf", "resolv.conf"),
        ("/dev/shm", "mounts/shm"),
    ] {
        mounts.push(WorkloadMount {
            destination: destination.as_bytes().to_vec(),
            source: own.join(file).as_os_str().as_bytes().to_vec(),
        });
    }
    Some(mounts)
}

/// Running containers that bind the data root or kubelet's directory (or a parent, `/`)
/// with private propagation, from their records: each a line of evidence.
pub fn private_root_binds(daemon: &Daemon, containers: &[Container]) -> Vec<String> {
    // What a private bind copies: the layers, and kubelet's pod volumes.
    let roots = [
        daemon.root.as_path(),
        std::path::Path::new("/var/lib/kubelet"),
    ];
    let mut found = Vec::new();
    for ct in containers.iter().filter(|c| c.is_running()) {
        let Some(mounts) = recorded_mounts(daemon, ct) else {
            continue;
        };
        for (dest, mp) in mounts {
            let covers = !mp.source.is_empty() && roots.iter().any(|r| r.starts_with(&mp.source));
            let private = matches!(mp.propagation.as_str(), "" | "private" | "rprivate");
            if covers && private {
                found.push(format!(
                    "{} binds {} at {} with propagation {}",
                    ct.name,
                    mp.source,
                    dest,
                    if mp.propagation.is_empty() {
                        "rprivate (default)"
                    } else {
                        &mp.propagation
                    }
                ));
            }
        }
    }
    found
}
