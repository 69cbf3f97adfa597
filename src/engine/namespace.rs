//! Finding the mount namespaces of a host, and who lives in them, from `/proc`.
//!
//! Each namespace is identified by the inode of `/proc/PID/ns/mnt` and held open by one
//! descriptor from the moment it is found: every later action enters the namespace through
//! that descriptor, never through a pid, so a pid that exits or is reused between scan and
//! release cannot redirect an unmount into another namespace.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::engine::sys;

/// A mount as a process refers to it: the mount id where the kernel reports one (statx
/// since 5.8, fdinfo since 3.15), and the filesystem's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountRef {
    pub id: Option<u64>,
    pub dev: Option<(u32, u32)>,
}

/// How a process keeps a mount busy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PinVia {
    Cwd,
    Exe,
    OpenFile,
}

/// A process, with what scan needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
    /// The mount holding the process's root directory.
    pub root: Option<MountRef>,
    /// Mounts the process keeps busy: working directory, executable, open files.
    pub uses: Vec<(PinVia, MountRef)>,
    /// `/proc/PID/cgroup` as the host's cgroup namespace names it; `None`: unknown (see
    /// [`crate::engine::cgroups`]).
    pub cgroup: Option<String>,
}

/// How a mount namespace was found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoundVia {
    /// `/proc/PID/ns/mnt` of a member process.
    #[default]
    Process,
    /// The kernel's list of every mount namespace (`NS_MNT_GET_NEXT`, Linux 6.12+): it has
    /// no process, something pins it.
    KernelList,
    /// A process's descriptor of it (`/proc/PID/fd/N` -> `mnt:[INODE]`), on kernels without
    /// the list.
    Descriptor,
}

/// What keeps a mount namespace with no process alive: remove it, or its copies come back
/// whenever something enters it (snap-confine enters `/run/snapd/ns/<snap>.mnt`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NsPin {
    /// A process holds a descriptor of it.
    Descriptor { pid: i32, comm: String, fd: u32 },
    /// An nsfs bind mount of it (`unshare --mount=FILE`, `/run/snapd/ns/*.mnt`), at `path`
    /// in mount namespace `mnt_ns`: `umount` it there.
    Bind { mnt_ns: u64, path: String },
}

/// One mount namespace, held open.
#[derive(Debug)]
pub struct Namespace {
    /// Inode of the nsfs file: the namespace id that `ls -l /proc/PID/ns/mnt` shows.
    pub inode: u64,
    /// Open `/proc/PID/ns/mnt` of `pid_used`; keeps the namespace alive and addressable.
    pub fd: OwnedFd,
    /// The pid whose ns file was opened (for audit; may have exited since).
    pub pid_used: i32,
    /// Member processes (thread-group leaders), in pid order.
    pub pids: Vec<i32>,
    /// True for mntreap's own namespace (the runtime's view on a host).
    pub own: bool,
    /// Owned by mntreap's own user namespace: only a process with `CAP_SYS_ADMIN` there
    /// (root on a host) can mount in it. A namespace owned by another user namespace may
    /// be an unprivileged user's, whose mounts and mount options say what that user chose.
    pub host_userns: bool,
    /// How it was found.
    pub via: FoundVia,
    /// What pins it, when no process is in it (filled for descriptors here, for nsfs
    /// binds once the mount tables are read).
    pub pinned_by: Vec<NsPin>,
}

/// Errors reading /proc that make a scan impossible (per-process failures are not errors:
/// processes come and go during a scan).
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot list processes in {path}: {source}")]
    ListProc { path: PathBuf, source: io::Error },
    #[error(
        "cannot open {path}: {source} (mntreap needs root, or CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
    )]
    OwnNamespace { path: PathBuf, source: io::Error },
}

/// The mount namespace id (the inode of `PROC/<pid>/ns/mnt`) of `pid`, which may be
/// `"self"`; `None` when the process is gone or may not be inspected.
pub fn mnt_ns_inode(proc_root: &Path, pid: impl std::fmt::Display) -> Option<u64> {
    fs::metadata(proc_root.join(format!("{pid}/ns/mnt")))
        .ok()
        .map(|m| m.ino())
}

