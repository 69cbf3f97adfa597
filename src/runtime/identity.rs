//! Which process is the container runtime, established from what the kernel says about
//! processes (their executable, the listening socket they hold, their namespaces) and
//! cross-checked with the daemon's own pidfile: never taken from a socket's peer alone.
//!
//! Under systemd socket activation (`docker.socket`, dockerd `-H fd://`), `SO_PEERCRED` on a
//! connection to `docker.sock` names the socket's creator, **systemd (pid 1)**, not dockerd.
//! So the peer is one piece of evidence among others: dockerd is the dockerd process that
//! holds the listening socket *bound to the very file* at the socket path (device and inode,
//! from `sock_diag`; see [`crate::engine::unix_sockets`]), which no other process can fake. When the
//! evidence disagrees or is missing, the identity is *unsure*, and every namespace that may
//! be the runtime's is protected.

use std::path::{Path, PathBuf};

use crate::runtime::host::HostView;
use crate::runtime::model::{Identity, RuntimeKind, RuntimeProcess};

/// dockerd's executables: `dockerd`, and distribution builds such as RHEL's
/// `dockerd-current`.
pub fn is_dockerd_name(exe: &str) -> bool {
    exe.starts_with("dockerd")
}

/// A container runtime's daemon (dockerd, containerd, CRI-O, and their distribution
/// names; not a shim), or kubelet, which mounts pods' volumes and unmounts them itself.
fn is_runtime_daemon_name(exe: &str) -> bool {
    is_dockerd_name(exe)
        || (exe.contains("containerd") && !exe.contains("shim"))
        || exe == "crio"
        || exe.starts_with("kubelet")
}

impl RuntimeProcess {
    /// Reads `pid`'s executable and mount namespace, pinned by its start time: a pid that
    /// is reused between the reads gives `None`.
    fn read(proc_root: &Path, pid: i32) -> Option<RuntimeProcess> {
        Self::read_if(proc_root, pid, |_| true)
    }

    /// [`RuntimeProcess::read`], for a process whose executable passes `wanted`. Most
    /// processes are not wanted: their executable is the one read. A wanted one's is read
    /// again between its two start times, with its namespace.
    fn read_if(
        proc_root: &Path,
        pid: i32,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<RuntimeProcess> {
        exe_name(proc_root, pid).filter(|e| wanted(e))?;
        let start = crate::engine::namespace::start_time(proc_root, pid)?;
        let exe = exe_name(proc_root, pid).filter(|e| wanted(e))?;
        let mnt_ns = crate::engine::namespace::mnt_ns_inode(proc_root, pid);
        (crate::engine::namespace::start_time(proc_root, pid)? == start).then_some(RuntimeProcess {
            pid,
            exe,
            mnt_ns,
        })
    }
}

/// The executable's file name of `pid` (kernel's `exe` link), without ` (deleted)`.
/// Whether `pid` is the init of a pid namespace: pid 1 here, or a machine's systemd (an
/// nspawn or LXC guest's pid 1, which is what creates its `docker.socket`). The kernel says
/// which pid a process has in its own pid namespace (`NSpid`'s last field); a name does not
/// count alone, since any user can run a program called `systemd` (`systemd --user` is one).
pub(crate) fn is_namespace_init(proc_root: &Path, pid: i32) -> bool {
    if pid == 1 {
        return true;
    }
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"));
    let innermost_is_1 = status.ok().is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            == Some("1")
    });
    // An unprivileged `unshare -Urpf ./systemd` is a pid namespace's init too, in a user
    // namespace of its own: only the host's user namespace makes a machine's init.
    let user_ns = |p: i32| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(proc_root.join(format!("{p}/ns/user")))
            .ok()
            .map(|m| m.ino())
    };
    let host_userns = user_ns(pid).is_some_and(|u| Some(u) == user_ns(1));
    innermost_is_1 && host_userns && exe_name(proc_root, pid).as_deref() == Some("systemd")
}

pub fn exe_name(proc_root: &Path, pid: i32) -> Option<String> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/exe"))).ok()?;
    let name = link.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// Whether `pid` runs a dockerd executable.
pub fn is_dockerd(proc_root: &Path, pid: i32) -> bool {
    exe_name(proc_root, pid).is_some_and(|e| is_dockerd_name(&e))
}

