//! The authorization plugin against a real dockerd (issue 4's scenarios). The plugin runs
//! as a legacy plugin (a socket in /run/docker/plugins, unique per test), which exercises
//! the same protocol and daemon path as the managed plugin.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::DockerDaemon;
use common::*;
use serde_json::Value;

/// `mntreap plugin` inside a sandbox, its JSON log in a file.
struct Plugin {
    name: String,
    child: Child,
    log: String,
}

impl Plugin {
    fn start(
        sb: &Sandbox,
        tag: &str,
        docker_root: &str,
        host: &str,
        env: &[(&str, &str)],
    ) -> Plugin {
        let name = format!("mntreap-test-{tag}-{}", std::process::id());
        let socket = format!("/run/docker/plugins/{name}.sock");
        let log = format!("{}/{name}.log", sb.d());
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &sb.host_pid().to_string(), "-m", "--", BIN, "plugin"])
            .args([
                "--socket",
                &socket,
                "--docker-root",
                docker_root,
                "--docker-host",
                host,
            ])
            .env("MNTREAP_SWEEP_INTERVAL", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || UnixStream::connect(&socket).is_ok(),
            || "plugin did not listen".to_string(),
        );
        Plugin { name, child, log }
    }

    fn socket(&self) -> String {
        format!("/run/docker/plugins/{}.sock", self.name)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "mntreap::audit")
            .collect()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
    }
}

/// One HTTP/1.1 request over a unix socket; returns the status and the body.
fn http(socket: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    parse_http_response(&out)
}

fn daemon_with_plugin(sb: &Sandbox, tag: &str, env: &[(&str, &str)]) -> (DockerDaemon, Plugin) {
    // The plugin must answer before dockerd's first API call goes through it.
    let dir = format!("/tmp/mntreap-docker-{tag}-{}", std::process::id());
    let host = format!("unix://{dir}/docker.sock");
    let plugin = Plugin::start(sb, tag, &format!("{dir}/root"), &host, env);
    let dk = DockerDaemon::start_with(
        sb,
        tag,
        false,
        &[],
        &[format!("--authorization-plugin={}", plugin.name)],
    );
    (dk, plugin)
}

#[test]
fn rm_releases_foreign_copies_before_the_daemon_acts() {
    let mut sb = Sandbox::new("pl-rm");
    let (dk, plugin) = daemon_with_plugin(&sb, "plrm", &[]);
    dk.run("web");
    let merged = dk.merged("web");
    let service = sb.holder(None, None);
    assert!(has_mount_at(service, &merged));
    dk.docker_ok(&["rm", "-f", "web"]);
    assert!(!has_mount_at(service, &merged));
    let audit = plugin.audit();
    let line = audit
        .iter()
        .find(|a| a["mnt_ns"].as_u64() == Some(ns_inode(service)))
        .unwrap_or_else(|| panic!("no audit line for the service: {audit:#?}"));
    assert!(
        line["result"].as_str().unwrap().contains("unmounted"),
        "{line}"
    );
    assert_eq!(line["path"], merged.as_str());
    // Released in the AuthZReq of the DELETE, i.e. before the daemon's handler ran.
    let call = line["spans"][0]["call"].as_str().unwrap_or_default();
    assert!(
        call.starts_with("DELETE ") && call.contains("/containers/web"),
        "{line}"
    );
    assert_eq!(line["spans"][1]["container"], "web");
    assert!(dk.docker_ok(&["ps", "-aq"]).is_empty());
}

#[test]
fn run_rm_is_caught_by_the_backstop() {
    let mut sb = Sandbox::new("pl-rm-rm");
    let (dk, plugin) = daemon_with_plugin(&sb, "plrun", &[]);
    let id = dk.docker_ok(&["run", "-d", "--rm", "--network", "none", "bb", "sleep", "3"]);
    let merged = dk.merged(&id);
    // An agent's view of the layer: the kernel does not detach it when dockerd removes
    // the merged directory, so only mntreap can.
    let view = format!("{}/agent-view", sb.d());
    let service = sb.holder(
        Some(&format!(
            "mkdir -p {view} && mount --bind {merged} {view} && exec sleep 3600"
        )),
        None,
    );
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || !has_mount_at(service, &view),
        || format!("the backstop did not release {view}: {:#?}", plugin.audit()),
    );
    // The audit line follows the unmount: give it a moment to be written.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        if let Some(l) = plugin
            .audit()
            .into_iter()
            .find(|a| a["path"] == view.as_str())
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no audit line for {view}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["spans"][0]["call"], "event die", "{line}");
}

