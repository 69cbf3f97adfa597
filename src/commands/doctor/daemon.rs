//! doctor's checks of the daemon itself: which process it is, the first write-up's
//! MountFlags=slave with live-restore (and the unit's own word), shims split from it.

use std::path::Path;

use super::{Check, Status};
use crate::runtime::model::Daemon;

/// `MountFlags=` of docker.service as systemd would load it (unit file, then drop-ins in
/// name order; the last assignment wins), read under `root`, and the file that set it.
fn unit_mount_flags(root: &Path) -> Option<(String, std::path::PathBuf)> {
    // Through the daemon's root, symlinks (/lib -> usr/lib, units linked to /lib/...)
    // resolve inside it.
    let host = |rel: &str| crate::runtime::host::on_host(root, Path::new(rel));
    let mut files = Vec::new();
    for dir in [
        "lib/systemd/system",
        "usr/lib/systemd/system",
        "etc/systemd/system",
        "run/systemd/system",
    ] {
        let unit = host(&format!("{dir}/docker.service"));
        if unit.exists() {
            files.push(unit);
        }
    }
    let mut dropins: Vec<std::path::PathBuf> = [
        "usr/lib/systemd/system",
        "lib/systemd/system",
        "etc/systemd/system",
        "run/systemd/system",
    ]
    .iter()
    .flat_map(|dir| {
        std::fs::read_dir(host(&format!("{dir}/docker.service.d")))
            .into_iter()
            .flatten()
            .flatten()
    })
    .map(|e| e.path())
    .filter(|p| p.extension().is_some_and(|x| x == "conf"))
    .collect();
    dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files.extend(dropins);
    let mut found = None;
    for f in files {
        let text = std::fs::read_to_string(host_file(root, &f)).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("MountFlags=") {
                found = Some((v.trim().to_string(), f.clone()));
            }
        }
    }
    found
}

/// A file found under `root` (a drop-in may itself be a link to an absolute path).
fn host_file(root: &Path, found: &Path) -> std::path::PathBuf {
    match found.strip_prefix(root) {
        Ok(rel) => crate::runtime::host::on_host(root, &Path::new("/").join(rel)),
        Err(_) => found.to_path_buf(),
    }
}

/// Describes live-restore for people: on, off, or unknown.
fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "unknown",
    }
}

/// The first write-up: dockerd in a slave mount namespace (systemd MountFlags=slave) with
/// live-restore: after a restart, running containers' mounts stay in the old namespace.
pub(super) fn mountflags_slave_live_restore(daemon: &Daemon) -> Check {
    let c = Check::new(
        "mountflags-slave-live-restore",
        "remove MountFlags=slave from docker.service (drop-ins too), or turn live-restore off; \
         then restart dockerd (and release the old namespace's copies: `mntreap scan`)",
    );
    let Some(pid) = daemon.pid else {
        return c.with(Status::Skipped, not_established(daemon));
    };
    // dockerd's root mount, as the engine's mountinfo parser reads it.
    let table = std::fs::read(daemon.proc_root.join(format!("{pid}/mountinfo")))
        .ok()
        .and_then(|t| crate::engine::mountinfo::parse(&t).ok());
    let root = table.as_ref().and_then(|t| {
        let index = t.index();
        t.root_mount(&index).map(|i| t.mounts[i])
    });
    let Some(root) = root else {
        return c.with(
            Status::Skipped,
            format!("cannot read dockerd's ({pid}) mountinfo"),
        );
    };
    let slave = root.master.is_some() && root.peer_group.is_none();
    let root_line = format!(
        "mount {}{}{}",
        root.id,
        root.peer_group
            .map(|g| format!(" shared:{g}"))
            .unwrap_or_default(),
        root.master
            .map(|g| format!(" master:{g}"))
            .unwrap_or_default()
    );
    let live_restore = daemon
        .live_restore
        .or_else(|| live_restore_configured(&daemon.proc_root, pid));
    let mut c = match (slave, live_restore) {
        (true, Some(true)) => c.with(
            Status::Problem,
            format!(
                "dockerd (pid {pid}) runs in a slave mount namespace (MountFlags=slave) with \
                 live-restore on: each restart strands running containers' mounts in the old \
                 namespace"
            ),
        ),
        (true, None) => c.with(
            Status::Warning,
            format!("dockerd (pid {pid}) runs in a slave mount namespace; live-restore unknown"),
        ),
        _ => c.with(
            Status::Ok,
            format!(
                "dockerd (pid {pid}): {} mount namespace, live-restore {}",
                if slave { "slave" } else { "not a slave" },
                on_off(live_restore)
            ),
        ),
    };
    c.evidence
        .push(format!("dockerd's / in mountinfo: {root_line}"));
    c.evidence
        .push(format!("live-restore: {}", on_off(live_restore)));
    // The unit's own word, where systemd runs the daemon.
    let root = daemon.proc_root.join(pid.to_string()).join("root");
    if root.join("run/systemd/system").exists() {
        match unit_mount_flags(&root) {
            Some((v, file)) => c.evidence.push(format!(
                "docker.service: MountFlags={v} (set in {})",
                file.display()
            )),
            None => c
                .evidence
                .push("docker.service: no MountFlags= (systemd's default: shared)".into()),
        }
    }
    c
}