/// Every process whose executable is a runtime daemon by its name and is the host's own
/// (the host's user namespace, an executable of the host's outside container roots: see
/// [`HostView::runs_host_binary`]), in pid order. A container's process named
/// `containerd` is none of these: it can neither be taken for the runtime nor have its
/// namespace spared.
pub fn runtime_processes(proc_root: &Path, host: &HostView) -> Vec<RuntimeProcess> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<RuntimeProcess> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| RuntimeProcess::read_if(proc_root, pid, is_runtime_daemon_name))
        .filter(|p| host.runs_host_binary(p.pid))
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The runtime processes whose namespace is spared by their name alone: those in the
/// host's mount namespace (all of them when that namespace is not known). A daemon in a
/// namespace of its own (`MountFlags=slave`) is spared as the established one, or as a
/// holder of the socket, not by its name.
fn spared_by_name(runtime: &[RuntimeProcess], host: &HostView) -> Vec<RuntimeProcess> {
    runtime
        .iter()
        .filter(|p| host.in_host_mount_ns(p.pid) != Some(false))
        .cloned()
        .collect()
}

/// The mount namespaces of every process whose executable is named as a runtime daemon's
/// (dockerd, containerd, crio, kubelet), wherever it runs. For sparing only: a name can be
/// forged, and forging one only keeps more.
pub fn daemon_namespaces(proc_root: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| exe_name(proc_root, pid).is_some_and(|exe| is_runtime_daemon_name(&exe)))
        .filter_map(|pid| crate::engine::namespace::mnt_ns_inode(proc_root, pid))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
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

/// Every value of a command-line flag, as Go's pflag accepts them: `--flag V`,
/// `--flag=V`, and for a one-letter short flag `-f V`, `-f=V` and `-fV`. Parsing stops at
/// `--`. Single-dash long flags (`-namespace x`, as containerd shims take them) are given
/// as `long`.
pub fn flag_values(args: &[String], long: &str, short: Option<&str>) -> Vec<String> {
    let mut values = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == long || short.is_some_and(|s| a == s) {
            values.extend(it.next().cloned());
        } else if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            values.push(v.to_string());
        } else if let Some(v) = short
            .and_then(|s| a.strip_prefix(s))
            .filter(|v| !v.is_empty())
        {
            values.push(v.strip_prefix('=').unwrap_or(v).to_string());
        }
    }
    values
}

/// The last value of a flag (the one that wins), see [`flag_values`].
pub fn flag_value(args: &[String], long: &str, short: Option<&str>) -> Option<String> {
    flag_values(args, long, short).pop()
}

/// The pid in dockerd's pidfile, read through dockerd's own root (`/proc/PID/root`).
fn pidfile_pid(proc_root: &Path, dockerd: i32) -> Option<(PathBuf, Option<i32>)> {
    let args = cmdline(proc_root, dockerd);
    let file = flag_value(&args, "--pidfile", Some("-p"))
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.pid"));
    let through =
        crate::runtime::host::on_host(&proc_root.join(dockerd.to_string()).join("root"), &file);
    let text = std::fs::read_to_string(through).ok()?;
    Some((file, text.trim().parse().ok()))
}

/// Establishes which daemon of `kind` serves `socket` (a host path, read through
/// `host_root`): the daemon of that kind holding the listening socket bound to that very
/// file, as for dockerd (see the module's notes); the pidfile cross-check is
/// dockerd's alone (containerd and CRI-O keep none by default). `peer` is the socket's
/// `SO_PEERCRED` pid (the listener's creator: the daemon, or systemd under activation).
pub fn establish(
    kind: RuntimeKind,
    proc_root: &Path,
    host_root: &Path,
    socket: &Path,
    peer: Option<i32>,
) -> Identity {
    establish_in(
        kind,
        proc_root,
        &HostView::new(proc_root, host_root),
        host_root,
        socket,
        peer,
    )
}

/// [`establish`], with the host's view given (a moved data root among container roots).
pub fn establish_in(
    kind: RuntimeKind,
    proc_root: &Path,
    host: &HostView,
    host_root: &Path,
    socket: &Path,
    peer: Option<i32>,
) -> Identity {
    let runtime = runtime_processes(proc_root, host);
    let mut id = Identity {
        runtime_processes: spared_by_name(&runtime, host),
        ..Identity::default()
    };
    let daemons: Vec<i32> = runtime
        .iter()
        .filter(|p| kind.is_daemon_exe(&p.exe))
        .map(|p| p.pid)
        .collect();
    let file =
        crate::engine::unix_sockets::file_id(&crate::runtime::host::on_host(host_root, socket))
            .ok();
    // The listener may live in the network namespace of its creator (the peer; systemd).
    let also_in: Vec<i32> = peer.into_iter().chain([1]).collect();
    let listeners = match file {
        Some(f) => {
            match crate::engine::unix_sockets::holders_of(proc_root, &daemons, &also_in, f) {
                Ok(h) => h,
                Err(e) => {
                    id.unsure = Some(format!(
                        "the kernel's socket diagnostics (sock_diag, unix_diag) could not be \
                         asked which process holds {}: {e}",
                        socket.display()
                    ));
                    return id;
                }
            }
        }
        None => Vec::new(),
    };
    let facts = SocketFacts {
        word: kind.daemon_word(),
        proc_root,
        socket,
        peer,
        file,
        also_in,
        daemons,
    };
    // Whoever holds the socket is spared wherever it lives (the established daemon in a
    // namespace of its own, or each of several holders).
    for &holder in &listeners {
        facts.spare(&mut id, holder);
    }
    let Some(pid) = facts.choose(&listeners, &mut id) else {
        return id;
    };
    // The daemon's own pidfile must agree (when it names a live process).
    if kind == RuntimeKind::Docker && !pidfile_agrees(proc_root, pid, socket, &mut id) {
        return id;
    }
    match runtime.iter().find(|r| r.pid == pid).and_then(|r| r.mnt_ns) {
        Some(ns) => {
            id.pid = Some(pid);
            id.mnt_ns = Some(ns);
        }
        None => {
            id.unsure = Some(format!(
                "the mount namespace of {} pid {pid} cannot be read",
                facts.word
            ))
        }
    }
    id
}

