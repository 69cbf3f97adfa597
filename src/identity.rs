//! Which process is the container runtime, established from what the kernel says about
//! processes (their executable, the sockets they listen on, their namespaces) and
//! cross-checked with the daemon's own pidfile: never taken from a socket's peer alone.
//!
//! Under systemd socket activation (`docker.socket`, dockerd `-H fd://`), `SO_PEERCRED` on a
//! connection to `docker.sock` names the socket's creator, **systemd (pid 1)**, not dockerd.
//! So the peer is one piece of evidence among others: the dockerd that listens on the socket
//! is found by the socket inodes it holds. When the evidence disagrees or is missing, the
//! identity is *unsure*, and every namespace that may be the runtime's is protected.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Executables that are a container runtime's daemon (not its shims).
const RUNTIME_DAEMONS: &[&str] = &["dockerd", "containerd", "docker-containerd"];

/// A process whose executable is a runtime daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeProcess {
    pub pid: i32,
    pub exe: String,
    pub mnt_ns: Option<u64>,
}

/// The established (or not) identity of dockerd.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Identity {
    /// dockerd's pid, when established.
    pub pid: Option<i32>,
    /// Its mount namespace, when established.
    pub mnt_ns: Option<u64>,
    /// What the identity rests on, in words.
    pub evidence: Vec<String>,
    /// Why it could not be established; then nothing that may be the runtime's is touched.
    pub unsure: Option<String>,
    /// Every runtime daemon process found (dockerd, containerd): their namespaces are
    /// protected while the identity is unsure.
    pub runtime_processes: Vec<RuntimeProcess>,
}

/// The executable's file name of `pid` (kernel's `exe` link), without ` (deleted)`.
pub fn exe_name(proc_root: &Path, pid: i32) -> Option<String> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/exe"))).ok()?;
    let name = link.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// Whether `pid` runs a dockerd executable.
pub fn is_dockerd(proc_root: &Path, pid: i32) -> bool {
    exe_name(proc_root, pid).as_deref() == Some("dockerd")
}

/// Every process whose executable is a runtime daemon, in pid order.
pub fn runtime_processes(proc_root: &Path) -> Vec<RuntimeProcess> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<RuntimeProcess> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let exe = exe_name(proc_root, pid)?;
            RUNTIME_DAEMONS
                .contains(&exe.as_str())
                .then(|| RuntimeProcess {
                    pid,
                    mnt_ns: crate::namespace::mnt_ns_inode(proc_root, pid),
                    exe,
                })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The command line of `pid`, split at NULs.
pub fn cmdline(proc_root: &Path, pid: i32) -> Vec<String> {
    std::fs::read(proc_root.join(format!("{pid}/cmdline")))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a command-line flag given as `--flag V`, `--flag=V` or (short) `-f V`.
pub fn flag_value(args: &[String], long: &str, short: Option<&str>) -> Option<String> {
    let mut it = args.iter();
    let mut found = None;
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            found = Some(v.to_string());
        } else if a == long || short.is_some_and(|s| a == s) {
            found = it.next().cloned();
        }
    }
    found
}

