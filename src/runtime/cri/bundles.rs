//! Offline: containerd's task bundles (`<state>/io.containerd.runtime.v2.task/k8s.io/<id>/`
//! with the OCI `config.json` the CRI plugin wrote and the shim's `init.pid`), which is
//! what an operator has when containerd hangs. Only containers and sandboxes with a live
//! task have a bundle: those are the ones whose mounts exist.

use std::path::Path;

use super::entry::{Entry, Layout, SpecMount, valid_id};
use crate::runtime::host::{on_host, read_small};

const TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// Every task bundle's entry; bundles that are not CRI's, or unreadable, are skipped
/// (named in the log). `Err`: the bundle directory itself cannot be read.
pub(super) fn entries(
    layout: &Layout,
    host_root: &Path,
    proc_root: &Path,
) -> Result<Vec<Entry>, String> {
    let dir = layout
        .state
        .join("io.containerd.runtime.v2.task")
        .join(&layout.namespace);
    let list = std::fs::read_dir(on_host(host_root, &dir))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for d in list.filter_map(|d| d.ok()) {
        let Some(id) = d.file_name().to_str().map(String::from) else {
            continue;
        };
        if !valid_id(&id) {
            continue;
        }
        let bundle = layout.bundle(&id);
        match read(&bundle, &id, host_root, proc_root) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(problem) => {
                tracing::warn!(bundle = %bundle.display(), %problem, "task bundle skipped")
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// One bundle's entry; `None` when it is not a CRI container (`ctr run` tasks).
fn read(
    bundle: &Path,
    id: &str,
    host_root: &Path,
    proc_root: &Path,
) -> Result<Option<Entry>, String> {
    let config = bundle.join("config.json");
    let text = read_small(&on_host(host_root, &config))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let a = &spec["annotations"];
    let get = |k: &str| a[k].as_str().unwrap_or_default().to_string();
    let sandbox = match a[TYPE].as_str() {
        Some("sandbox") => true,
        Some("container") => false,
        _ => return Ok(None),
    };
    // The shim's pid file names the task's init; it counts only while that process lives.
    let pid = read_small(&on_host(host_root, &bundle.join("init.pid")))
        .ok()
        .and_then(|t| String::from_utf8_lossy(&t).trim().parse::<i32>().ok())
        .filter(|&p| p > 0 && proc_root.join(p.to_string()).exists());
    let mounts = spec["mounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| SpecMount {
                    destination: m["destination"].as_str().unwrap_or_default().into(),
                    kind: m["type"].as_str().unwrap_or_default().into(),
                    source: m["source"].as_str().unwrap_or_default().into(),
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let netns = spec["linux"]["namespaces"].as_array().and_then(|ns| {
        ns.iter().find(|n| n["type"] == "network")?["path"]
            .as_str()
            .map(String::from)
    });
    let volumes = if sandbox {
        Vec::new()
    } else {
        mounts
            .iter()
            .filter(|m| m.kind == "bind")
            .map(|m| m.source.clone())
            .collect()
    };
    Ok(Some(Entry {
        id: id.to_string(),
        sandbox,
        name: if sandbox {
            get(SANDBOX_NAME)
        } else {
            get(CONTAINER_NAME)
        },
        pod_name: get(SANDBOX_NAME),
        pod_namespace: get(SANDBOX_NAMESPACE),
        pod_uid: get(SANDBOX_UID),
        sandbox_id: get(SANDBOX_ID),
        // A live init means the task runs; without one, its state is not known offline.
        state: match (pid, sandbox) {
            (Some(_), true) => "ready",
            (Some(_), false) => "running",
            (None, _) => "unknown",
        }
        .into(),
        pid,
        snapshotter: String::new(),
        root_path: spec["root"]["path"].as_str().map(String::from),
        mounts,
        netns,
        volumes,
    }))
}

/// Running containers whose task bundle binds kubelet's root, containerd's root or state,
/// or a parent of one (`/`), without slave or shared propagation: the host's unmounts
/// never reach such a copy. Each a line of evidence.
pub(super) fn private_root_binds(
    layout: &Layout,
    host_root: &Path,
    containers: &[crate::runtime::model::Container],
) -> Vec<String> {
    let roots = [&layout.kubelet_root, &layout.root, &layout.state];
    let mut found = Vec::new();
    for c in containers.iter().filter(|c| c.is_running() && !c.sandbox) {
        let config = layout.bundle(&c.id).join("config.json");
        let Ok(text) = read_small(&on_host(host_root, &config)) else {
            continue;
        };
        let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        for m in spec["mounts"].as_array().into_iter().flatten() {
            let source = m["source"].as_str().unwrap_or_default();
            let options: Vec<&str> = m["options"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str())
                .collect();
            let bind = m["type"] == "bind" || options.iter().any(|o| o.ends_with("bind"));
            let covers = !source.is_empty() && roots.iter().any(|r| r.starts_with(source));
            let propagates = options
                .iter()
                .any(|o| matches!(*o, "rslave" | "slave" | "rshared" | "shared"));
            if bind && covers && !propagates {
                found.push(format!(
                    "{} (pod {}) binds {source} at {} with private propagation",
                    c.name,
                    c.pod.as_deref().unwrap_or("?"),
                    m["destination"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    found
}

/// What the runtime mounted in a container's (or a sandbox's) namespace: its task
/// bundle's mounts (destination and node source). `None` when the bundle cannot be read.
pub(super) fn container_mounts(
    layout: &Layout,
    host_root: &Path,
    c: &crate::runtime::model::Container,
) -> Option<Vec<crate::engine::release::WorkloadMount>> {
    let config = layout.bundle(&c.id).join("config.json");
    let text = read_small(&on_host(host_root, &config)).ok()?;
    let spec = serde_json::from_slice::<serde_json::Value>(&text).ok()?;
    spec["mounts"]
        .as_array()?
        .iter()
        .map(|m| {
            Some(crate::engine::release::WorkloadMount {
                destination: m["destination"].as_str()?.as_bytes().to_vec(),
                source: m["source"].as_str().unwrap_or_default().as_bytes().to_vec(),
            })
        })
        .collect()
}
