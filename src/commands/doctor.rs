//! `mntreap doctor`: host checks for the configurations that leak container mounts, each
//! with a stable id, evidence and a remedy (the list is in README.md, "doctor").

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::{Config, Exit, Failure, print};
use crate::engine::scan;
use crate::report::containers;
use crate::runtime::docker::{Container, Daemon};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warning,
    Problem,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub summary: String,
    pub evidence: Vec<String>,
    pub remedy: &'static str,
}

impl Check {
    fn new(id: &'static str, remedy: &'static str) -> Check {
        Check {
            id,
            status: Status::Ok,
            summary: String::new(),
            evidence: Vec::new(),
            remedy,
        }
    }
    fn with(mut self, status: Status, summary: impl Into<String>) -> Check {
        self.status = status;
        self.summary = summary.into();
        self
    }
}

/// Runs every check; exit 0 when all are ok or skipped, 1 on warnings or problems.
pub fn command(e: &Config) -> Result<Exit, Failure> {
    let docker = e.connect()?;
    let containers = docker.list().unwrap_or_default();
    let mut checks = vec![
        runtime_identity(&docker.daemon),
        kernel_lazy_detach(&docker.daemon.proc_root),
        mountflags_slave_live_restore(&docker.daemon),
        split_namespaces(&docker.daemon),
        stuck_containers(&containers),
        data_root_binds(&docker.daemon, &containers),
    ];
    // Namespaces holding container mounts they do not need (PrivateTmp-style services).
    let mut req = e.request(&[], vec![docker.daemon.root.clone()])?;
    req.layer_signatures = crate::runtime::docker::layer_signatures(&containers);
    req.trusted_namespaces = docker.daemon.trusted_namespaces();
    let scan = scan::scan(&req)?;
    checks.push(foreign_holders(&scan, &docker.daemon, &containers));

    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if e.json {
        let doc = json!({"docker": docker.daemon, "checks": checks, "worst": worst});
        print(&format!("{doc:#}\n"));
    } else {
        let mut out = String::new();
        for c in &checks {
            let word = match c.status {
                Status::Ok => "ok",
                Status::Skipped => "skipped",
                Status::Warning => "WARNING",
                Status::Problem => "PROBLEM",
            };
            out.push_str(&format!("[{word:<7}] {}: {}\n", c.id, c.summary));
            for ev in &c.evidence {
                out.push_str(&format!("          - {ev}\n"));
            }
            if c.status >= Status::Warning {
                out.push_str(&format!("          remedy: {}\n", c.remedy));
            }
        }
        print(&out);
    }
    Ok(if worst >= Status::Warning {
        Exit::Remaining
    } else {
        Exit::Clean
    })
}

/// Kernels before 3.18 cannot remove a directory that is a mount point in another
/// namespace, unless RHEL's backport is switched on.
fn kernel_lazy_detach(proc_root: &Path) -> Check {
    let c = Check::new(
        "kernel-lazy-detach",
        "set fs.may_detach_mounts=1 (RHEL/CentOS 7.4+ kernels), or run a kernel >= 3.18",
    );
    let release =
        std::fs::read_to_string(proc_root.join("sys/kernel/osrelease")).unwrap_or_default();
    let mut nums = release.trim().split(|ch: char| !ch.is_ascii_digit());
    let major: u32 = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let minor: u32 = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let sysctl = std::fs::read_to_string(proc_root.join("sys/fs/may_detach_mounts")).ok();
    let detach = sysctl.as_deref().map(str::trim);
    let mut c = if lazy_detach_status((major, minor), detach) == Status::Ok {
        c.with(
            Status::Ok,
            format!(
                "kernel {} detaches mounts of removed directories in other namespaces",
                release.trim()
            ),
        )
    } else {
        c.with(
            Status::Problem,
            format!(
                "kernel {} keeps a directory busy while another namespace mounts it: leaked \
                 copies make `docker rm` fail",
                release.trim()
            ),
        )
    };
    c.evidence.push(format!(
        "fs.may_detach_mounts: {}",
        detach.unwrap_or("absent")
    ));
    c
}

/// Whether a removed directory's mounts in other namespaces are detached: on mainline
/// since 3.18 (no knob); on kernels with RHEL's backport only with `fs.may_detach_mounts=1`
/// (Docker before 28 set it; Docker 28+, containerd and CRI-O do not).
fn lazy_detach_status(kernel: (u32, u32), may_detach_mounts: Option<&str>) -> Status {
    match may_detach_mounts {
        Some("1") => Status::Ok,
        Some(_) => Status::Problem,
        None if kernel >= (3, 18) => Status::Ok,
        None => Status::Problem,
    }
}