/// live-restore from dockerd's command line or its daemon.json.
fn live_restore_configured(proc_root: &Path, pid: i32) -> Option<bool> {
    let args = crate::runtime::identity::cmdline(proc_root, pid);
    if args
        .iter()
        .any(|a| a == "--live-restore" || a == "--live-restore=true")
    {
        return Some(true);
    }
    let config = crate::runtime::identity::flag_value(&args, "--config-file", None)
        .unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let root = proc_root.join(format!("{pid}/root"));
    let text = std::fs::read(crate::runtime::host::on_host(&root, Path::new(&config))).ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&text).ok()?;
    doc.get("live-restore")
        .and_then(|v| v.as_bool())
        .or(Some(false))
}

/// The containerd socket dockerd uses: `--containerd`, else the one it manages under its
/// exec root.
fn containerd_address(proc_root: &Path, dockerd: i32) -> String {
    let args = crate::runtime::identity::cmdline(proc_root, dockerd);
    crate::runtime::identity::flag_value(&args, "--containerd", None).unwrap_or_else(|| {
        let exec_root = crate::runtime::identity::flag_value(&args, "--exec-root", None)
            .unwrap_or_else(|| "/var/run/docker".into());
        format!("{exec_root}/containerd/containerd.sock")
    })
}

/// Why dockerd's pid is not known, for a skipped check.
fn not_established(daemon: &Daemon) -> String {
    format!(
        "dockerd's identity is not established ({})",
        daemon.unsure().unwrap_or("no daemon found")
    )
}

/// Which process is dockerd, and on what evidence (see `identity`).
pub(super) fn runtime_identity(daemon: &Daemon) -> Check {
    let mut c = Check::new(
        "runtime-identity",
        "make sure exactly one runtime daemon serves the socket (--docker-host, \
         --cri-endpoint) and that dockerd's pidfile and data root agree; until then mntreap \
         releases nothing in any runtime namespace",
    );
    c = match (daemon.pid, daemon.unsure()) {
        (Some(pid), None) => c.with(
            Status::Ok,
            format!(
                "{} is pid {pid}, mount namespace {}",
                daemon.runtime.daemon_word(),
                daemon.mnt_ns.unwrap_or_default()
            ),
        ),
        (_, why) => c.with(
            Status::Warning,
            format!(
                "{}'s identity is unsure ({}): every runtime namespace is protected",
                daemon.runtime.daemon_word(),
                why.unwrap_or("no daemon found")
            ),
        ),
    };
    c.evidence = daemon.identity.evidence.clone();
    c.evidence
        .extend(daemon.identity.runtime_processes.iter().map(|p| {
            format!(
                "{} pid {} in mount namespace {}",
                p.exe,
                p.pid,
                p.mnt_ns.unwrap_or_default()
            )
        }));
    c
}