#[test]
fn slow_or_failing_cleanup_never_stalls_the_api() {
    for (fault, tag) in [("slow:5000", "plslow"), ("fail", "plfail")] {
        let sb = Sandbox::new(tag);
        let (dk, plugin) = daemon_with_plugin(
            &sb,
            tag,
            &[("MNTREAP_FAULT", fault), ("MNTREAP_DEADLINE_MS", "500")],
        );
        dk.run("victim");
        let started = Instant::now();
        dk.docker_ok(&["ps"]);
        dk.docker_ok(&["rm", "-f", "victim"]);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{fault}: ps + rm took {took:?}"
        );
        assert!(dk.docker_ok(&["ps", "-aq"]).is_empty());
        drop(plugin);
    }
}

/// The fifth reproduction: bad input once got `{"Allow":false}`, failing the user's call.
/// Every reply now allows, whatever the input, and the plugin keeps serving.
#[test]
fn bad_input_is_always_allowed_and_the_plugin_keeps_serving() {
    let sb = Sandbox::new("pl-bad");
    let plugin = Plugin::start(
        &sb,
        "plbad",
        "/nonexistent",
        "unix:///nonexistent.sock",
        &[],
    );
    let s = plugin.socket();
    let (status, body) = http(&s, "POST", "/Plugin.Activate", "");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"Implements":["authz"]}"#)
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bad_bodies = [
        "{not json",
        "",
        "[]",
        r#"{"RequestMethod": 7}"#,
        r#"{"RequestMethod":"DELETE","RequestUri":["/containers/x"]}"#,
        r#"{"RequestMethod":"DELETE","RequestUri":"/containers/\ud800"}"#,
        "{}",
        deep.as_str(),
    ];
    for bad in bad_bodies {
        let (status, body) = http(&s, "POST", "/AuthZPlugin.AuthZReq", bad);
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"Allow":true}"#),
            "{bad:.80}"
        );
    }
    let (status, body) = http(&s, "POST", "/AuthZPlugin.Unknown", "{}");
    assert_eq!((status, body.as_str()), (200, r#"{"Allow":true}"#));
    // A body over the 4 MiB limit is not read: allowed all the same. The writer may be
    // cut off once the plugin has answered; only the answer counts.
    let mut conn = UnixStream::connect(&s).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let big = 5usize << 20;
    let feeder = std::thread::spawn(move || {
        let head = format!(
            "POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: docker\r\nContent-Length: {big}\r\n\r\n"
        );
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b'x'; big]);
    });
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let _ = feeder.join();
    assert_eq!(
        parse_http_response(&answer),
        (200, r#"{"Allow":true}"#.to_string())
    );
    let log = std::fs::read_to_string(&plugin.log).unwrap_or_default();
    assert!(log.contains("bad plugin request; allowed"), "{log}");
    assert!(
        log.contains("length limit exceeded"),
        "the 5 MiB body was read whole: {log}"
    );
    // Only root (dockerd) may connect.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "plugin socket mode {mode:o}");
    let ok = r#"{"User":"","RequestMethod":"GET","RequestUri":"/v1.41/containers/json","RequestBody":null}"#;
    let (_, body) = http(&s, "POST", "/AuthZPlugin.AuthZReq", ok);
    assert_eq!(body, r#"{"Allow":true}"#);
    let (_, body) = http(&s, "POST", "/AuthZPlugin.AuthZRes", ok);
    assert_eq!(body, r#"{"Allow":true}"#);
    // A cleanup whose container cannot be resolved is still allowed.
    let rm = r#"{"RequestMethod":"DELETE","RequestUri":"/v1.41/containers/ghost?force=1"}"#;
    let (_, body) = http(&s, "POST", "/AuthZPlugin.AuthZReq", rm);
    assert_eq!(body, r#"{"Allow":true}"#);
}

#[test]
fn a_thousand_concurrent_api_calls_through_the_plugin() {
    let sb = Sandbox::new("pl-load");
    let (dk, plugin) = daemon_with_plugin(&sb, "plload", &[]);
    dk.run("one");
    let sock = dk.sock();
    let failures: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|t| {
                let sock = sock.clone();
                scope.spawn(move || {
                    (0..50)
                        .filter(|i| {
                            let path = if (t + i) % 2 == 0 {
                                "/v1.41/containers/json"
                            } else {
                                "/v1.41/containers/one/json"
                            };
                            let (status, body) = http(&sock, "GET", path, "");
                            if status != 200 {
                                eprintln!("call {t}/{i} {path}: {status} {body}");
                            }
                            status != 200
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    if failures > 0 {
        let log = std::fs::read_to_string(&plugin.log).unwrap_or_default();
        for l in log.lines().filter(|l| !l.contains("\"INFO\"")) {
            eprintln!("plugin: {l}");
        }
        for l in dk
            .log()
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        {
            eprintln!("dockerd: {l}");
        }
    }
    assert_eq!(failures, 0);
}

#[test]
fn managed_plugin_built_created_and_enabled_with_no_settings() {
    let mut sb = Sandbox::new("pl-managed");
    let dk = DockerDaemon::start(&sb, "plmanaged", false, &[]);
    let name = format!("mntreap-test-managed-{}", std::process::id());
    let build = Command::new("bash")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker-plugin/build.sh"),
            &name,
        ])
        .env("DOCKER_HOST", dk.host())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    // No settings: this machine's pid 1 refuses ptrace-mode access (so /proc/1/root is
    // unreadable) and the data root is not the default; the plugin learns both, and the
    // socket, from the dockerd that connects to it.
    dk.docker_ok(&["plugin", "enable", &name]);
    dk.reconfigure(&format!(r#"{{"authorization-plugins": ["{name}"]}}"#));
    dk.run("web");
    let merged = dk.merged("web");
    let service = sb.holder(None, None);
    dk.docker_ok(&["rm", "-f", "web"]);
    assert!(!has_mount_at(service, &merged));
    // The daemon copies the plugin's output into its own log.
    let log = dk.log();
    let ns = ns_inode(service).to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("mntreap::audit") && l.contains(&ns) && l.contains("unmounted")),
        "no audit line for namespace {ns} in dockerd's log:\n{}",
        log.lines()
            .filter(|l| l.contains("plugin"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    dk.reconfigure("{}");
    let _ = dk.docker(&["plugin", "disable", "-f", &name]);
    let _ = dk.docker(&["plugin", "rm", "-f", &name]);
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0] + f[1]) as f64 / 100.0
}

/// The sixth reproduction: under a managed plugin's `nofile` of 1024, 1,100 connections
/// that send 40 bytes and wait once made every new API call time out, while `accept`
/// failed in a hot loop and flooded the log. Ordinary calls must keep answering, the CPU
/// stay idle and the log stay small.
#[test]
fn held_connections_neither_stall_the_api_nor_flood_the_log() {
    let sb = Sandbox::new("pl-held");
    let (dk, plugin) = daemon_with_plugin(&sb, "plheld", &[]);
    let pid = plugin.child.id();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
        .status()
        .unwrap();
    assert!(limited.success());
    dk.docker_ok(&["ps"]);
    let log_before = std::fs::metadata(&plugin.log).unwrap().len();
    let cpu_before = cpu_seconds(pid);

    // The attacker: its own process (its own descriptor limit), killed by pid at the end.
    let script = format!(
        "import resource, socket, time\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n\
         held = []\n\
         for i in range(1100):\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       s.connect({:?})\n\
         \x20       s.send(b'POST /AuthZPlugin.AuthZReq HTTP/1.1\\r\\nHost: x\\r\\nContent')\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   held.append(s)\n\
         print('held', flush=True)\n\
         time.sleep(3600)\n",
        plugin.socket()
    );
    struct Attacker(std::process::Child);
    impl Drop for Attacker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut attacker = Attacker(
        Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(attacker.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");

    // Ordinary calls, new connections of the docker CLI to dockerd, keep answering.
    let started = Instant::now();
    for i in 0..20 {
        let call = Instant::now();
        dk.docker_ok(&["ps"]);
        assert!(
            call.elapsed() < Duration::from_secs(5),
            "call {i} took {:?} under the attack",
            call.elapsed()
        );
    }
    dk.run("during");
    dk.docker_ok(&["rm", "-f", "during"]);
    // Let the held connections time out and the accept loop see whatever it will.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    dk.docker_ok(&["ps"]);
    let cpu = cpu_seconds(pid) - cpu_before;
    let logged = std::fs::metadata(&plugin.log).unwrap().len() - log_before;
    assert!(
        cpu < 4.0,
        "the plugin used {cpu} CPU seconds under the attack"
    );
    assert!(
        logged < 256 * 1024,
        "the plugin logged {logged} bytes under the attack"
    );
    drop(attacker);
}