/// `MountFlags=` of docker.service as systemd would load it (unit file, then drop-ins in
/// name order; the last assignment wins), read under `root`, and the file that set it.
fn unit_mount_flags(root: &Path) -> Option<(String, std::path::PathBuf)> {
    // Through the daemon's root, symlinks (/lib -> usr/lib, units linked to /lib/...)
    // resolve inside it.
    let host = |rel: &str| crate::runtime::docker::on_host(root, Path::new(rel));
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
        Ok(rel) => crate::runtime::docker::on_host(root, &Path::new("/").join(rel)),
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
fn mountflags_slave_live_restore(daemon: &Daemon) -> Check {
    let c = Check::new(
        "mountflags-slave-live-restore",
        "remove MountFlags=slave from docker.service (drop-ins too), or turn live-restore off; \
         then restart dockerd (and release the old namespace's copies: `mntreap scan`)",
    );
    let Some(pid) = daemon.pid else {
        return c.with(Status::Skipped, not_established(daemon));
    };
    let root_line = std::fs::read_to_string(daemon.proc_root.join(format!("{pid}/mountinfo")))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.split(' ').nth(4) == Some("/"))
                .map(String::from)
        });
    let Some(root_line) = root_line else {
        return c.with(
            Status::Skipped,
            format!("cannot read dockerd's ({pid}) mountinfo"),
        );
    };
    let fields: Vec<&str> = root_line.split(' ').collect();
    let optional = fields
        .iter()
        .skip(6)
        .take_while(|f| **f != "-")
        .copied()
        .collect::<Vec<_>>();
    let slave = optional.iter().any(|f| f.starts_with("master:"))
        && !optional.iter().any(|f| f.starts_with("shared:"));
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
    let args = crate::runtime::docker::identity::cmdline(proc_root, pid);
    if args
        .iter()
        .any(|a| a == "--live-restore" || a == "--live-restore=true")
    {
        return Some(true);
    }
    let config = crate::runtime::docker::identity::flag_value(&args, "--config-file", None)
        .unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let root = proc_root.join(format!("{pid}/root"));
    let text = std::fs::read(crate::runtime::docker::on_host(&root, Path::new(&config))).ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&text).ok()?;
    doc.get("live-restore")
        .and_then(|v| v.as_bool())
        .or(Some(false))
}