/// Paths of the unix sockets `pid` holds in the listening state, from its own network
/// namespace's `/proc/PID/net/unix` and its descriptors.
pub fn listening_unix_paths(proc_root: &Path, pid: i32) -> Vec<String> {
    let Ok(table) = std::fs::read_to_string(proc_root.join(format!("{pid}/net/unix"))) else {
        return Vec::new();
    };
    // Num RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (1<<16).
    let listening: std::collections::HashMap<u64, String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u64::from_str_radix(f.get(3)?, 16).ok()?;
            let inode: u64 = f.get(6)?.parse().ok()?;
            let path = f.get(7)?;
            (flags & 0x1_0000 != 0).then(|| (inode, path.to_string()))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(proc_root.join(format!("{pid}/fd"))) else {
        return Vec::new();
    };
    let mut paths: Vec<String> = fds
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let inode: u64 = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            listening.get(&inode).cloned()
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// `/var/run` is `/run` on every current distribution: compare socket paths without it.
fn same_socket(a: &str, b: &Path) -> bool {
    let norm = |s: &str| {
        s.strip_prefix("/var/run/")
            .map(|r| format!("/run/{r}"))
            .unwrap_or_else(|| s.to_string())
    };
    norm(a) == norm(&b.to_string_lossy())
}

/// The pid in dockerd's pidfile, read through dockerd's own root (`/proc/PID/root`).
fn pidfile_pid(proc_root: &Path, dockerd: i32) -> Option<(PathBuf, Option<i32>)> {
    let args = cmdline(proc_root, dockerd);
    let file = flag_value(&args, "--pidfile", Some("-p"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.pid"));
    let through = proc_root
        .join(dockerd.to_string())
        .join("root")
        .join(file.strip_prefix("/").unwrap_or(&file));
    let text = std::fs::read_to_string(through).ok()?;
    Some((file, text.trim().parse().ok()))
}

/// Establishes which dockerd serves `socket`. `peer` is the socket's `SO_PEERCRED` pid
/// (the creator of the listening socket: dockerd, or systemd under socket activation).
pub fn establish_dockerd(proc_root: &Path, socket: &Path, peer: Option<i32>) -> Identity {
    let runtime = runtime_processes(proc_root);
    let mut id = Identity {
        runtime_processes: runtime.clone(),
        ..Identity::default()
    };
    let listeners: Vec<i32> = runtime
        .iter()
        .filter(|p| p.exe == "dockerd")
        .filter(|p| {
            listening_unix_paths(proc_root, p.pid)
                .iter()
                .any(|path| same_socket(path, socket))
        })
        .map(|p| p.pid)
        .collect();
    let peer_desc = |pid: i32| match exe_name(proc_root, pid) {
        Some(exe) => format!("pid {pid} ({exe})"),
        None => format!("pid {pid}"),
    };
    let chosen = match (listeners.as_slice(), peer) {
        ([one], Some(p)) if *one == p => {
            id.evidence.push(format!(
                "the socket's peer, pid {p}, runs dockerd and listens on {}",
                socket.display()
            ));
            Some(*one)
        }
        ([one], _) => {
            id.evidence.push(format!(
                "dockerd pid {one} listens on {}{}",
                socket.display(),
                match peer {
                    Some(p) => format!(
                        " (the socket's creator is {}: socket activation)",
                        peer_desc(p)
                    ),
                    None => String::new(),
                }
            ));
            Some(*one)
        }
        ([], _) => {
            let dockerds: Vec<String> = runtime
                .iter()
                .filter(|p| p.exe == "dockerd")
                .map(|p| p.pid.to_string())
                .collect();
            if dockerds.is_empty() || peer.is_none() {
                // Nothing to mistake: no dockerd serves this socket (nothing listens on it,
                // or no dockerd runs at all), so there is no daemon namespace to find. The
                // namespaces that may be a runtime's (every runtime daemon's, mntreap's
                // own) stay protected for running containers.
                id.evidence.push(match peer {
                    Some(p) => format!(
                        "no dockerd process is running ({} holds {}: socket activation, \
                         daemon not started)",
                        peer_desc(p),
                        socket.display()
                    ),
                    None if dockerds.is_empty() => "no dockerd process is running".into(),
                    None => format!(
                        "nothing listens on {} (other dockerd pids: {})",
                        socket.display(),
                        dockerds.join(", ")
                    ),
                });
            } else {
                id.unsure = Some(format!(
                    "no dockerd listens on {} (dockerd pids: {})",
                    socket.display(),
                    dockerds.join(", ")
                ));
            }
            None
        }
        (many, _) => {
            id.unsure = Some(format!(
                "several dockerd processes listen on {}: pids {:?}",
                socket.display(),
                many
            ));
            None
        }
    };
    let Some(pid) = chosen else {
        return id;
    };
    // The daemon's own pidfile must agree (when it names a live process).
    if let Some((file, named)) = pidfile_pid(proc_root, pid) {
        match named {
            Some(n) if n == pid => id
                .evidence
                .push(format!("its pidfile {} names pid {pid}", file.display())),
            Some(n) if proc_root.join(n.to_string()).exists() => {
                id.unsure = Some(format!(
                    "dockerd pid {pid} listens on {}, but its pidfile {} names live pid {n}",
                    socket.display(),
                    file.display()
                ));
                return id;
            }
            _ => id.evidence.push(format!(
                "its pidfile {} names no live process",
                file.display()
            )),
        }
    }
    id.pid = Some(pid);
    id.mnt_ns = crate::namespace::mnt_ns_inode(proc_root, pid);
    if id.mnt_ns.is_none() {
        id.unsure = Some(format!(
            "the mount namespace of dockerd pid {pid} cannot be read"
        ));
        id.pid = None;
    }
    id
}

impl Identity {
    /// The namespaces that may be the runtime's while the identity is unsure: every
    /// runtime daemon's, and mntreap's own.
    pub fn possible_runtime_namespaces(&self, proc_root: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .runtime_processes
            .iter()
            .filter_map(|p| p.mnt_ns)
            .chain(crate::namespace::mnt_ns_inode(proc_root, "self"))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

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
    let config_file = flag_value(&args, "--config-file", None)
        .unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let config: serde_json::Value =
        std::fs::read(host_root.join(config_file.trim_start_matches('/')))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    let data_root = flag_value(&args, "--data-root", None)
        .or_else(|| flag_value(&args, "--graph", Some("-g")))
        .or_else(|| config["data-root"].as_str().map(String::from))
        .or_else(|| config["graph"].as_str().map(String::from))
        .unwrap_or_else(|| crate::docker::DEFAULT_ROOT.into());
    let socket = flag_value(&args, "--host", Some("-H"))
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .or_else(|| {
            // `fd://` (socket activation) or no -H: the unix socket it listens on.
            listening_unix_paths(proc_root, pid)
                .into_iter()
                .find(|p| p.ends_with(".sock") && !p.contains("/plugins/"))
        })
        .unwrap_or_else(|| crate::docker::DEFAULT_SOCKET.into());
    DaemonSettings {
        data_root: PathBuf::from(data_root),
        socket: PathBuf::from(socket),
        host_root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_every_form() {
        let args: Vec<String> = ["dockerd", "-H", "fd://", "--data-root=/d", "-p", "/x.pid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            flag_value(&args, "--data-root", Some("-g")).as_deref(),
            Some("/d")
        );
        assert_eq!(
            flag_value(&args, "--pidfile", Some("-p")).as_deref(),
            Some("/x.pid")
        );
        assert_eq!(
            flag_value(&args, "--host", Some("-H")).as_deref(),
            Some("fd://")
        );
        assert_eq!(flag_value(&args, "--exec-root", None), None);
    }

    #[test]
    fn var_run_is_run() {
        assert!(same_socket(
            "/run/docker.sock",
            Path::new("/var/run/docker.sock")
        ));
        assert!(same_socket(
            "/tmp/d/docker.sock",
            Path::new("/tmp/d/docker.sock")
        ));
        assert!(!same_socket(
            "/run/docker.sock",
            Path::new("/run/docker.sock2")
        ));
    }

    #[test]
    fn this_process_listening_is_seen() {
        let dir = std::env::temp_dir().join(format!("mntreap-ident-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let seen = listening_unix_paths(Path::new("/proc"), std::process::id() as i32);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            seen.contains(&path.to_string_lossy().into_owned()),
            "{seen:?}"
        );
    }
}
