//! Which container a calling process belongs to, from what the kernel says about the
//! process and what the runtime's records say about the container, never from a name.
//!
//! A cgroup path is only a hint: on nodes with cgroup delegation an unprivileged user can
//! create a cgroup called `forged-<id>` and move into it. A caller is a process of a
//! container when it shares the cgroups, the pid namespace and the user namespace of the
//! container's init process, whose pid comes from the runtime's record; and it must still
//! be the same process (same start time) once all that was read.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the kernel says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): a reused pid has
    /// another one.
    pub start: u64,
    /// `/proc/PID/cgroup`, whole: every hierarchy on cgroup v1, the one line on v2.
    pub cgroup: String,
    pub pid_ns: u64,
    pub user_ns: u64,
}

/// Why a caller is not (or no longer) who it seems.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallerError {
    #[error("caller pid {0} is gone, or may not be inspected")]
    Gone(i32),
    #[error("caller pid {pid} is in no container: its cgroup names none ({cgroup})")]
    NoContainer { pid: i32, cgroup: String },
    #[error("caller pid {pid} is not a process of container {name} ({id}): {why}")]
    NotOfContainer {
        pid: i32,
        name: String,
        id: String,
        why: String,
    },
    #[error("caller pid {0} exited or was replaced while it was being checked")]
    Replaced(i32),
}

/// Now, in the unit of process start times (clock ticks since boot): a caller that
/// started after its connection was accepted is not the process that connected (its pid
/// was reused).
pub fn boot_ticks(proc_root: &Path) -> Option<u64> {
    let uptime = std::fs::read_to_string(proc_root.join("uptime")).ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((seconds * crate::engine::sys::clock_ticks_per_second() as f64) as u64)
}