/// What the kernel says about a runtime's socket: who is its peer, which file it is, which
/// daemon processes there are.
struct SocketFacts<'a> {
    word: &'static str,
    proc_root: &'a Path,
    socket: &'a Path,
    peer: Option<i32>,
    file: Option<crate::engine::unix_sockets::FileId>,
    /// Network namespaces (by a member pid) the listener may live in.
    also_in: Vec<i32>,
    daemons: Vec<i32>,
}

impl SocketFacts<'_> {
    /// Whatever serves the socket may be the runtime: its namespace is spared too.
    fn spare(&self, id: &mut Identity, pid: i32) {
        if !id.runtime_processes.iter().any(|r| r.pid == pid)
            && let Some(r) = RuntimeProcess::read(self.proc_root, pid)
        {
            id.runtime_processes.push(r);
        }
    }

    fn describe(&self, pid: i32) -> String {
        match exe_name(self.proc_root, pid) {
            Some(exe) => format!("pid {pid} ({exe})"),
            None => format!("pid {pid}"),
        }
    }

    fn is_init(&self, pid: i32) -> bool {
        is_namespace_init(self.proc_root, pid)
    }

    /// A peer other than the holder is fine only as the socket's creator under activation:
    /// pid 1 / systemd, or a process that holds that very listener too.
    fn is_activator(&self, pid: i32) -> bool {
        self.is_init(pid)
            || self.file.is_some_and(|f| {
                crate::engine::unix_sockets::holders_of(self.proc_root, &[pid], &self.also_in, f)
                    .is_ok_and(|h| h == [pid])
            })
    }

    /// The daemon the evidence names, recording the evidence, or why there is none.
    fn choose(&self, listeners: &[i32], id: &mut Identity) -> Option<i32> {
        let (word, socket, daemons) = (self.word, self.socket.display(), &self.daemons);
        match (listeners, self.peer) {
            ([one], Some(p)) if p != *one && (daemons.contains(&p) || !self.is_activator(p)) => {
                id.unsure = Some(format!(
                    "the socket's peer is {}, but {word} pid {one} holds {socket}",
                    self.describe(p),
                ));
                self.spare(id, p);
                None
            }
            ([one], peer) => {
                id.evidence.push(format!(
                    "{word} pid {one} holds the listening socket bound to {socket}{}",
                    match peer {
                        Some(p) if p == *one => " (it is also the socket's peer)".to_string(),
                        Some(p) => format!(
                            " (the socket's creator is {}: socket activation)",
                            self.describe(p)
                        ),
                        None => String::new(),
                    }
                ));
                Some(*one)
            }
            ([], None) => {
                id.evidence.push(if daemons.is_empty() {
                    format!("no {word} process is running")
                } else {
                    format!("nothing listens on {socket} (other {word} pids: {daemons:?})")
                });
                None
            }
            ([], Some(p)) if self.is_init(p) && daemons.is_empty() => {
                // Nothing to mistake: no daemon yet, so no daemon namespace.
                id.evidence.push(format!(
                    "no {word} process is running ({} holds {socket}: socket activation, \
                     daemon not started)",
                    self.describe(p),
                ));
                None
            }
            ([], Some(p)) => {
                id.unsure = Some(format!(
                    "the socket's peer is {}, and no {word} holds {socket} ({word} pids: \
                     {daemons:?})",
                    self.describe(p),
                ));
                self.spare(id, p);
                None
            }
            (many, _) => {
                id.unsure = Some(format!(
                    "several {word} processes hold {socket}: pids {many:?}"
                ));
                None
            }
        }
    }
}

