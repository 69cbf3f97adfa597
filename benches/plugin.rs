//! The latency mntreap's authorization plugin adds to ordinary API calls, side by side in
//! one run: no plugin; mntreap's plugin; and its do-nothing allow-all mode (`--noop`), the
//! floor that isolates Docker's own plugin plumbing (two plugin calls per API call).
//!
//! `cargo bench --bench plugin -- [--requests N] [--runs R]` (defaults 1000, 5; medians).
//! Needs root and `dockerd`. A private dockerd and two plugin processes live in a private
//! mount namespace and a directory of the benchmark's own; all are stopped by pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_mntreap");

/// A minimal allow-all authz plugin (thread per connection, keep-alive, no parsing), the
/// reference the goal compares with: whatever Docker's plumbing costs, it costs it too.
const MINIMAL_PLUGIN: &str = r#"
import os, socket, sys, threading
path = sys.argv[1]
try: os.unlink(path)
except FileNotFoundError: pass
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(64)
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d: return
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n"); n = 0
        for l in lines[1:]:
            if l.lower().startswith(b"content-length:"): n = int(l.split(b":")[1])
        while len(buf) < n:
            d = c.recv(65536)
            if not d: return
            buf += d
        buf = buf[n:]
        body = b'{"Implements":["authz"]}' if b"Activate" in lines[0] else b'{"Allow":true}'
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Processes the benchmark started, stopped (by pid) when it ends.
struct Procs(Vec<Child>, String);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // containerd and shims dockerd started carry our directory in their command lines.
        let _ = Command::new("pkill").args(["-9", "-f", &self.1]).status();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A keep-alive HTTP/1.1 connection to a unix socket.
struct Conn(BufReader<UnixStream>);

impl Conn {
    fn open(socket: &str) -> Conn {
        Conn(BufReader::new(
            UnixStream::connect(socket).expect("connect"),
        ))
    }

    /// One GET; returns the status. Reads exactly the response (Content-Length or chunked).
    fn get(&mut self, path: &str) -> u16 {
        write!(
            self.0.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                self.0.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut buf = vec![0; size + 2];
                self.0.read_exact(&mut buf).unwrap();
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut buf = vec![0; length];
            self.0.read_exact(&mut buf).unwrap();
        }
        status
    }
}

fn wait_for(socket: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "{socket} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let mut requests = 1000;
    let mut runs = 5;
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        let next = || args.get(i + 1).and_then(|v| v.parse().ok());
        match a.as_str() {
            "--requests" => requests = next().expect("--requests N"),
            "--runs" => runs = next().expect("--runs N"),
            _ => {}
        }
    }
    common::enter_private_mount_namespace();
    let pid = std::process::id();
    let d = format!("/tmp/mntreap-plugin-bench-{pid}");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(format!("{d}/daemon.json"), "{}").unwrap();
    let mut procs = Procs(Vec::new(), d.clone());
    let docker_sock = format!("{d}/docker.sock");
    std::fs::create_dir_all("/run/docker/plugins").unwrap();
    let plugin = |name: &str, noop: bool| -> (Child, String) {
        let socket = format!("/run/docker/plugins/{name}.sock");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "plugin",
            "--socket",
            &socket,
            "--docker-root",
            &format!("{d}/root"),
        ])
        .args(["--docker-host", &format!("unix://{docker_sock}")])
        .env("MNTREAP_SWEEP_INTERVAL", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if noop {
            cmd.arg("--noop");
        }
        (cmd.spawn().unwrap(), name.to_string())
    };
    let minimal_name = format!("mntreap-bench-minimal-{pid}");
    let minimal = Command::new("python3")
        .args([
            "-c",
            MINIMAL_PLUGIN,
            &format!("/run/docker/plugins/{minimal_name}.sock"),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    procs.0.push(minimal);
    let (real, real_name) = plugin(&format!("mntreap-bench-{pid}"), false);
    let (noop, noop_name) = plugin(&format!("mntreap-bench-noop-{pid}"), true);
    procs.0.push(real);
    procs.0.push(noop);
    let dockerd = Command::new("dockerd")
        .args([
            "--data-root",
            &format!("{d}/root"),
            "--exec-root",
            &format!("{d}/exec"),
        ])
        .args([
            "-H",
            &format!("unix://{docker_sock}"),
            "--pidfile",
            &format!("{d}/pid"),
        ])
        .args([
            "--iptables=false",
            "--bridge=none",
            "--config-file",
            &format!("{d}/daemon.json"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dockerd (apt-get install docker.io)");
    let dockerd_pid = dockerd.id();
    procs.0.push(dockerd);
    wait_for(&docker_sock);
    while Conn::open(&docker_sock).get("/_ping") != 200 {
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut table: Vec<(&str, Duration)> = Vec::new();
    for (label, plugin) in [
        ("no plugin", None),
        (
            "minimal allow-all plugin (python, reference)",
            Some(&minimal_name),
        ),
        ("mntreap plugin, --noop (allow-all floor)", Some(&noop_name)),
        ("mntreap plugin", Some(&real_name)),
    ] {
        let config = match plugin {
            Some(name) => format!(r#"{{"authorization-plugins": ["{name}"]}}"#),
            None => "{}".into(),
        };
        std::fs::write(format!("{d}/daemon.json"), config).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &dockerd_pid.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(700));
        let mut conn = Conn::open(&docker_sock);
        for _ in 0..100 {
            assert_eq!(conn.get("/v1.41/containers/json"), 200, "{label}: warm-up");
        }
        let mut times = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            for _ in 0..requests {
                assert_eq!(conn.get("/v1.41/containers/json"), 200);
            }
            times.push(started.elapsed());
        }
        times.sort();
        table.push((label, times[times.len() / 2]));
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / requests as f64;
    println!(
        "\n{requests} x GET /containers/json on one keep-alive connection, median of {runs} runs"
    );
    println!("{:<44} {:>12} {:>12}", "", "total", "per call");
    for (label, d) in &table {
        println!(
            "{label:<44} {:>9.1} ms {:>9.3} ms",
            d.as_secs_f64() * 1e3,
            per(*d)
        );
    }
    let (none, minimal, noop, real) = (table[0].1, table[1].1, table[2].1, table[3].1);
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "mntreap / --noop: {:.3}x (goal <= 1.05)   mntreap / no plugin: {:.2}x (goal <= 1.6)",
        r(real, noop),
        r(real, none)
    );
    println!(
        "mntreap / minimal plugin: {:.2}x   minimal plugin / no plugin: {:.2}x (Docker's plumbing)",
        r(real, minimal),
        r(minimal, none)
    );
    std::fs::write(format!("{d}/daemon.json"), "{}").unwrap();
    drop(procs);
    let _ = std::fs::remove_file(format!("/run/docker/plugins/{real_name}.sock"));
    let _ = std::fs::remove_file(format!("/run/docker/plugins/{noop_name}.sock"));
    let _ = std::fs::remove_file(format!("/run/docker/plugins/{minimal_name}.sock"));
}
