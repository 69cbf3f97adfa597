//! What a running dockerd says about itself through the kernel: its data root, its socket
//! and its view of the host's files, from its command line and its own daemon.json.

use std::path::{Path, PathBuf};

use crate::runtime::host::on_host;
use crate::runtime::identity::{cmdline, flag_value, flag_values};

/// What a running dockerd says about itself through the kernel: where it keeps its data,
/// which socket it serves, and where its view of the host's files is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    /// `/proc/PID/root`: the daemon's root, whatever namespace this process is in.
    pub host_root: PathBuf,
}

/// Reads dockerd `pid`'s settings: its command line (`--data-root`, `-g`, `-H`,
/// `--config-file`), its daemon.json through its own root, the sockets it listens on.
pub fn daemon_settings(proc_root: &Path, pid: i32) -> DaemonSettings {
    let args = cmdline(proc_root, pid);
    let host_root = proc_root.join(pid.to_string()).join("root");
    let data_root = data_root_from(&args, &host_root);
    let socket = flag_values(&args, "--host", Some("-H"))
        .into_iter()
        .find_map(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .or_else(|| {
            // `fd://` (socket activation) or no -H: the unix socket it listens on, as the
            // kernel recorded it at bind.
            crate::engine::unix_sockets::listening_paths(proc_root, pid)
                .into_iter()
                .find(|p| {
                    p.extension().is_some_and(|e| e == "sock")
                        && !p.starts_with("/run/docker/plugins")
                })
        })
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_SOCKET));
    DaemonSettings {
        data_root,
        socket,
        host_root,
    }
}

/// Where dockerd `pid` keeps its data by its own configuration (`--data-root`, `-g`,
/// daemon.json), without the socket look-up [`daemon_settings`] also makes.
pub fn configured_data_root(proc_root: &Path, pid: i32) -> PathBuf {
    data_root_from(
        &cmdline(proc_root, pid),
        &proc_root.join(pid.to_string()).join("root"),
    )
}

/// The data root a dockerd command line says, or its daemon.json (read through the
/// daemon's own root), or the default.
fn data_root_from(args: &[String], daemon_root: &Path) -> PathBuf {
    let config_file =
        flag_value(args, "--config-file", None).unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let config: serde_json::Value = std::fs::read(on_host(daemon_root, Path::new(&config_file)))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let root = flag_value(args, "--data-root", None)
        .or_else(|| flag_value(args, "--graph", Some("-g")))
        .filter(|r| !r.is_empty())
        .or_else(|| config["data-root"].as_str().map(String::from))
        .or_else(|| config["graph"].as_str().map(String::from))
        .unwrap_or_else(|| super::DEFAULT_ROOT.into());
    PathBuf::from(root)
}