/// containerd shims (and so their containers) living in a namespace that is not dockerd's.
pub(super) fn split_namespaces(daemon: &Daemon) -> Check {
    let c = Check::new(
        "split-namespaces",
        "restart the affected containers (docker restart) so that their mounts are made in \
         dockerd's current namespace; `mntreap release CONTAINER` frees the stranded copies",
    );
    let (Some(dockerd_ns), Some(pid)) = (daemon.mnt_ns, daemon.pid) else {
        return c.with(Status::Skipped, not_established(daemon));
    };
    // Only this dockerd's shims: docker's containerd namespace, on its containerd socket.
    let address = containerd_address(&daemon.proc_root, pid);
    // Shims live where the containerd that started them lives: dockerd's own, or the
    // system containerd's (containerd.service), which listens on that socket.
    let proc_root = daemon.proc_root.as_path();
    let home: Vec<u64> = daemon
        .identity
        .runtime_processes
        .iter()
        .filter(|p| {
            p.pid == pid
                || crate::engine::unix_sockets::listening_paths(proc_root, p.pid)
                    .contains(&std::path::PathBuf::from(&address))
        })
        .filter_map(|p| p.mnt_ns)
        .chain(std::iter::once(dockerd_ns))
        .collect();
    let mut stranded = Vec::new();
    for entry in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let comm =
            std::fs::read_to_string(proc_root.join(format!("{pid}/comm"))).unwrap_or_default();
        if !comm.starts_with("containerd-shim") && !comm.starts_with("docker-containerd") {
            continue;
        }
        let ns = crate::engine::namespace::mnt_ns_inode(proc_root, pid);
        let args = crate::runtime::identity::cmdline(proc_root, pid);
        let arg = |flag: &str| {
            crate::runtime::identity::flag_value(&args, flag, None).unwrap_or_default()
        };
        if arg("-namespace") != "moby" || arg("-address") != address {
            continue;
        }
        if ns.is_some_and(|ns| !home.contains(&ns)) {
            let id = arg("-id");
            let id = crate::runtime::scope::short_id(&id);
            stranded.push(format!(
                "shim pid {pid} (container {id}) in mount namespace {} (dockerd's: {dockerd_ns})",
                ns.unwrap_or_default()
            ));
        }
    }
    let mut c = if stranded.is_empty() {
        c.with(Status::Ok, "every shim shares dockerd's mount namespace")
    } else {
        c.with(
            Status::Problem,
            format!(
                "{} shim(s) live in a mount namespace that is not dockerd's current one (a \
                 restart split them): their containers' mounts are out of dockerd's reach",
                stranded.len()
            ),
        )
    };
    c.evidence = stranded;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_mount_flags_last_assignment_wins() {
        let dir = std::env::temp_dir().join(format!("mntreap-unit-{}", std::process::id()));
        let unit = dir.join("lib/systemd/system");
        let dropin = dir.join("etc/systemd/system/docker.service.d");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::write(
            unit.join("docker.service"),
            "[Service]\nExecStart=/usr/sbin/dockerd\n",
        )
        .unwrap();
        assert_eq!(unit_mount_flags(&dir), None);
        std::fs::write(
            dropin.join("10-slave.conf"),
            "[Service]\nMountFlags=slave\n",
        )
        .unwrap();
        let (value, file) = unit_mount_flags(&dir).unwrap();
        assert_eq!(value, "slave");
        assert!(file.ends_with("10-slave.conf"));
        std::fs::write(dropin.join("20-reset.conf"), "[Service]\nMountFlags=\n").unwrap();
        assert_eq!(unit_mount_flags(&dir).map(|v| v.0).as_deref(), Some(""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
