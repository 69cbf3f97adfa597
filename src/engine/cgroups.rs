//! Other processes' cgroups as the host's cgroup namespace names them.
//!
//! `/proc/PID/cgroup` prints paths relative to the *reader's* cgroup namespace: from inside
//! a container with a private one (every non-privileged container on cgroup v2, the
//! DaemonSet's agent among them), kubelet's `/kubepods.slice/...` reads
//! `/../../kubepods-besteffort.slice/...`, and a path below the reader's root loses its
//! prefix altogether. So the reads happen on a worker thread that first enters the cgroup
//! namespace of a process in the host's (the kernel's initial) cgroup namespace, and a
//! path that still climbs above the root (`/..`) is unknown. The thread ends
//! with the work, taking its namespace with it; no other thread ever changes namespace.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::CloneFlags;

/// How a worker thread reads cgroups in the host's view.
#[derive(Debug)]
pub enum CgroupView {
    /// This process already is in the host's cgroup namespace.
    Own,
    /// The host's cgroup namespace, to enter on each worker thread.
    Enter(OwnedFd),
    /// The host's view cannot be had: why.
    Unknown(String),
}

/// The kernel's initial cgroup namespace has this fixed inode (`PROC_CGROUP_INIT_INO`):
/// the host's view, whoever asks. A namespace merely shared with the runtime or pid 1 may
/// be a container's (a kind node, a runtime started in one, a reused pid).
const INITIAL_CGROUP_NS: u64 = 0xEFFF_FFFB;

impl CgroupView {
    /// The host's view: this thread's own cgroup namespace when it is the initial one, else
    /// the cgroup namespace of `reference` (the established runtime daemon, or pid 1 when
    /// there is none) when that one is.
    pub fn of(proc_root: &Path, reference: i32) -> CgroupView {
        let ours = proc_root.join("thread-self/ns/cgroup");
        let theirs = proc_root.join(format!("{reference}/ns/cgroup"));
        let inode = |p: &Path| std::fs::metadata(p).map(|m| m.ino());
        if inode(&ours).is_ok_and(|i| i == INITIAL_CGROUP_NS) {
            return CgroupView::Own;
        }
        match inode(&theirs) {
            Ok(INITIAL_CGROUP_NS) => match crate::engine::namespace::open_ns(theirs.as_os_str()) {
                // The descriptor, not the pid, is what gets entered: check it is the same one.
                Ok(fd) if inode_of_fd(&fd) == Some(INITIAL_CGROUP_NS) => CgroupView::Enter(fd),
                Ok(_) => CgroupView::Unknown(format!("{} changed under us", theirs.display())),
                Err(e) => CgroupView::Unknown(format!("cannot open {}: {e}", theirs.display())),
            },
            Ok(other) => CgroupView::Unknown(format!(
                "neither mntreap nor pid {reference} is in the host's initial cgroup namespace \
                 (pid {reference}'s is cgroup:[{other}])"
            )),
            Err(e) => CgroupView::Unknown(format!("cannot read {}: {e}", theirs.display())),
        }
    }

    /// Makes the current thread read in the host's view. Call only on a worker thread that
    /// ends with the work (it keeps the namespace). `Err`: why the view is unknown.
    pub fn enter_on_worker(&self) -> Result<(), String> {
        match self {
            CgroupView::Own => Ok(()),
            CgroupView::Enter(fd) => nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("cannot enter the host's cgroup namespace: {e}")),
            CgroupView::Unknown(why) => Err(why.clone()),
        }
    }

    /// Why the view is unknown, without entering anything.
    pub fn unknown_reason(&self) -> Option<&str> {
        match self {
            CgroupView::Unknown(why) => Some(why),
            _ => None,
        }
    }
}

fn inode_of_fd(fd: &OwnedFd) -> Option<u64> {
    std::fs::File::from(fd.try_clone().ok()?)
        .metadata()
        .ok()
        .map(|m| m.ino())
}

/// `/proc/PID/cgroup` as the current thread's cgroup namespace names it; `None` when it
/// cannot be read, or when a path lies above that namespace's root (`/..`): not the host's
/// view, so unknown.
pub fn read(process: &crate::engine::namespace::ProcDir) -> Option<String> {
    let text = String::from_utf8(process.read("cgroup")?).ok()?;
    let climbs = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|p| p == "/.." || p.starts_with("/../"));
    (!climbs).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_its_own_view_and_its_own_cgroup() {
        let me = std::process::id() as i32;
        let view = CgroupView::of(Path::new("/proc"), me);
        let ours = std::fs::metadata("/proc/thread-self/ns/cgroup")
            .unwrap()
            .ino();
        assert_eq!(
            matches!(view, CgroupView::Own),
            ours == INITIAL_CGROUP_NS,
            "{view:?}"
        );
        if ours != INITIAL_CGROUP_NS {
            return;
        }
        assert!(view.enter_on_worker().is_ok());
        let dir = crate::engine::namespace::ProcDir::open(Path::new("/proc"), me).unwrap();
        let text = read(&dir).expect("our own cgroup is in our view");
        assert!(
            text.lines().all(|l| l.splitn(3, ':').count() == 3),
            "{text}"
        );
    }
}
