//! The node agent against a real dockerd (issue 5's scenarios).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::DockerDaemon;
use common::*;

/// `mntreap agent` inside a sandbox; killed by pid.
struct Agent {
    child: Option<Child>,
    metrics: String,
    /// A command the agent runs under (`prlimit ... --`), then its arguments.
    wrap: Vec<String>,
    args: Vec<String>,
    sandbox: i32,
}

impl Agent {
    fn start(sb: &Sandbox, dk: &DockerDaemon, hook_dir: &str, sweep: u64) -> Agent {
        Self::start_with(sb, dk, hook_dir, sweep, &[], &[])
    }

    /// The agent under `wrap` (a command that execs the rest), with `extra` arguments.
    fn start_with(
        sb: &Sandbox,
        dk: &DockerDaemon,
        hook_dir: &str,
        sweep: u64,
        wrap: &[&str],
        extra: &[&str],
    ) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let args: Vec<String> = [
            "agent",
            "--sweep-interval",
            &sweep.to_string(),
            "--metrics-addr",
            &metrics,
            "--hook-socket",
            &format!("{hook_dir}/hook.sock"),
            // No --docker-root: the agent takes the data root from the dockerd it
            // identifies (its --data-root here is not the default).
            "--docker-host",
            &dk.host(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let mut a = Agent {
            child: None,
            metrics,
            wrap: wrap.iter().map(|s| s.to_string()).collect(),
            args,
            sandbox: sb.host_pid(),
        };
        a.spawn(&format!("{hook_dir}/hook.sock"));
        a
    }

    fn spawn(&mut self, socket: &str) {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("nsenter")
            .args(["-t", &self.sandbox.to_string(), "-m", "--"])
            .args(&self.wrap)
            .arg(BIN)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || std::os::unix::net::UnixStream::connect(socket).is_ok(),
            || "agent did not start".to_string(),
        );
    }

    /// SIGTERM, then waits (at most 30 s) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's pid (nsenter and the wrapper exec it).
    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .expect("an answer from the metrics endpoint")
    }

    /// `None` when the connection is closed unanswered (all connections taken).
    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(parse_http_response(&out)).filter(|(status, _)| *status != 0)
    }

    /// Prometheus text format: `name value` samples.
    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        metric_in(&text, name)
    }
}

/// A sample of a Prometheus text document.
fn metric_in(text: &str, name: &str) -> f64 {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not prometheus text: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        if key == name {
            return v;
        }
    }
    panic!("no metric {name} in:\n{text}");
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `mntreap hook pre-stop` run inside `container` (the static binary is mounted at /mntreap).
fn hook(dk: &DockerDaemon, container: &str, asked: Option<&str>) -> std::process::Output {
    let mut args = vec!["exec", container, "/mntreap", "hook", "pre-stop"];
    if let Some(other) = asked {
        args.extend(["--container", other]);
    }
    dk.docker(&args)
}

/// `mntreap hook pre-stop` from a process in no container that first moves itself into a
/// cgroup it creates, named `forged-<id>` (what cgroup delegation lets a user do). The
/// cgroup is removed afterwards.
fn hook_from_forged_cgroup(id: &str, socket: &str) -> std::process::Output {
    let base = [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/pids",
    ]
    .into_iter()
    .find(|b| std::path::Path::new(&format!("{b}/cgroup.procs")).exists())
    .expect("a cgroup hierarchy to create a cgroup in");
    let cg = format!("{base}/forged-{id}");
    std::fs::create_dir_all(&cg).unwrap();
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {cg}/cgroup.procs && exec {BIN} hook pre-stop --socket {socket}"),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&cg);
    out
}

