//! A private dockerd per test (NOTES.md §4): own data root, exec root and socket, started
//! inside a sandbox's namespace, with a busybox image imported from busybox-static. Torn
//! down by pid: dockerd, then the containerd, shims and container processes it started.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Sandbox;

pub struct DockerDaemon {
    pub dir: PathBuf,
    sandbox_pid: i32,
    live_restore: bool,
    /// `unshare` arguments to start dockerd in a namespace of its own (MountFlags=slave).
    unshare: Vec<&'static str>,
    /// More dockerd flags (an authorization plugin, ...).
    extra: Vec<String>,
    /// Socket activation as systemd does it: another process creates and listens on the
    /// socket, and dockerd gets it as fd 3 (`-H fd://`).
    activated: bool,
    child: Option<Child>,
}

/// A socket activator in the manner of systemd's `docker.socket`: it binds and listens on
/// the socket (so `SO_PEERCRED` names *it*), keeps it open, and execs the command in a
/// child with `LISTEN_FDS=1` and `LISTEN_PID` set; SIGTERM is forwarded.
const ACTIVATOR: &str = r#"
import os, signal, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(128)
pid = os.fork()
if pid == 0:
    os.dup2(s.fileno(), 3)
    os.set_inheritable(3, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
while True:
    try:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    except InterruptedError:
        pass
"#;

impl DockerDaemon {
    pub fn start(
        sb: &Sandbox,
        name: &str,
        live_restore: bool,
        unshare: &[&'static str],
    ) -> DockerDaemon {
        Self::start_with(sb, name, live_restore, unshare, &[])
    }

    pub fn start_with(
        sb: &Sandbox,
        name: &str,
        live_restore: bool,
        unshare: &[&'static str],
        extra: &[String],
    ) -> DockerDaemon {
        Self::create(sb, name, live_restore, unshare, extra, false)
    }

    /// dockerd under socket activation (see [`ACTIVATOR`]).
    pub fn start_activated(
        sb: &Sandbox,
        name: &str,
        live_restore: bool,
        unshare: &[&'static str],
    ) -> DockerDaemon {
        Self::create(sb, name, live_restore, unshare, &[], true)
    }

    fn create(
        sb: &Sandbox,
        name: &str,
        live_restore: bool,
        unshare: &[&'static str],
        extra: &[String],
        activated: bool,
    ) -> DockerDaemon {
        let dir = PathBuf::from(format!("/tmp/mntreap-docker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = DockerDaemon {
            dir,
            sandbox_pid: sb.host_pid(),
            live_restore,
            unshare: unshare.to_vec(),
            extra: extra.to_vec(),
            activated,
            child: None,
        };
        d.spawn();
        d.import_busybox();
        d
    }

    /// The activator's pid (the socket's creator) when activated, else dockerd's.
    pub fn socket_creator(&self) -> i32 {
        self.child.as_ref().expect("dockerd running").id() as i32
    }

    pub fn d(&self) -> String {
        self.dir.to_str().unwrap().to_string()
    }

    pub fn sock(&self) -> String {
        format!("{}/docker.sock", self.d())
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock())
    }

    pub fn root(&self) -> String {
        format!("{}/root", self.d())
    }

    /// dockerd's pid (under activation, the activator's child).
    pub fn pid(&self) -> i32 {
        let top = self.socket_creator();
        if !self.activated {
            return top;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = std::fs::read_to_string(format!("/proc/{top}/task/{top}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|e| e.ends_with("dockerd"))
                });
            if let Some(p) = child {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no dockerd under activator {top}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts dockerd (again), and waits until it answers.
    pub fn spawn(&mut self) {
        let d = self.d();
        if !std::path::Path::new(&format!("{d}/daemon.json")).exists() {
            std::fs::write(format!("{d}/daemon.json"), "{}").unwrap();
        }
        // After a kill -9, a stale containerd pid file (its process gone or a zombie) makes
        // the new dockerd wait forever; a live containerd is reused.
        let pidfile = format!("{d}/exec/containerd/containerd.pid");
        if containerd_state(&pidfile).is_none_or(|s| s == "Z") {
            let _ = std::fs::remove_file(&pidfile);
        }
        let _ = std::fs::remove_file(self.sock());
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.sandbox_pid.to_string(), "-m", "--"]);
        if self.activated {
            let script = format!("{d}/activate.py");
            std::fs::write(&script, ACTIVATOR).unwrap();
            cmd.args(["python3", &script, &self.sock()]);
        }
        if !self.unshare.is_empty() {
            cmd.arg("unshare").args(&self.unshare).arg("--");
        }
        cmd.args([
            "dockerd",
            "--data-root",
            &format!("{d}/root"),
            "--exec-root",
            &format!("{d}/exec"),
            "-H",
            &if self.activated {
                "fd://".to_string()
            } else {
                self.host()
            },
            "--pidfile",
            &format!("{d}/pid"),
            "--iptables=false",
            "--bridge=none",
            "--config-file",
            &format!("{d}/daemon.json"),
        ]);
        if self.live_restore {
            cmd.arg("--live-restore");
        }
        cmd.args(&self.extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{d}/dockerd.log"))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("starting dockerd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                std::fs::read_to_string(format!("{d}/dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn import_busybox(&self) {
        let rootfs = format!("{}/rootfs", self.d());
        let busybox = super::which("busybox");
        let script = format!(
            "set -e; mkdir -p {rootfs}/bin; cp {busybox} {rootfs}/bin/busybox; \
             for l in sh sleep cat ls touch echo true; do ln -sf busybox {rootfs}/bin/$l; done; \
             tar -C {rootfs} -c . | docker -H {} import - bb >/dev/null",
            self.host()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker run -d --network none bb sleep 3600`; returns the full id.
    pub fn run(&self, name: &str) -> String {
        self.run_with(name, &[])
    }

    pub fn run_with(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["bb", "sleep", "3600"]);
        self.docker_ok(&args)
    }

    pub fn merged(&self, container: &str) -> String {
        self.docker_ok(&[
            "inspect",
            container,
            "--format",
            "{{.GraphDriver.Data.MergedDir}}",
        ])
    }

    pub fn upper(&self, container: &str) -> String {
        self.docker_ok(&[
            "inspect",
            container,
            "--format",
            "{{.GraphDriver.Data.UpperDir}}",
        ])
    }

    /// Rewrites daemon.json and makes dockerd reload it (SIGHUP).
    pub fn reconfigure(&self, json: &str) {
        std::fs::write(format!("{}/daemon.json", self.d()), json).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
        // The reload is asynchronous; dockerd logs it.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/dockerd.log", self.d())).unwrap_or_default()
    }

    /// The crash of the first write-up: SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The containerd dockerd started dies shortly after it: let it finish dying, so
        // that `spawn` does not take it for a live one and make the new dockerd wait on it.
        let pidfile = format!("{}/exec/containerd/containerd.pid", self.d());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && containerd_state(&pidfile).is_some_and(|s| s != "Z") {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of the processes this daemon started (containerd, shims) and their descendants.
    fn descendants(&self) -> Vec<i32> {
        descendants_of_dir(&self.d())
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Graceful: dockerd stops containers (no live-restore) and unmounts.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.descendants() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        // Immutable files from the stuck-removal test; mounts dockerd made in the sandbox.
        super::remove_daemon_dir(self.sandbox_pid, &self.dir);
    }
}

/// The process state letter (R, S, Z, ...) of the pid in a pid file; `None` if gone.
fn containerd_state(pidfile: &str) -> Option<String> {
    let pid = std::fs::read_to_string(pidfile).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()
        .map(String::from)
}

/// Pids of the processes whose command line names `d` (a test's unique directory: its
/// daemons and shims), and their descendants (the containers).
pub fn descendants_of_dir(d: &str) -> Vec<i32> {
    let procs: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, ppid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect();
    let mut ours: Vec<i32> = procs
        .iter()
        .filter(|(_, _, cmd)| cmd.contains(d))
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut i = 0;
    while i < ours.len() {
        let parent = ours[i];
        for (pid, ppid, _) in &procs {
            if *ppid == parent && !ours.contains(pid) {
                ours.push(*pid);
            }
        }
        i += 1;
    }
    ours
}