/// Why this process does not see every process of the host, if it does not: `/proc/2` is
/// the kernel's `kthreadd` (its flags carry `PF_KTHREAD`, which no user process can set)
/// only in the initial pid namespace. From any other (a pod without `hostPID`), `/proc`
/// lists that namespace's processes alone, and the mount namespaces of all the others are
/// not seen.
pub fn pid_namespace_blindness(proc_root: &Path) -> Option<String> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = fs::read_to_string(proc_root.join("2/stat")).unwrap_or_default();
    let kthreadd = stat.starts_with("2 (kthreadd) ")
        && stat
            .rfind(')')
            .and_then(|end| {
                stat[end + 1..]
                    .split_whitespace()
                    .nth(6)?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|flags| flags & PF_KTHREAD != 0);
    // The procfs must also be this process's own pid namespace's (`--proc` from a child
    // pid namespace would name other pids than ours and our peers').
    let own = fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|l| l.to_str()?.parse::<u32>().ok())
        == Some(std::process::id());
    (!(kthreadd && own)).then(|| {
        format!(
            "{} shows the processes of a pid namespace that is not the host's (pid 2 is not \
             the kernel's kthreadd): the mount namespaces of every other process are not \
             seen, or it is not mntreap's own; run mntreap in the host's pid namespace \
             (hostPID: true, PidHost)",
            proc_root.display()
        )
    })
}