/// The parent pid of `pid` (`/proc/PID/stat` field 4).
fn parent_of(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads the facts about `pid`; `None` when it is gone or may not be inspected.
pub fn facts(proc_root: &Path, pid: i32) -> Option<ProcessFacts> {
    let dir = proc_root.join(pid.to_string());
    let start = crate::engine::namespace::start_time(proc_root, pid)?;
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
    let pid_ns = std::fs::metadata(dir.join("ns/pid")).ok()?.ino();
    let user_ns = std::fs::metadata(dir.join("ns/user")).ok()?.ino();
    Some(ProcessFacts {
        pid,
        start,
        cgroup,
        pid_ns,
        user_ns,
    })
}

/// kubelet's cgroup paths of a namespace's members, from the facts the scan read in the
/// host's cgroup namespace: those through kubelet's pods cgroup (`kubepods`,
/// `kubepods.slice`, below a `--cgroup-root` too). `None` when a member's cgroups are
/// unknown (read from a private cgroup namespace, or above its root): whether kubelet
/// placed it in a pod is then unknown, and the rules that ask protect.
pub fn kubepods_cgroups_of(processes: &[crate::engine::namespace::Process]) -> Option<Vec<String>> {
    let mut paths = Vec::new();
    for p in processes {
        paths.extend(
            p.cgroup
                .as_deref()?
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .filter(|p| p.split('/').any(is_kubepods_component))
                .map(String::from),
        );
    }
    Some(paths)
}

/// kubelet's pods cgroup at any depth (a `--cgroup-root` such as kind's `/kubelet` puts
/// it below): `kubepods` (cgroupfs), `kubepods.slice` or `<root>-kubepods.slice` (systemd),
/// and what kubelet makes below them. A user who names a delegated cgroup so can only get
/// its own namespace spared: the rules that read these paths only ever protect.
fn is_kubepods_component(c: &str) -> bool {
    c == "kubepods"
        || c.starts_with("kubepods-")
        || c == "kubepods.slice"
        || c.ends_with("-kubepods.slice")
}

/// Whether kubelet's cgroup paths place a process in container `id` or in pod `pod_uid`
/// (its directory is `pod<uid>`, with underscores under the systemd driver).
pub fn names_pod_member(paths: &[String], id: Option<&str>, pod_uid: Option<&str>) -> bool {
    paths.iter().any(|p| {
        let parts: Vec<&str> = p.split(['/', '-', '.']).collect();
        let by_id = id.is_some_and(|id| parts.contains(&id));
        let by_pod = pod_uid.is_some_and(|uid| {
            p.split('/').any(|seg| {
                let seg = seg.trim_end_matches(".slice");
                // cgroupfs `pod<uid>`; systemd `kubepods-<qos>-pod<uid_with_underscores>`.
                let pod = seg
                    .strip_prefix("pod")
                    .or_else(|| seg.rsplit_once("-pod").map(|(_, u)| u));
                pod.is_some_and(|u| u == uid || u == uid.replace('-', "_"))
            })
        });
        by_id || by_pod
    })
}

/// Container ids a cgroup file mentions (64 hex digits between `/`, `-` or `.`): hints
/// of which container to check, never proof.
pub fn candidate_ids(cgroup: &str) -> Vec<String> {
    let mut ids: Vec<String> = cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split(['/', '-', '.']))
        .filter(|part| crate::engine::policy::is_hex_id(part))
        .map(String::from)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Checks that `caller` is a process of the container whose init is `init_pid` (from the
/// runtime's record): same cgroups, same pid namespace, same user namespace.
pub fn verify(
    proc_root: &Path,
    caller: &ProcessFacts,
    container_name: &str,
    container_id: &str,
    init_pid: Option<i32>,
) -> Result<(), CallerError> {
    let not_of = |why: String| CallerError::NotOfContainer {
        pid: caller.pid,
        name: container_name.into(),
        id: container_id.into(),
        why,
    };
    let Some(init_pid) = init_pid else {
        return Err(not_of("the container is not running".into()));
    };
    let Some(init) = facts(proc_root, init_pid) else {
        return Err(not_of(format!("its init pid {init_pid} is gone")));
    };
    // A stale record's pid may have been reused: the init of a running container is the
    // child of its runtime shim.
    let parent = parent_of(proc_root, init_pid)
        .and_then(|p| crate::runtime::identity::exe_name(proc_root, p))
        .unwrap_or_default();
    // containerd's shims, Docker's, and CRI-O's conmon.
    if !(parent.contains("shim") || parent == "conmon") {
        return Err(not_of(format!(
            "the record's init pid {init_pid} is no child of a runtime shim (its parent runs \
             {parent:?}): a stale record?"
        )));
    }
    if init.cgroup != caller.cgroup {
        return Err(not_of(format!(
            "its cgroup ({}) is not the container's ({})",
            caller.cgroup.trim().replace('\n', " "),
            init.cgroup.trim().replace('\n', " ")
        )));
    }
    if init.pid_ns != caller.pid_ns {
        return Err(not_of(format!(
            "its pid namespace {} is not the container's {}",
            caller.pid_ns, init.pid_ns
        )));
    }
    if init.user_ns != caller.user_ns {
        return Err(not_of(format!(
            "its user namespace {} is not the container's {}",
            caller.user_ns, init.user_ns
        )));
    }
    Ok(())
}

/// Checks that the caller is still the process whose facts were read.
pub fn still_the_same(proc_root: &Path, caller: &ProcessFacts) -> Result<(), CallerError> {
    match facts(proc_root, caller.pid) {
        Some(now) if now == *caller => Ok(()),
        _ => Err(CallerError::Replaced(caller.pid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        assert_eq!(
            crate::engine::namespace::parse_start_time(stat),
            Some(98765)
        );
        assert_eq!(crate::engine::namespace::parse_start_time("42 (x"), None);
    }

    #[test]
    fn candidates_are_hints_from_every_layout() {
        let id = "a".repeat(64);
        let other = "b".repeat(64);
        let text = format!(
            "12:pids:/docker/{id}\n0::/kubepods.slice/kubepods-pod1.slice/docker-{other}.scope\n"
        );
        assert_eq!(candidate_ids(&text), vec![id.clone(), other.clone()]);
        // A forged name still yields a candidate: verification, not parsing, refuses it.
        assert_eq!(
            candidate_ids(&format!("0::/forged-{id}\n")),
            vec![id.clone()]
        );
        assert!(candidate_ids("0::/user.slice\n").is_empty());
        // The layouts kubelet makes for CRI runtimes: systemd driver (containerd, CRI-O),
        // cgroupfs driver; the pod UID (with dashes, or underscores under systemd) is no id.
        let pod = "0b1e2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d";
        for (layout, want) in [
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod}.slice/cri-containerd-{id}.scope\n"
                ),
                &id,
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/crio-{other}.scope\n"
                ),
                &other,
            ),
            (
                format!(
                    "11:memory:/kubepods/besteffort/pod0b1e2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d/{id}\n"
                ),
                &id,
            ),
        ] {
            assert_eq!(candidate_ids(&layout), vec![want.clone()], "{layout}");
        }
    }

    #[test]
    fn kubelets_pods_cgroup_counts_below_a_cgroup_root_and_unknown_is_none() {
        let member = |cgroup: Option<&str>| crate::engine::namespace::Process {
            pid: 9,
            comm: "p".into(),
            root: None,
            uses: Vec::new(),
            cgroup: cgroup.map(String::from),
        };
        // kind's `cgroupRoot: /kubelet` with the systemd driver.
        let kind = "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1234_abcd.slice/cri-containerd-x.scope\n";
        let paths = kubepods_cgroups_of(&[member(Some(kind))]).unwrap();
        assert_eq!(paths.len(), 1);
        assert!(names_pod_member(&paths, None, Some("1234-abcd")));
        // A service is no pod's; one unknown member makes the namespace unknown.
        let service = member(Some("0::/system.slice/nginx.service\n"));
        assert_eq!(
            kubepods_cgroups_of(std::slice::from_ref(&service)),
            Some(Vec::new())
        );
        assert_eq!(kubepods_cgroups_of(&[service, member(None)]), None);
    }

    #[test]
    fn kubelets_cgroups_place_a_process_in_its_pod() {
        let id = "c".repeat(64);
        let uid = "0b1e2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
        let systemd = vec![format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        )];
        let cgroupfs = vec![format!("/kubepods/burstable/pod{uid}/{id}")];
        for paths in [&systemd, &cgroupfs] {
            assert!(names_pod_member(paths, Some(&id), None), "{paths:?}");
            assert!(names_pod_member(paths, None, Some(uid)), "{paths:?}");
            assert!(
                !names_pod_member(paths, Some(&"d".repeat(64)), Some("1111")),
                "{paths:?}"
            );
        }
    }

    #[test]
    fn verify_compares_with_the_init_process() {
        let me = facts(Path::new("/proc"), std::process::id() as i32).unwrap();
        // This process as its own "init": everything matches but its parent, no shim.
        assert!(matches!(
            verify(Path::new("/proc"), &me, "c", "id", Some(me.pid)),
            Err(CallerError::NotOfContainer { why, .. }) if why.contains("shim")
        ));
        assert!(still_the_same(Path::new("/proc"), &me).is_ok());
        assert!(boot_ticks(Path::new("/proc")).unwrap() >= me.start);
        let mut forged = me.clone();
        forged.cgroup = "0::/forged\n".into();
        assert!(matches!(
            verify(Path::new("/proc"), &forged, "c", "id", Some(me.pid)),
            Err(CallerError::NotOfContainer { .. })
        ));
        assert!(matches!(
            verify(Path::new("/proc"), &me, "c", "id", None),
            Err(CallerError::NotOfContainer { .. })
        ));
        let mut replaced = me.clone();
        replaced.start += 1;
        assert_eq!(
            still_the_same(Path::new("/proc"), &replaced),
            Err(CallerError::Replaced(me.pid))
        );
    }
}