/// The containerd socket dockerd uses: `--containerd`, else the one it manages under its
/// exec root.
fn containerd_address(proc_root: &Path, dockerd: i32) -> String {
    let args = crate::runtime::docker::identity::cmdline(proc_root, dockerd);
    crate::runtime::docker::identity::flag_value(&args, "--containerd", None).unwrap_or_else(|| {
        let exec_root = crate::runtime::docker::identity::flag_value(&args, "--exec-root", None)
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
fn runtime_identity(daemon: &Daemon) -> Check {
    let mut c = Check::new(
        "runtime-identity",
        "make sure exactly one dockerd serves the socket (--docker-host) and that its pidfile \
         and data root agree; until then mntreap releases nothing in any runtime namespace",
    );
    c = match (daemon.pid, daemon.unsure()) {
        (Some(pid), None) => c.with(
            Status::Ok,
            format!(
                "dockerd is pid {pid}, mount namespace {}",
                daemon.mnt_ns.unwrap_or_default()
            ),
        ),
        (_, why) => c.with(
            Status::Warning,
            format!(
                "dockerd's identity is unsure ({}): every runtime namespace is protected",
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
fn split_namespaces(daemon: &Daemon) -> Check {
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
        let args = crate::runtime::docker::identity::cmdline(proc_root, pid);
        let arg = |flag: &str| {
            crate::runtime::docker::identity::flag_value(&args, flag, None).unwrap_or_default()
        };
        if arg("-namespace") != "moby" || arg("-address") != address {
            continue;
        }
        if ns.is_some_and(|ns| !home.contains(&ns)) {
            let id = arg("-id");
            let id = crate::runtime::docker::short_id(&id);
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

fn stuck_containers(containers: &[Container]) -> Check {
    let c = Check::new(
        "stuck-containers",
        "`mntreap reap` releases what holds them and removes them",
    );
    let stuck: Vec<String> = containers
        .iter()
        .filter(|c| c.is_stuck())
        .map(|c| {
            format!(
                "{} ({}) is {}",
                c.name,
                crate::runtime::docker::short_id(&c.id),
                c.state
            )
        })
        .collect();
    let mut c = if stuck.is_empty() {
        c.with(Status::Ok, "no container is Dead or Removal In Progress")
    } else {
        c.with(
            Status::Problem,
            format!("{} container(s) stuck in removal", stuck.len()),
        )
    };
    c.evidence = stuck;
    c
}

/// Containers that bind the data root (or a directory above it) with private propagation:
/// the bind copies every layer mounted at that moment, and host unmounts never reach them.
fn data_root_binds(daemon: &Daemon, containers: &[Container]) -> Check {
    let c = Check::new(
        "data-root-bind-propagation",
        "bind the data root with rslave propagation (-v /var/lib/docker:/var/lib/docker:rslave) \
         so that the host's unmounts propagate into the container",
    );
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct MountPoint {
        #[serde(default)]
        source: String,
        #[serde(default)]
        propagation: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Config {
        #[serde(default)]
        mount_points: std::collections::HashMap<String, MountPoint>,
    }
    let mut found = Vec::new();
    for ct in containers.iter().filter(|c| c.is_running()) {
        let path = daemon
            .root
            .join("containers")
            .join(&ct.id)
            .join("config.v2.json");
        let Ok(text) = std::fs::read(crate::runtime::docker::on_host(&daemon.host_root, &path))
        else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<Config>(&text) else {
            continue;
        };
        for (dest, mp) in config.mount_points {
            let covers = !mp.source.is_empty() && daemon.root.starts_with(&mp.source);
            let private = matches!(mp.propagation.as_str(), "" | "private" | "rprivate");
            if covers && private {
                found.push(format!(
                    "{} binds {} at {} with propagation {:?}",
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
    let mut c = if found.is_empty() {
        c.with(
            Status::Ok,
            "no running container binds the data root privately",
        )
    } else {
        c.with(
            Status::Warning,
            format!(
                "{} container bind(s) of the data root copy layer mounts",
                found.len()
            ),
        )
    };
    c.evidence = found;
    c
}

/// The second write-up: namespaces (PrivateTmp services and the like) created after
/// docker's mounts, holding container mounts they do not need.
fn foreign_holders(scan: &scan::Scan, daemon: &Daemon, containers: &[Container]) -> Check {
    let c = Check::new(
        "foreign-namespace-holders",
        "release them now (`mntreap release CONTAINER`, `mntreap reap`); to prevent it, run \
         `mntreap agent`, which releases copies when containers stop",
    );
    let findings = containers::findings(scan, daemon, containers);
    let mut by_ns: std::collections::BTreeMap<u64, (usize, String)> = Default::default();
    for f in &findings {
        let h = &scan.holders[f.holder];
        let n = &scan.namespaces[h.ns];
        let who = n
            .processes
            .iter()
            .take(3)
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect::<Vec<_>>()
            .join(", ");
        let entry = by_ns.entry(n.ns.inode).or_insert((0, who));
        entry.0 += 1;
    }
    let mut c = if by_ns.is_empty() {
        c.with(
            Status::Ok,
            "no namespace holds container mounts it does not need",
        )
    } else {
        c.with(
            Status::Problem,
            format!(
                "{} mount namespace(s) hold {} container mount(s) they do not need",
                by_ns.len(),
                findings.len()
            ),
        )
    };
    c.evidence = by_ns
        .into_iter()
        .map(|(ns, (n, who))| format!("mount namespace {ns} ({who}): {n} mount(s)"))
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_detach_verdicts() {
        assert_eq!(lazy_detach_status((6, 1), None), Status::Ok);
        assert_eq!(lazy_detach_status((3, 18), None), Status::Ok);
        assert_eq!(lazy_detach_status((3, 10), None), Status::Problem);
        assert_eq!(lazy_detach_status((3, 10), Some("1")), Status::Ok);
        // EL7's backport: the knob exists and is off (Docker 28+, containerd and CRI-O
        // never set it).
        assert_eq!(lazy_detach_status((3, 10), Some("0")), Status::Problem);
        assert_eq!(lazy_detach_status((4, 18), Some("0")), Status::Problem);
    }

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
