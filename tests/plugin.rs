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
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "plugin did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while has_mount_at(service, &view) {
        assert!(
            Instant::now() < deadline,
            "the backstop did not release {view}: {:#?}",
            plugin.audit()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

#[test]
fn malformed_requests_get_an_error_and_the_plugin_keeps_serving() {
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
    for bad in ["{not json", r#"{"RequestMethod": 7}"#, "{}"] {
        let (status, body) = http(&s, "POST", "/AuthZPlugin.AuthZReq", bad);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200);
        assert!(
            v["Err"].as_str().is_some_and(|e| e.contains("malformed")),
            "{bad}: {body}"
        );
    }
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
fn managed_plugin_built_created_and_enabled() {
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
    dk.docker_ok(&[
        "plugin",
        "set",
        &name,
        &format!("MNTREAP_DOCKER_ROOT={}", dk.root()),
        &format!("DOCKER_HOST={}", dk.host()),
        // This machine's pid 1 refuses ptrace-mode access, so /proc/1/root (the default)
        // is not readable here; dockerd's root shows the same files.
        &format!("MNTREAP_HOST_ROOT=/proc/{}/root", dk.pid()),
    ]);
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