/// The manager that started this pid namespace's pid 1 as a container, from the
/// `container=` variable of the environment it was started with (systemd's convention:
/// systemd-nspawn, lxc, docker, podman); `None` when there is none or it cannot be read.
pub fn machine_manager(proc_root: &Path) -> Option<String> {
    let environ = fs::read(proc_root.join("1/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|var| {
        let value = var.strip_prefix(b"container=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22): a pid
/// that is reused has another one. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn start_time(proc_root: &Path, pid: impl std::fmt::Display) -> Option<u64> {
    parse_start_time(&fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?)
}

pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Every mount namespace, found through `proc_root`: those with processes, and, when this
/// process sees the host's processes, those with none (see [`FoundVia`]).
/// `host_view`: `proc_root` shows the host's processes ([`pid_namespace_blindness`] found
/// nothing), the condition for the kernel's list.
pub fn enumerate(proc_root: &Path, host_view: bool) -> Result<Vec<Namespace>, NamespaceError> {
    let own_path = proc_root.join("self/ns/mnt");
    let own_inode = fs::metadata(&own_path)
        .map_err(|source| NamespaceError::OwnNamespace {
            path: own_path.clone(),
            source,
        })?
        .ino();
    let own_userns = fs::metadata(proc_root.join("self/ns/user"))
        .ok()
        .map(|m| m.ino());
    let entries = fs::read_dir(proc_root).map_err(|source| NamespaceError::ListProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();

    // mntreap itself is no member worth reporting (its namespace still is one).
    let me = std::process::id() as i32;
    let member = |pid: i32| if pid == me { Vec::new() } else { vec![pid] };
    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut by_inode: std::collections::HashMap<u64, usize> = Default::default();
    for &pid in &pids {
        let ns_path = proc_root.join(format!("{pid}/ns/mnt"));
        // A process that exited since the listing (or a kernel thread we cannot read) is
        // simply not a member of anything any more.
        let Ok(meta) = fs::metadata(&ns_path) else {
            continue;
        };
        if let Some(&i) = by_inode.get(&meta.ino()) {
            namespaces[i].pids.extend(member(pid));
            continue;
        }
        let Ok(fd) = open(&ns_path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) else {
            continue;
        };
        let fd: OwnedFd = fd;
        // The pid may have been reused between stat and open: trust the descriptor.
        let Ok(inode) = nix::sys::stat::fstat(fd.as_fd()).map(|st| st.st_ino) else {
            continue;
        };
        if let Some(&i) = by_inode.get(&inode) {
            namespaces[i].pids.extend(member(pid));
            continue;
        }
        let i = register(
            &mut namespaces,
            &mut by_inode,
            fd,
            inode,
            FoundVia::Process,
            own_userns,
        );
        namespaces[i].pid_used = pid;
        namespaces[i].pids = member(pid);
        namespaces[i].own = inode == own_inode;
    }
    if host_view {
        add_process_less(
            proc_root,
            &mut namespaces,
            &mut by_inode,
            &pids,
            me,
            own_userns,
        );
    }
    Ok(namespaces)
}

/// Adds the namespaces with no process in view (from the kernel's list, or from processes'
/// descriptors where the kernel has no list), and names the descriptors that pin them.
/// Only from the host's view: from another pid namespace (a pod without hostPID, a machine
/// container) the kernel's list reaches namespaces whose owners are out of view.
fn add_process_less(
    proc_root: &Path,
    namespaces: &mut Vec<Namespace>,
    by_inode: &mut std::collections::HashMap<u64, usize>,
    pids: &[i32],
    me: i32,
    own_userns: Option<u64>,
) {
    let listed = namespaces
        .iter()
        .find(|n| n.own)
        .map(|own| kernel_list(own.fd.as_fd(), &|inode| by_inode.contains_key(&inode)));
    let complete = match listed {
        Some(Ok(list)) => {
            for fd in list {
                add_found(namespaces, by_inode, fd, FoundVia::KernelList, own_userns);
            }
            true
        }
        Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
            tracing::debug!(error = %e, "no kernel list of mount namespaces (Linux < 6.12)");
            false
        }
        Some(Err(e)) => {
            // EMFILE and the like: what the list would add is unknown, so is what pins them.
            tracing::warn!(error = %e, "the kernel's list of mount namespaces could not be read");
            false
        }
        None => false,
    };
    // A process that started after the listing (a runtime between unshare and exec) makes
    // its namespace look process-less: file the members that appeared since.
    if namespaces.iter().any(|n| n.pids.is_empty() && !n.own) {
        file_late_members(proc_root, namespaces, by_inode);
    }
    // Descriptors pin namespaces with no process; without the kernel's list they are also
    // how such namespaces are found. Only read when they can matter: every process's
    // descriptors are many.
    if !complete || namespaces.iter().any(|n| n.pids.is_empty() && !n.own) {
        for (pid, fd, inode) in ns_descriptors(proc_root, pids, me) {
            if !by_inode.contains_key(&inode)
                && let Some(opened) = namespace_descriptor(pid, fd, inode)
            {
                add_found(
                    namespaces,
                    by_inode,
                    opened,
                    FoundVia::Descriptor,
                    own_userns,
                );
            }
            if let Some(&i) = by_inode.get(&inode)
                && namespaces[i].pids.is_empty()
                && !namespaces[i].own
            {
                let comm = fs::read_to_string(proc_root.join(format!("{pid}/comm")))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_default();
                namespaces[i]
                    .pinned_by
                    .push(NsPin::Descriptor { pid, comm, fd });
            }
        }
    }
}

/// A duplicate of `pid`'s descriptor `fd` if it still is mount namespace `inode`.
fn namespace_descriptor(pid: i32, fd: u32, inode: u64) -> Option<OwnedFd> {
    let dup = sys::fd_of_process(pid, fd).ok()?;
    let same = nix::sys::stat::fstat(dup.as_fd()).is_ok_and(|st| st.st_ino == inode);
    (same && sys::is_mount_namespace(dup.as_fd())).then_some(dup)
}

/// Files as members the processes now in namespaces that had none when `/proc` was listed.
fn file_late_members(
    proc_root: &Path,
    namespaces: &mut [Namespace],
    by_inode: &std::collections::HashMap<u64, usize>,
) {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if pid == me {
            continue;
        }
        if let Some(inode) = mnt_ns_inode(proc_root, pid)
            && let Some(&i) = by_inode.get(&inode)
            && namespaces[i].via != FoundVia::Process
            && !namespaces[i].pids.contains(&pid)
        {
            namespaces[i].pids.push(pid);
            namespaces[i].pids.sort_unstable();
        }
    }
}

/// Adds the namespace behind `fd` (found `via` the kernel's list or a descriptor) unless it
/// is known: it has no process of its own in view.
fn add_found(
    namespaces: &mut Vec<Namespace>,
    by_inode: &mut std::collections::HashMap<u64, usize>,
    fd: OwnedFd,
    via: FoundVia,
    own_userns: Option<u64>,
) {
    let Ok(inode) = nix::sys::stat::fstat(fd.as_fd()).map(|st| st.st_ino) else {
        return;
    };
    if !by_inode.contains_key(&inode) {
        register(namespaces, by_inode, fd, inode, via, own_userns);
    }
}

/// Adds the namespace behind `fd` (inode `inode`), no member yet; returns its index.
fn register(
    namespaces: &mut Vec<Namespace>,
    by_inode: &mut std::collections::HashMap<u64, usize>,
    fd: OwnedFd,
    inode: u64,
    via: FoundVia,
    own_userns: Option<u64>,
) -> usize {
    let host_userns =
        own_userns.is_some() && sys::owner_userns_inode(fd.as_fd()).ok() == own_userns;
    by_inode.insert(inode, namespaces.len());
    namespaces.push(Namespace {
        inode,
        fd,
        pid_used: 0,
        pids: Vec::new(),
        own: false,
        host_userns,
        via,
        pinned_by: Vec::new(),
    });
    namespaces.len() - 1
}

/// The mount namespaces in the kernel's list, from `start` both ways, that `known` does not
/// know. Only those stay open: a node's thousands of namespaces already hold one
/// descriptor each.
fn kernel_list(
    start: std::os::fd::BorrowedFd<'_>,
    known: &dyn Fn(u64) -> bool,
) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::new();
    for walk in [sys::Walk::Previous, sys::Walk::Next] {
        let mut at: Option<OwnedFd> = None;
        // The list is finite; the bound only guards against a kernel that loops.
        for _ in 0..1_000_000 {
            let from = at.as_ref().map_or(start, |f| f.as_fd());
            let Some((fd, _id)) = sys::mntns_neighbour(from, walk)? else {
                break;
            };
            let inode = nix::sys::stat::fstat(fd.as_fd())?.st_ino;
            if !known(inode) {
                out.push(fd.try_clone()?);
            }
            at = Some(fd);
        }
    }
    Ok(out)
}

/// `(pid, fd, namespace inode)` for every descriptor of a mount namespace that a process
/// other than `me` holds (`/proc/PID/fd/N` -> `mnt:[INODE]`).
fn ns_descriptors(proc_root: &Path, pids: &[i32], me: i32) -> Vec<(i32, u32, u64)> {
    let mut out = Vec::new();
    for &pid in pids.iter().filter(|&&p| p != me) {
        let dir = proc_root.join(format!("{pid}/fd"));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(link) = fs::read_link(e.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("mnt:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(inode) = inode {
                out.push((pid, fd, inode));
            }
        }
    }
    out
}

/// A process's `/proc/PID` directory, opened once: every fact read through it is of that
/// one process (a pid reused meanwhile makes the reads fail, never answer for another),
/// and each read is a lookup of one name, not of the whole path again.
pub struct ProcDir {
    fd: OwnedFd,
}

impl ProcDir {
    /// `None` if the process has exited.
    pub fn open(proc_root: &Path, pid: i32) -> Option<ProcDir> {
        let fd = open(
            &proc_root.join(pid.to_string()),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(ProcDir { fd })
    }

    /// The contents of the file `name` (relative, e.g. `cgroup` or `fdinfo/3`).
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        read_at(self.fd.as_fd(), name)
    }

    /// The mount of the file `name` refers to (`cwd`, `exe`, `root`), followed.
    fn mount_of(&self, name: &str) -> Option<MountRef> {
        // Not a round trip to a FUSE daemon or NFS server a process chose.
        sys::statx_mount(
            Some(self.fd.as_fd()),
            OsStr::new(name),
            libc::AT_STATX_DONT_SYNC,
        )
        .ok()
        .map(|s| MountRef {
            id: s.mnt_id,
            dev: Some(s.dev),
        })
    }

    /// Mount ids of the process's open files, from `fdinfo/*` (`mnt_id:` lines).
    fn open_file_mounts(&self) -> Vec<u64> {
        let Ok(mut fdinfo) = nix::dir::Dir::openat(
            self.fd.as_fd(),
            "fdinfo",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return Vec::new();
        };
        let names: Vec<std::ffi::CString> = fdinfo
            .iter()
            .filter_map(|e| Some(e.ok()?.file_name().to_owned()))
            .filter(|name| !name.to_bytes().starts_with(b"."))
            .collect();
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|name| {
                let text = read_at(fdinfo.as_fd(), name.as_c_str())?;
                let text = std::str::from_utf8(&text).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("mnt_id:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The contents of `name` below the directory `dir`.
fn read_at<P: ?Sized + nix::NixPath>(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &P,
) -> Option<Vec<u8>> {
    let fd =
        nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    let mut file = fs::File::from(fd);
    // Read as it comes: `read_to_end` would first ask a /proc file its size (fstat, lseek),
    // which it does not know; a process's files are small.
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match io::Read::read(&mut file, &mut chunk) {
            Ok(0) => return Some(text),
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Details of one process, read through its opened directory; `None` if it has exited.
pub fn process(dir: &ProcDir, pid: i32) -> Option<Process> {
    let comm = dir.read("comm")?;
    let comm = String::from_utf8_lossy(comm.strip_suffix(b"\n").unwrap_or(&comm)).into_owned();
    let mut uses = Vec::new();
    if let Some(cwd) = dir.mount_of("cwd") {
        uses.push((PinVia::Cwd, cwd));
    }
    if let Some(exe) = dir.mount_of("exe") {
        uses.push((PinVia::Exe, exe));
    }
    uses.extend(dir.open_file_mounts().into_iter().map(|id| {
        (
            PinVia::OpenFile,
            MountRef {
                id: Some(id),
                dev: None,
            },
        )
    }));
    Some(Process {
        pid,
        comm,
        root: dir.mount_of("root"),
        uses,
        cgroup: None,
    })
}

/// Opens a namespace file, e.g. a bind-mounted `/run/mntns/x` or `/proc/PID/ns/mnt`.
pub fn open_ns(path: &OsStr) -> io::Result<OwnedFd> {
    Ok(open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}
