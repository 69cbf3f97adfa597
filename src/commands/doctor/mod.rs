//! `mntreap doctor`: host checks for the configurations that leak container mounts, each
//! with a stable id, evidence and a remedy (the list is in docs/usage.md, "doctor").

use std::path::Path;

use super::{Config, Exit, Failure, print};
use crate::engine::scan;
use crate::ops::node::findings;
use crate::runtime::ContainerRuntime;
use crate::runtime::model::{Container, RuntimeKind};

mod daemon;

use daemon::{mountflags_slave_live_restore, runtime_identity, split_namespaces};

pub use crate::report::doc::{Check, DoctorDoc, Status};

impl Check {
    fn new(id: &'static str, remedy: &'static str) -> Check {
        Check {
            id: id.into(),
            status: Status::Ok,
            summary: String::new(),
            evidence: Vec::new(),
            remedy: remedy.into(),
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
    let runtime = e.connect()?;
    let runtime = runtime.as_ref();
    let daemon = runtime.daemon();
    let containers = runtime.list().unwrap_or_default();
    let mut checks = vec![
        runtime_identity(daemon),
        kernel_lazy_detach(&daemon.proc_root),
    ];
    if daemon.runtime == RuntimeKind::Docker {
        checks.extend([
            mountflags_slave_live_restore(daemon),
            split_namespaces(daemon),
            stuck_containers(&containers),
        ]);
    }
    checks.push(data_root_binds(runtime, &containers));
    // Namespaces holding container mounts they do not need (PrivateTmp-style services).
    let mut req = daemon.vouch(e.request(&[], runtime.roots())?);
    req.layer_signatures = crate::runtime::scope::layer_signatures(&containers);
    let scan = crate::ops::scan(&req)?;
    checks.push(foreign_holders(&scan, runtime, &containers));

    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if e.json {
        print(&crate::report::doc::to_text(&DoctorDoc {
            runtime: daemon.clone(),
            checks,
            worst,
        }));
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
                crate::runtime::scope::short_id(&c.id),
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
fn data_root_binds(runtime: &dyn ContainerRuntime, containers: &[Container]) -> Check {
    let c = Check::new(
        "data-root-bind-propagation",
        "bind the data root (and /var/lib/kubelet, or /) with rslave propagation \
         (-v /var/lib/docker:/var/lib/docker:rslave; Kubernetes: mountPropagation: \
         HostToContainer) so that the host's unmounts propagate into the container",
    );
    let found = runtime.private_root_binds(containers);
    let mut c = if found.is_empty() {
        c.with(
            Status::Ok,
            "no running container binds the data root or kubelet's directory privately",
        )
    } else {
        c.with(
            Status::Warning,
            format!(
                "{} private container bind(s) of the data root or kubelet's directory copy \
                 container mounts",
                found.len()
            ),
        )
    };
    c.evidence = found;
    c
}

/// The second write-up: namespaces (PrivateTmp services and the like) created after
/// docker's mounts, holding container mounts they do not need.
fn foreign_holders(
    scan: &scan::Scan,
    runtime: &dyn ContainerRuntime,
    containers: &[Container],
) -> Check {
    let daemon = runtime.daemon();
    let c = Check::new(
        "foreign-namespace-holders",
        "release them now (`mntreap release CONTAINER`, `mntreap reap`); to prevent it, run \
         `mntreap agent`, which releases copies when containers stop",
    );
    let findings = findings(scan, daemon, containers, &runtime.owner_of(containers));
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
}