#[test]
fn prestop_hook_releases_only_the_callers_container() {
    let mut sb = Sandbox::new("ag-hook");
    let dk = DockerDaemon::start(&sb, "aghook", false, &[]);
    let hook_dir = format!("{}/hook", dk.d());
    std::fs::create_dir_all(&hook_dir).unwrap();
    let bin = static_binary();
    let mounts = |pod: &str| {
        vec![
            "-v".to_string(),
            format!("{bin}:/mntreap:ro"),
            "-v".to_string(),
            format!("{hook_dir}:/run/mntreap"),
            "--label".to_string(),
            format!("io.kubernetes.pod.uid={pod}"),
        ]
    };
    let run = |name: &str, pod: &str| {
        let args = mounts(pod);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dk.run_with(name, &args);
    };
    run("web", "pod-a");
    run("sidecar", "pod-a");
    run("other", "pod-b");
    let (web, sidecar, other) = (dk.merged("web"), dk.merged("sidecar"), dk.merged("other"));
    let service = sb.holder(None, None);
    assert!(has_mount_at(service, &web) && has_mount_at(service, &other));
    let agent = Agent::start(&sb, &dk, &hook_dir, 0);

    // A request line over 4 KiB is refused without being read further.
    let mut conn =
        std::os::unix::net::UnixStream::connect(format!("{hook_dir}/hook.sock")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(&[b'x'; 5000]);
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let reply: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(reply["ok"], false, "{answer}");
    assert!(
        reply["error"].as_str().unwrap().contains("4 KiB"),
        "{answer}"
    );
    assert_documented(answer.trim().as_bytes());

    // A process in no container, in a cgroup named after web: refused, nothing changes.
    let web_id = dk.docker_ok(&["inspect", "-f", "{{.Id}}", "web"]);
    let forged = hook_from_forged_cgroup(web_id.trim(), &format!("{hook_dir}/hook.sock"));
    assert_eq!(
        forged.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&forged.stdout)
    );
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("is not a process of container web"),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
    assert!(has_mount_at(service, &web), "web's copy stays");

    let refused = hook(&dk, "web", Some("other"));
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only its own containers"));
    assert!(
        has_mount_at(service, &web) && has_mount_at(service, &other),
        "nothing changed"
    );

    let ok = hook(&dk, "web", None);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_documented(&ok.stdout);
    assert_eq!(reply["container"]["name"], "web");
    assert!(
        !has_mount_at(service, &web),
        "the caller's copy is released"
    );
    assert!(
        has_mount_at(service, &other),
        "another container's copy stays"
    );
    assert!(
        has_mount_at(sb.host_pid(), &web),
        "dockerd's copy of the running web stays"
    );
    // A sibling in the same pod may be named; its copy goes, the other pod's stays.
    assert!(has_mount_at(service, &sidecar));
    let sib = hook(&dk, "web", Some("sidecar"));
    assert_eq!(
        sib.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sib.stderr)
    );
    assert!(!has_mount_at(service, &sidecar));
    assert!(has_mount_at(service, &other));
    // The agent's one index serves its hook: web's release read every table and kept
    // them; the sibling's reused the namespaces web's unmount did not change, and was
    // confirmed by id. Counted in the metrics, which only the node reaches: a pod's
    // reply says nothing of the node's other namespaces.
    let reply: serde_json::Value = serde_json::from_slice(&sib.stdout).unwrap();
    assert!(reply["releases"][0].get("index").is_none(), "{reply}");
    if mntreap::engine::index::TableIndex::watching(Duration::from_secs(60)).events() {
        assert!(agent.metric("mntreap_release_kept_tables_reused_total") > 0.0);
        assert_eq!(agent.metric("mntreap_releases_confirmed_total"), 1.0);
    } else {
        eprintln!("the hook's kept tables are not tested: this kernel has no mount events (6.15+)");
    }
}

#[test]
fn sweeps_release_leaks_and_metrics_count_them() {
    let mut sb = Sandbox::new("ag-sweep");
    let dk = DockerDaemon::start(&sb, "agsweep", false, &[]);
    dk.run("web");
    let merged = dk.merged("web");
    let service = sb.holder(None, None);
    let mut agent = Agent::start(&sb, &dk, &format!("{}/hook", dk.d()), 1);
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || !has_mount_at(service, &merged),
        || "the sweep did not release the leak".to_string(),
    );
    assert!(has_mount_at(sb.host_pid(), &merged), "dockerd's copy stays");
    assert_eq!(
        dk.docker_ok(&["inspect", "web", "--format", "{{.State.Status}}"]),
        "running"
    );
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_string()));
    // Counters match what happened: one copy released, nothing failed.
    wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || agent.metric("mntreap_sweeps_total") >= 2.0,
        || "the agent did not sweep twice".to_string(),
    );
    assert_eq!(agent.metric("mntreap_copies_released_total"), 1.0);
    assert_eq!(agent.metric("mntreap_release_failures_total"), 0.0);
    assert_eq!(agent.metric("mntreap_leaked_copies"), 0.0);
    assert!(agent.metric("mntreap_sweep_duration_seconds_count") >= 2.0);
    // SIGTERM: a graceful exit, with the hook socket removed.
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&format!("{}/hook/hook.sock", dk.d())).exists());
}