/// Whether dockerd's own pidfile agrees that `pid` is dockerd (or names no live process),
/// recording the evidence; `false` (identity unsure) when it names another live pid.
fn pidfile_agrees(proc_root: &Path, pid: i32, socket: &Path, id: &mut Identity) -> bool {
    let Some((file, named)) = pidfile_pid(proc_root, pid) else {
        return true;
    };
    match named {
        Some(n) if n == pid => id
            .evidence
            .push(format!("its pidfile {} names pid {pid}", file.display())),
        Some(n) if proc_root.join(n.to_string()).exists() => {
            id.unsure = Some(format!(
                "dockerd pid {pid} holds {}, but its pidfile {} names live pid {n}",
                socket.display(),
                file.display()
            ));
            return false;
        }
        _ => id.evidence.push(format!(
            "its pidfile {} names no live process",
            file.display()
        )),
    }
    true
}

/// The identity the plugin learns from dockerd's own connection to it.
pub fn from_connecting_daemon(proc_root: &Path, pid: i32) -> Identity {
    // The host is what the connecting daemon sees.
    let host = HostView::new(proc_root, &proc_root.join(pid.to_string()).join("root"));
    let mut runtime = spared_by_name(&runtime_processes(proc_root, &host), &host);
    // The kernel's credentials of the connection name it, whatever its executable.
    let me = RuntimeProcess::read(proc_root, pid);
    if let Some(m) = me
        .as_ref()
        .filter(|m| !runtime.iter().any(|r| r.pid == m.pid))
    {
        runtime.push(m.clone());
    }
    Identity {
        pid: me.as_ref().map(|r| r.pid),
        mnt_ns: me.as_ref().and_then(|r| r.mnt_ns),
        evidence: vec![format!(
            "dockerd pid {pid} connected to the plugin's socket (the kernel's credentials of \
             the connecting process)"
        )],
        unsure: me
            .as_ref()
            .and_then(|r| r.mnt_ns)
            .is_none()
            .then(|| format!("dockerd pid {pid} is gone, or its mount namespace is unreadable")),
        runtime_processes: runtime,
    }
}

impl Identity {
    /// The namespaces that may be a runtime's: every runtime daemon's (and an unexplained
    /// socket peer's), and mntreap's own.
    pub fn possible_runtime_namespaces(&self, proc_root: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .runtime_processes
            .iter()
            .filter_map(|p| p.mnt_ns)
            .chain(crate::engine::namespace::mnt_ns_inode(proc_root, "self"))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_named_systemd_is_no_init_unless_its_pid_namespace_says_so() {
        // A copy of sleep called systemd, as any user may run one: the name alone was
        // enough before (an activator the socket check then trusted).
        let dir = std::env::temp_dir().join(format!("mntreap-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("systemd");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let proc_root = Path::new("/proc");
        let named = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            exe_name(proc_root, pid).as_deref() == Some("systemd")
        });
        let init = is_namespace_init(proc_root, pid);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(named, "the copy never ran under the name systemd");
        assert!(!init, "pid {pid} named systemd was taken for an init");
        assert!(is_namespace_init(proc_root, 1));
    }

    #[test]
    fn flags_in_every_pflag_form() {
        let args: Vec<String> = [
            "dockerd",
            "-g=/g",
            "-p/x.pid",
            "-H",
            "unix:///a.sock",
            "-H",
            "tcp://0:1",
            "--data-root=/d",
            "--pidfile=",
            "--",
            "--data-root=/no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            flag_value(&args, "--graph", Some("-g")).as_deref(),
            Some("/g")
        );
        assert_eq!(
            flag_value(&args, "--data-root", None).as_deref(),
            Some("/d")
        );
        assert_eq!(
            flag_value(&args, "--pidfile", Some("-p")).as_deref(),
            Some("")
        );
        assert_eq!(
            flag_values(&args, "--host", Some("-H")),
            vec!["unix:///a.sock".to_string(), "tcp://0:1".to_string()]
        );
        assert_eq!(flag_value(&args, "--exec-root", None), None);
        // A flag that is only a prefix of another is not that flag.
        assert_eq!(flag_value(&args, "--data", None), None);
        let shim: Vec<String> = ["shim", "-namespace", "moby", "-id", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            flag_value(&shim, "-namespace", None).as_deref(),
            Some("moby")
        );
        assert_eq!(flag_value(&shim, "-id", None).as_deref(), Some("abc"));
    }

    #[test]
    fn runtime_names() {
        assert!(is_dockerd_name("dockerd") && is_dockerd_name("dockerd-current"));
        assert!(is_runtime_daemon_name("containerd"));
        assert!(is_runtime_daemon_name("docker-containerd-current"));
        assert!(!is_runtime_daemon_name("containerd-shim-runc-v2"));
        assert!(!is_runtime_daemon_name("docker-containerd-shim"));
        assert!(!is_dockerd_name("sh"));
    }
}
