//! The agent rows: the real `mntreap agent` process sweeping the benchmark's node every
//! second, against a private dockerd whose data root is on the benchmark's tmpfs (the
//! filesystem every bind of the binds shape comes from), with a few running containers.
//! The node is unchanged between sweeps (the agent finds nothing to release), so the CPU
//! time a sweep costs is the cost of an agent on a quiet node of this size. The agent's
//! CPU and memory come from the kernel (`/proc/PID/stat`, `/proc/PID/status`), its sweep
//! count and findings from its metrics.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTAINERS: usize = 3;

pub struct Rows {
    /// The first sweep (every table read), with the agent's start.
    pub first_cpu: Duration,
    /// CPU per sweep over `sweeps` sweeps of the unchanged node, idle time included.
    pub per_sweep_cpu: Duration,
    pub sweeps: u64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub index_bytes: f64,
    pub unlisted: f64,
    pub reused: f64,
    pub read: f64,
}

/// Processes started here, stopped by pid when the rows end (or panic): the agent, the
/// containers (by `docker rm -f`), dockerd, then what dockerd started that is left.
struct Started {
    dir: String,
    agent: Option<Child>,
    dockerd: Option<Child>,
}

impl Started {
    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &format!("unix://{}/docker.sock", self.dir)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker (the CLI)")
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            stop(agent);
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            stop(&mut dockerd);
        }
        // containerd and shims dockerd started name our directory in their command lines;
        // they are ours, by pid.
        for pid in pids_naming(&self.dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn pids_naming(dir: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(dir.len()).any(|w| w == dir.as_bytes()))
        })
        .collect()
}

/// utime + stime of `pid`, from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent's stat");
    // Fields after the command (which may hold spaces) start at field 3.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn metrics(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no metric {name} in the agent's metrics"))
}

/// Waits until the agent has completed `n` sweeps; returns its metrics then.
fn sweeps_done(addr: &str, n: f64, deadline: Duration, log: &str) -> String {
    let until = Instant::now() + deadline;
    loop {
        if let Some(text) = metrics(addr).filter(|t| metric(t, "mntreap_sweeps_total") >= n) {
            return text;
        }
        assert!(
            Instant::now() < until,
            "the agent did not complete {n} sweeps: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        // Each ask costs the agent a little CPU, counted in its sweeps': ask seldom.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the agent on the node for `sweeps` warm sweeps. `Err`: why the rows cannot be
/// measured here (no dockerd).
pub fn measure(dir: &str, sweeps: u64, bin: &str) -> Result<Rows, String> {
    for tool in ["dockerd", "docker", "busybox"] {
        if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|p| p.join(tool).exists())
        {
            return Err(format!(
                "no {tool} in PATH (apt-get install docker.io busybox-static)"
            ));
        }
    }
    let d = format!("{dir}/docker");
    std::fs::create_dir_all(format!("{d}/rootfs/bin")).unwrap();
    std::fs::write(format!("{d}/daemon.json"), "{}").unwrap();
    let mut started = Started {
        dir: d.clone(),
        agent: None,
        dockerd: None,
    };
    let log = std::fs::File::create(format!("{d}/dockerd.log")).unwrap();
    started.dockerd = Some(
        Command::new("dockerd")
            .args(["--data-root", &format!("{d}/root")])
            .args(["--exec-root", &format!("{d}/exec")])
            .args(["-H", &format!("unix://{d}/docker.sock")])
            .args(["--pidfile", &format!("{d}/pid")])
            .args(["--iptables=false", "--bridge=none"])
            .args(["--config-file", &format!("{d}/daemon.json")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting dockerd: {e}"))?,
    );
    let until = Instant::now() + Duration::from_secs(60);
    while !started.docker(&["version"]).status.success() {
        assert!(
            Instant::now() < until,
            "dockerd did not come up: {}",
            std::fs::read_to_string(format!("{d}/dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|p| p.join("busybox"))
        .find(|p| p.exists())
        .unwrap();
    std::fs::copy(&busybox, format!("{d}/rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", format!("{d}/rootfs/bin/sleep")).unwrap();
    let import = Command::new("sh")
        .args([
            "-c",
            &format!("tar -C {d}/rootfs -c . | docker -H unix://{d}/docker.sock import - bb"),
        ])
        .output()
        .unwrap();
    assert!(import.status.success(), "docker import: {import:?}");
    for i in 0..CONTAINERS {
        started.docker_ok(&[
            "run",
            "-d",
            "--name",
            &format!("bench-{i}"),
            "--network",
            "none",
            "bb",
            "sleep",
            "3600",
        ]);
    }

    // A free port for the agent's metrics.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent_log = format!("{d}/agent.log");
    let agent = Command::new(bin)
        .args(["agent", "--runtime", "docker", "--sweep-interval", "1"])
        .args(["--docker-host", &format!("unix://{d}/docker.sock")])
        .args(["--docker-root", &format!("{d}/root")])
        .args(["--metrics-addr", &addr])
        .args(["--hook-socket", &format!("{d}/hook.sock")])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .expect("starting the agent");
    let pid = agent.id();
    started.agent = Some(agent);

    let first = sweeps_done(&addr, 1.0, Duration::from_secs(300), &agent_log);
    let first_cpu = cpu_of(pid);
    // The second sweep may still read what the first saw change (its own start).
    let begin = sweeps_done(&addr, 2.0, Duration::from_secs(300), &agent_log);
    let (n0, c0) = (metric(&begin, "mntreap_sweeps_total"), cpu_of(pid));
    let end = sweeps_done(
        &addr,
        n0 + sweeps as f64,
        Duration::from_secs(600),
        &agent_log,
    );
    let (n1, c1) = (metric(&end, "mntreap_sweeps_total"), cpu_of(pid));
    for (what, text) in [("first", &first), ("last", &end)] {
        assert_eq!(
            metric(text, "mntreap_sweep_failures_total"),
            0.0,
            "the {what} sweep failed: {}",
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        assert_eq!(
            metric(text, "mntreap_leaked_copies"),
            0.0,
            "the node is not quiet: the {what} sweep found copies"
        );
    }
    let running = started.docker_ok(&["ps", "-q"]).lines().count();
    assert_eq!(running, CONTAINERS, "the containers stopped meanwhile");
    Ok(Rows {
        first_cpu,
        per_sweep_cpu: (c1 - c0) / (n1 - n0) as u32,
        sweeps: (n1 - n0) as u64,
        rss_bytes: status_kb(pid, "VmRSS:") * 1024,
        peak_rss_bytes: status_kb(pid, "VmHWM:") * 1024,
        index_bytes: metric(&end, "mntreap_index_bytes"),
        unlisted: metric(&end, "mntreap_index_namespaces_unlisted"),
        reused: metric(&end, "mntreap_index_namespaces_reused"),
        read: metric(&end, "mntreap_index_namespaces_read"),
    })
}