#[test]
fn a_leak_found_through_kept_tables_is_released_from_tables_read_again() {
    let mut sb = Sandbox::new("ag-index");
    let dk = DockerDaemon::start(&sb, "agindex", false, &[]);
    dk.run("web");
    let merged = dk.merged("web");
    // A service namespace whose copy of web's root is in use (a process chrooted in it):
    // kept, sweep after sweep, with the namespace's mounts unchanged.
    let service = sb.holder(
        Some(&format!(
            "chroot {merged} /bin/sleep 3600 & exec sleep 3600"
        )),
        None,
    );
    let chrooted = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                    st.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        == Some(service.to_string().as_str())
                })
            })
    };
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || chrooted().is_some(),
        || "the chrooted process did not start".to_string(),
    );
    let agent = Agent::start_with(
        &sb,
        &dk,
        &format!("{}/hook", dk.d()),
        1,
        &[],
        &["--no-events"],
    );
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            agent.metric("mntreap_index_namespaces_reused") > 0.0
                && agent.metric("mntreap_in_use_copies") >= 1.0
        },
        || "no sweep reused a kept table while the copy was in use".to_string(),
    );
    assert!(has_mount_at(service, &merged), "a copy in use was released");
    // The use ends; the namespace's mounts stay as they were, so its table is the kept
    // one. The sweep finds the leak there and releases it from tables read again (a
    // release from the kept ones is refused, and would count as a failure).
    let pid = chrooted().unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || !has_mount_at(service, &merged),
        || "the sweep did not release the copy once it was no longer used".to_string(),
    );
    assert_eq!(agent.metric("mntreap_copies_released_total"), 1.0);
    assert_eq!(agent.metric("mntreap_release_failures_total"), 0.0);
    // No sweep failed on the way: the one that found the leak released it.
    assert_eq!(agent.metric("mntreap_sweep_failures_total"), 0.0);
    assert!(has_mount_at(sb.host_pid(), &merged), "dockerd's copy stays");
}

#[test]
fn killed_mid_sweep_then_restarted_finishes_the_job() {
    let mut sb = Sandbox::new("ag-kill");
    let dk = DockerDaemon::start(&sb, "agkill", false, &[]);
    let names = ["one", "two", "three"];
    for n in names {
        dk.run(n);
    }
    let merged: Vec<String> = names.iter().map(|n| dk.merged(n)).collect();
    let decoy = format!("{}/decoy", sb.d());
    sb.sh(&format!("mkdir -p {decoy} && mount -t tmpfs decoy {decoy}"));
    let holders: Vec<i32> = (0..20).map(|_| sb.holder(None, None)).collect();
    let hook_dir = format!("{}/hook", dk.d());
    let mut agent = Agent::start(&sb, &dk, &hook_dir, 1);
    std::thread::sleep(Duration::from_millis(150));
    agent.kill9();
    // Whatever was done, nothing that is not a target was touched.
    for &h in &holders {
        assert!(has_mount_at(h, &decoy), "decoy gone in {h}");
    }
    for m in &merged {
        assert!(has_mount_at(sb.host_pid(), m), "dockerd's copy {m} gone");
    }
    agent.spawn(&format!("{hook_dir}/hook.sock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = holders
            .iter()
            .filter(|&&h| merged.iter().any(|m| has_mount_at(h, m)))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} holders still hold a copy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for &h in &holders {
        assert!(has_mount_at(h, &decoy));
    }
    for n in names {
        assert_eq!(
            dk.docker_ok(&["inspect", n, "--format", "{{.State.Status}}"]),
            "running"
        );
    }
}

/// Open descriptors of `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The soft and hard "Max open files" of `pid`.
fn nofile(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn an_endpoint_flood_starves_neither_hook_nor_sweeps_nor_probe() {
    // More idle connections than the agent may have descriptors: uncapped, they take
    // every one (issue 17: the hook, /healthz and the sweeps then all failed).
    const FLOOD: usize = 1200;
    const HARD: u64 = 1024;
    // This process holds the clients' ends.
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < FLOOD as u64 + 512 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.max(FLOOD as u64 + 512),
            hard.max(FLOOD as u64 + 512),
        )
        .unwrap();
    }
    let mut sb = Sandbox::new("ag-flood");
    let dk = DockerDaemon::start(&sb, "agflood", false, &[]);
    let hook_dir = format!("{}/hook", dk.d());
    std::fs::create_dir_all(&hook_dir).unwrap();
    let health = format!("{}/health/health.sock", dk.d());
    let bin = static_binary();
    let mounts = [
        "-v".to_string(),
        format!("{bin}:/mntreap:ro"),
        "-v".to_string(),
        format!("{hook_dir}:/run/mntreap"),
    ];
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    dk.run_with("web", &mounts);
    // Soft 512, hard 1024: the agent raises the first to the second.
    let agent = Agent::start_with(
        &sb,
        &dk,
        &hook_dir,
        1,
        &["prlimit", &format!("--nofile=512:{HARD}"), "--"],
        &["--health-socket", &health],
    );
    let pid = agent.pid();
    assert_eq!(nofile(pid), (HARD, HARD), "the soft limit is raised");
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || agent.metric("mntreap_sweeps_total") >= 1.0,
        || "the agent did not sweep".to_string(),
    );
    let sweeps_before = agent.metric("mntreap_sweeps_total");
    let idle_fds = open_fds(pid);

    // The agent's descriptors, sampled all along the flood.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(open_fds(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let flood_started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    let addr: std::net::SocketAddr = agent.metrics.parse().unwrap();
    assert!(addr.ip().is_loopback());
    let mut refused = None;
    for _ in 0..FLOOD {
        // An agent that no longer accepts lets the backlog fill: the flood stops there
        // (and fails the test below, once the rest is checked).
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(c) => flood.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let flooded_in = flood_started.elapsed();

    // A leak made during the flood, for a sweep to release.
    let leak = sb.holder(None, None);
    let merged = dk.merged("web");
    assert!(has_mount_at(leak, &merged));

    // The probe answers at once.
    let started = Instant::now();
    let probe = Command::new(BIN)
        .args(["probe", "--socket", &health, "--timeout", "5"])
        .output()
        .unwrap();
    let probe_took = started.elapsed();
    assert_eq!(probe.status.code(), Some(0), "{}", stderr(&probe));
    assert_eq!(String::from_utf8_lossy(&probe.stdout), "ok\n");
    assert!(
        probe_took < Duration::from_secs(2),
        "probe took {probe_took:?}"
    );

    // A pod's preStop hook is answered within 2 s (beyond what `docker exec` itself costs).
    let started = Instant::now();
    dk.docker_ok(&["exec", "web", "true"]);
    let exec_took = started.elapsed();
    let started = Instant::now();
    let out = dk.docker(&[
        "exec", "web", "busybox", "timeout", "10", "/mntreap", "hook", "pre-stop",
    ]);
    let hook_took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        hook_took < exec_took + Duration::from_secs(2),
        "hook took {hook_took:?}, a bare docker exec {exec_took:?}"
    );

    // Sweeps go on: the leak is released.
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || !has_mount_at(leak, &merged),
        || "no sweep released the leak during the flood".to_string(),
    );
    let released_in = flood_started.elapsed();
    assert!(has_mount_at(sb.host_pid(), &merged), "dockerd's copy stays");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    // The caps keep most of the limit free: metrics holds at most 64 connections.
    assert!(
        peak < HARD as usize / 2,
        "the agent held {peak} descriptors of {HARD} (idle: {idle_fds})"
    );

    // The flood's held connections lose their slots at the header deadline; then
    // metrics answers again and counts the sweeps made meanwhile.
    let after = std::cell::Cell::new(None);
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            after.set(
                agent
                    .try_get("/metrics")
                    .filter(|(status, _)| *status == 200)
                    .map(|(_, text)| metric_in(&text, "mntreap_sweeps_total")),
            );
            after.get().is_some_and(|n| n > sweeps_before)
        },
        || {
            format!(
                "metrics did not come back with more sweeps: {:?}",
                after.get()
            )
        },
    );
    let after = after.get();
    assert_eq!(agent.metric("mntreap_release_failures_total"), 0.0);
    assert_eq!(
        flood.len(),
        FLOOD,
        "the agent stopped accepting: {refused:?}"
    );
    eprintln!(
        "flood: {} connections in {flooded_in:?}; agent descriptors idle {idle_fds}, \
         peak {peak} of {HARD}; probe {probe_took:?}; hook {hook_took:?} (bare exec \
         {exec_took:?}); leak released {released_in:?} after the flood began; sweeps \
         {sweeps_before} -> {after:?}",
        flood.len()
    );
    drop(flood);
}
