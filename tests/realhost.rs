//! Real-host tier: each test boots a real Debian host (systemd as PID 1, Debian's own
//! docker.io / containerd / nginx units, docker.socket activation): Debian 12 by default,
//! trixie or sid with `MNTREAP_REALHOST_RELEASE`, and Docker's containerd image store with
//! `MNTREAP_REALHOST_IMAGE_STORE=containerd` (.ci/run plays them all), in systemd-nspawn on this
//! machine's kernel (tests/realhost/host.sh), reproduces one of the issue's write-ups there and
//! runs the static mntreap inside it, as an operator would. Each test tears its machine down
//! in Drop, also when it fails.
//!
//! Needs root, `systemd-nspawn` (systemd-container) and `mmdebstrap`; the rootfs is built once
//! per release (about 25 s) and cached in /var/cache/mntreap-realhost, outside the repository.
mod common;
#[cfg(feature = "cri")]
#[path = "realhost/cri.rs"]
mod cri;

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::wait_until;
use serde_json::Value;

const HOST_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/realhost/host.sh");
const BUILD_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-plugin/build.sh");
const DEB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/deb/build.sh");

/// The Debian package (built once, after the static binary it packs).
fn package() -> &'static str {
    static DEB: OnceLock<String> = OnceLock::new();
    DEB.get_or_init(|| {
        prerequisites();
        let t0 = Instant::now();
        let out = Command::new("bash").arg(DEB_SH).output().unwrap();
        assert!(
            out.status.success(),
            "packaging/deb/build.sh: {}",
            common::stderr(&out)
        );
        let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("package {deb} ({:.1?})", t0.elapsed());
        deb
    })
}

/// Whether this test binary runs inside a VM that `host.sh vm` booted: then this machine is
/// the guest, set up already (mntreap at /usr/local/bin).
fn in_guest() -> bool {
    std::env::var_os("MNTREAP_REALHOST_IN_GUEST").is_some_and(|v| v == "1")
}

/// Root, the tools, the static binary (built once), the cached rootfs (built once).
fn prerequisites() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if in_guest() {
            return "/usr/local/bin/mntreap".into();
        }
        common::require_root();
        for tool in ["systemd-nspawn", "mmdebstrap"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap();
            assert!(
                found.status.success(),
                "{tool} is missing: run .ci/run (installs systemd-container mmdebstrap)"
            );
        }
        let t0 = Instant::now();
        let out = Command::new("bash")
            .args([BUILD_SH, "--binary"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-plugin/build.sh --binary: {}",
            common::stderr(&out)
        );
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("static binary {bin} ({:.1?})", t0.elapsed());
        let t0 = Instant::now();
        let out = Command::new("bash")
            .args([HOST_SH, "build"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "host.sh build: {}",
            common::stderr(&out)
        );
        eprintln!("rootfs ready ({:.1?})", t0.elapsed());
        bin
    })
}

/// One booted machine; `down --kill` in Drop.
struct Guest {
    name: String,
    leader: i32,
    t0: Instant,
}

impl Guest {
    fn up(tag: &str, opts: &[&str]) -> Guest {
        let bin = prerequisites();
        let t0 = Instant::now();
        if in_guest() {
            // `host.sh vm` configured this machine with the options of the test it runs.
            eprintln!("{tag}: this machine is the guest ({opts:?} set up by host.sh vm)");
            return Guest {
                name: format!("vm-{tag}"),
                leader: 1,
                t0,
            };
        }
        let mut g = Guest {
            name: format!("rh-{tag}-{}", std::process::id()),
            leader: 0,
            t0,
        };
        let out = Command::new("bash")
            .args([HOST_SH, "up", &g.name])
            .args(opts)
            .args(["--bin", bin])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "host.sh up {} {opts:?} failed:\n{}",
            g.name,
            common::stderr(&out)
        );
        g.leader = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("host.sh up printed no leader pid: {out:?}"));
        eprintln!("{}: booted in {:.1?}", g.name, t0.elapsed());
        g
    }

    /// Logs how long the test has run, for timings.
    fn step(&self, what: &str) {
        eprintln!("{}: {what} at {:.1?}", self.name, self.t0.elapsed());
    }

    /// A shell script inside the guest (all namespaces of its PID 1), as root.
    fn sh_output(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "in {}: {script}\nexit {:?}\nstdout: {}\nstderr: {}\n{}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `mntreap ARGS --json` inside the guest: exit code and document.
    fn mntreap(&self, args: &str) -> (i32, Value) {
        let out = self.sh_output(&format!("mntreap {args} --json"));
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mntreap {args} --json printed no JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        common::assert_documented(&out.stdout);
        (out.status.code().unwrap_or(-1), doc)
    }

    fn main_pid(&self, unit: &str) -> i32 {
        let pid: i32 = self
            .sh(&format!("systemctl show -P MainPID {unit}"))
            .parse()
            .unwrap();
        assert!(pid > 0, "{unit} has no main pid\n{}", self.diag());
        pid
    }

    fn mnt_ns(&self, pid: i32) -> u64 {
        let link = self.sh(&format!("readlink /proc/{pid}/ns/mnt"));
        link.trim_start_matches("mnt:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }

    /// Whether guest pid `pid`'s namespace has a mount at `path`.
    fn has_mount(&self, pid: i32, path: &str) -> bool {
        self.sh(&format!("cat /proc/{pid}/mountinfo"))
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(path))
    }

    fn import_busybox(&self) {
        self.sh("tar -C /opt/bbroot -c . | docker import - bb >/dev/null");
    }

    /// `docker run -d` a busybox sleep; returns the container id.
    fn run(&self, name: &str, extra: &str) -> String {
        self.sh(&format!(
            "docker run -d --network none {extra} --name {name} bb sleep 100000"
        ))
    }

    /// The container's root filesystem mount: overlay2's `merged`, or, with the containerd
    /// image store (no graph driver), `<data-root>/rootfs/overlayfs/<id>`.
    fn merged(&self, name: &str) -> String {
        let merged = self.sh(&format!(
            "docker inspect -f '{{{{.GraphDriver.Data.MergedDir}}}}' {name}"
        ));
        if merged.starts_with('/') {
            return merged;
        }
        let id = self.sh(&format!("docker inspect -f '{{{{.Id}}}}' {name}"));
        format!("/var/lib/docker/rootfs/overlayfs/{id}")
    }

    /// `systemctl reload docker` (SIGHUP), then waits until dockerd has reloaded daemon.json.
    fn reload_docker(&self) {
        let count = |g: &Guest| -> usize {
            g.sh(
                "journalctl -u docker --no-pager -o cat | grep -c 'Reloaded configuration' || true",
            )
            .parse()
            .unwrap()
        };
        let before = count(self);
        self.sh("systemctl reload docker");
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || count(self) > before,
            || format!("dockerd never reloaded\n{}", self.diag()),
        );
    }

    /// The guest's warnings and dockerd's last journal lines, for failure messages.
    fn diag(&self) -> String {
        let journal = |args: &[&str]| {
            Command::new("nsenter")
                .args([
                    "-t",
                    &self.leader.to_string(),
                    "-a",
                    "journalctl",
                    "--no-pager",
                ])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        format!(
            "--- {} journalctl -p warning:\n{}\n--- journalctl -u docker:\n{}",
            self.name,
            journal(&["-p", "warning", "-n", "15"]),
            journal(&["-u", "docker", "-n", "25"])
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if in_guest() {
            return; // the VM powers off when its test ends
        }
        let _ = Command::new("bash")
            .args([HOST_SH, "down", &self.name, "--kill"])
            .stdin(Stdio::null())
            .output();
        eprintln!("{}: done in {:.1?}", self.name, self.t0.elapsed());
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no array {key} in {}", pretty(v)))
}

/// Every (mnt_ns, action) of a release document (all containers).
fn actions(doc: &Value) -> Vec<(u64, Value)> {
    let mut all = Vec::new();
    for r in array(doc, "releases") {
        for ns in array(r, "namespaces") {
            for a in array(ns, "actions") {
                all.push((ns["mnt_ns"].as_u64().unwrap(), a.clone()));
            }
        }
    }
    all
}

/// A container release left no copy reachable by path, and its exit status says whether
/// anything remains (1) or not (0). systemd's service namespaces (PrivateTmp, ProtectSystem)
/// also hold a copy of every mount under their pivoted-away root, which no path reaches: the
/// listmount backend reports those with an empty `mount_point`; they go when dockerd
/// unmounts the original.
fn assert_release_consistent(code: i32, doc: &Value) {
    let text = pretty(doc);
    let mut remaining = 0;
    for r in array(doc, "releases") {
        for h in array(r, "remaining") {
            remaining += 1;
            assert_eq!(h["mount_point"], "", "a reachable copy remains: {text}");
        }
    }
    assert_eq!(code, i32::from(remaining > 0), "{text}");
}

fn freed(result: &Value) -> bool {
    result == "unmounted" || result == "detached"
}

/// The first write-up on Debian's docker.io 20.10: docker.service with a `MountFlags=slave`
/// drop-in, live-restore, dockerd supervising its own containerd (containerd.service masked),
/// then `systemctl restart docker`: the shims stay in the old namespace with the shm of the
/// `--ipc shareable` container.
#[test]
fn writeup1_mountflags_slave_live_restore_restart() {
    let g = Guest::up("slave", &["--live-restore", "--mountflags-slave"]);
    g.import_busybox();
    let c1 = g.run("c1", "--ipc shareable");
    g.run("c2", "");
    let old_dockerd = g.main_pid("docker");
    let old_ns = g.mnt_ns(old_dockerd);
    let shm = format!("/var/lib/docker/containers/{c1}/mounts/shm");
    g.sh("systemctl restart docker");
    let dockerd = g.main_pid("docker");
    let ns = g.mnt_ns(dockerd);
    assert_ne!(dockerd, old_dockerd);
    assert_ne!(ns, old_ns, "MountFlags=slave: each start gets a namespace");
    let shim: i32 = g
        .sh("ps -o ppid= -p $(docker inspect -f '{{.State.Pid}}' c1)")
        .parse()
        .unwrap();
    assert_eq!(g.sh(&format!("cat /proc/{shim}/comm")), "containerd-shim");
    assert_eq!(
        g.mnt_ns(shim),
        old_ns,
        "the shim stays in the old namespace"
    );
    assert!(g.has_mount(shim, &shm), "the old namespace keeps c1's shm");
    // A container started after the restart, and a PrivateTmp service started after it.
    g.run("c3", "");
    let merged3 = g.merged("c3");
    g.sh("systemctl restart nginx");
    let nginx = g.main_pid("nginx");

    let (code, doctor) = g.mntreap("doctor");
    let doc = pretty(&doctor);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doctor["runtime"]["pid"], dockerd, "docker.pid: {doc}");
    let identity = common::doctor_check(&doctor, "runtime-identity");
    assert_eq!(identity["status"], "ok", "{doc}");
    assert!(
        identity["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("dockerd is pid {dockerd},")),
        "runtime-identity names MainPID {dockerd}: {doc}"
    );
    let slave = common::doctor_check(&doctor, "mountflags-slave-live-restore");
    assert_eq!(slave["status"], "problem", "{doc}");
    assert!(
        slave["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("(pid {dockerd})")),
        "names the real dockerd {dockerd}: {doc}"
    );
    assert!(
        array(&slave, "evidence").iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with("docker.service: MountFlags=slave (set in")),
        "{doc}"
    );

    let (code, node) = g.mntreap("scan");
    let doc = pretty(&node);
    assert_eq!(code, 1, "{doc}");
    let findings = array(&node, "findings");
    assert!(
        findings.iter().any(|f| f["class"] == "leaked"
            && f["mnt_ns"] == old_ns
            && f["mount_point"] == shm.as_str()
            && f["container"]["id"] == c1.as_str()),
        "the stranded shm of c1 in the old namespace {old_ns} is leaked: {doc}"
    );
    assert!(
        !findings.iter().any(|f| f["mnt_ns"] == ns),
        "no finding in the new dockerd's namespace {ns}: {doc}"
    );

    // A running container started after the restart: dockerd's copy stays.
    let (code, rel) = g.mntreap("release c3");
    let doc = pretty(&rel);
    assert_eq!(code, 0, "{doc}");
    let acts = actions(&rel);
    assert!(
        acts.iter().any(|(n, a)| *n == ns
            && a["mount_point"] == merged3.as_str()
            && a["result"] == "kept"),
        "dockerd's copy of running c3 is kept: {doc}"
    );
    assert!(
        !acts.iter().any(|(n, a)| *n == ns && a["result"] != "kept"),
        "{doc}"
    );
    assert!(
        g.has_mount(dockerd, &merged3),
        "c3's merged left dockerd's mountinfo: {doc}"
    );
    assert!(
        !g.has_mount(nginx, &merged3),
        "nginx ({nginx}) still holds c3: {doc}"
    );
    assert_eq!(g.sh("docker exec c3 echo exec-ok"), "exec-ok");

    // The old container: its stranded copy is freed.
    let (code, rel) = g.mntreap("release c1");
    let doc = pretty(&rel);
    assert_eq!(code, 0, "{doc}");
    assert!(
        actions(&rel)
            .iter()
            .any(|(n, a)| *n == old_ns && a["mount_point"] == shm.as_str() && freed(&a["result"])),
        "c1's shm in the old namespace is released: {doc}"
    );
    assert!(!g.has_mount(shim, &shm), "{doc}");
    let (code, node) = g.mntreap("scan");
    assert_eq!(code, 0, "nothing left: {}", pretty(&node));
    assert_eq!(g.sh("docker exec c3 echo exec-ok"), "exec-ok");
    assert!(g.has_mount(dockerd, &merged3));
}

/// The first write-up's variant on Debian's default units (system containerd.service, no
/// MountFlags), live-restore on: dockerd is socket-activated, so the socket's creator is
/// systemd (pid 1); mntreap must still name dockerd and keep its copy of a running container.
#[test]
fn writeup1_variant_system_containerd_socket_activation() {
    let g = Guest::up("sysctd", &["--live-restore"]);
    // Debian's units: docker.socket creates the socket and hands it to dockerd (-H fd://).
    assert_eq!(
        g.sh("systemctl show -P TriggeredBy docker.service"),
        "docker.socket"
    );
    assert!(
        g.sh("systemctl cat docker.service")
            .contains("/usr/sbin/dockerd -H fd://")
    );
    g.import_busybox();
    g.run("c1", "");
    g.run("c2", "");
    let merged = g.merged("c1");
    for round in ["first start", "after systemctl restart docker"] {
        let dockerd = g.main_pid("docker");
        assert_ne!(dockerd, 1);
        let (_, doctor) = g.mntreap("doctor");
        let doc = pretty(&doctor);
        assert_eq!(
            doctor["runtime"]["pid"], dockerd,
            "{round}: docker.pid: {doc}"
        );
        assert_eq!(
            doctor["runtime"]["identity"]["pid"], dockerd,
            "{round}: {doc}"
        );
        assert_eq!(
            doctor["runtime"]["identity"]["unsure"],
            Value::Null,
            "{doc}"
        );
        let identity = common::doctor_check(&doctor, "runtime-identity");
        assert_eq!(identity["status"], "ok", "{round}: {doc}");
        assert!(
            array(&identity, "evidence")
                .iter()
                .any(|e| e.as_str().unwrap().contains("socket activation")),
            "{round}: {doc}"
        );
        assert_ne!(
            common::doctor_check(&doctor, "mountflags-slave-live-restore")["status"],
            "problem",
            "{doc}"
        );
        let (code, rel) = g.mntreap("release c1");
        let doc = pretty(&rel);
        assert_release_consistent(code, &rel);
        let ns = g.mnt_ns(dockerd);
        assert!(
            actions(&rel).iter().any(|(n, a)| *n == ns
                && a["mount_point"] == merged.as_str()
                && a["result"] == "kept"),
            "{round}: dockerd's copy of running c1 is kept: {doc}"
        );
        assert!(
            g.has_mount(dockerd, &merged),
            "{round}: c1's merged left dockerd's mountinfo: {doc}"
        );
        assert_eq!(g.sh("docker exec c1 echo exec-ok"), "exec-ok");
        g.sh("systemctl restart docker");
    }
}

/// The second write-up: nginx (PrivateTmp=true) restarted after containers started holds
/// copies of their mounts (and so may systemd-logind's namespace). overlay2 only:
/// devicemapper needs block devices and device-mapper in the guest, which nspawn does not
/// give, and its "Device is Busy" needs a kernel without lazy detach anyway.
#[test]
fn writeup2_private_tmp_nginx_release_plugin_agent() {
    let g = Guest::up("ptmp", &["--deb", package()]);
    g.import_busybox();
    g.run("w1", "");
    g.run("w2", "");
    g.run("w3", "");
    let w4 = g.run("w4", "--ipc shareable");
    let (m1, m2, m3) = (g.merged("w1"), g.merged("w2"), g.merged("w3"));
    let dockerd = g.main_pid("docker");
    let dockerd_ns = g.mnt_ns(dockerd);
    g.sh("systemctl restart nginx");
    let nginx = g.main_pid("nginx");
    let nginx_ns = g.mnt_ns(nginx);
    assert_ne!(nginx_ns, dockerd_ns);
    g.sh(&format!(
        "nsenter -t {nginx} -m sh -c 'echo realhost-marker > /tmp/mntreap-marker'"
    ));
    for m in [&m1, &m2, &m3] {
        assert!(g.has_mount(nginx, m), "nginx's namespace copied {m}");
    }
    // A PrivateTmp service that also turns propagation off (MountFlags=private): its copies
    // outlive the container's stop (the rest are unmounted by propagation, and `merged` by
    // dockerd's rmdir on a kernel with lazy detach).
    g.sh(
        "systemd-run --unit=private-holder -p PrivateTmp=yes -p MountFlags=private sleep infinity",
    );
    let holder = g.main_pid("private-holder");
    // Its main pid is known from the fork; its namespace only once it has exec'd sleep.
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || g.sh(&format!("cat /proc/{holder}/comm")) == "sleep",
        || format!("private-holder (pid {holder}) never exec'd its sleep"),
    );
    let holder_ns = g.mnt_ns(holder);

    g.step("setup done");
    // scan NAME: nginx's copy is leaked.
    let (code, scan) = g.mntreap("scan w1");
    let doc = pretty(&scan);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(scan["runtime"]["pid"], dockerd, "{doc}");
    let holders = array(&scan, "holders");
    assert!(
        holders.iter().any(|h| h["mnt_ns"] == nginx_ns
            && h["mount_point"] == m1.as_str()
            && h["role"] == "leaked"),
        "nginx's copy of w1 is leaked: {doc}"
    );
    assert!(
        holders.iter().any(|h| h["mnt_ns"] == dockerd_ns
            && h["mount_point"] == m1.as_str()
            && h["role"] == "runtime"),
        "{doc}"
    );

    // release NAME: exactly the foreign copies.
    let w1_ns = g.mnt_ns(
        g.sh("docker inspect -f '{{.State.Pid}}' w1")
            .parse()
            .unwrap(),
    );
    let (code, rel) = g.mntreap("release w1");
    let doc = pretty(&rel);
    let acts = actions(&rel);
    for (n, a) in &acts {
        if freed(&a["result"]) {
            assert!(
                *n != dockerd_ns && *n != w1_ns,
                "released in dockerd's or the container's own namespace: {doc}"
            );
        }
        if *n == dockerd_ns || *n == w1_ns {
            assert_eq!(a["result"], "kept", "{doc}");
        }
    }
    for ns in [nginx_ns, holder_ns] {
        assert!(
            acts.iter().any(|(n, a)| *n == ns
                && a["mount_point"] == m1.as_str()
                && a["result"] == "unmounted"),
            "w1's copy in namespace {ns} is released: {doc}"
        );
    }
    assert!(!g.has_mount(nginx, &m1), "{doc}");
    assert!(!g.has_mount(holder, &m1), "{doc}");
    assert!(
        g.has_mount(dockerd, &m1),
        "dockerd keeps w1's merged: {doc}"
    );
    assert_release_consistent(code, &rel);
    assert_eq!(g.sh("docker exec w1 echo exec-ok"), "exec-ok");

    g.step("scan/release done");
    // The managed plugin, installed per docs/docker-plugin.md, with no settings.
    let out = Command::new("bash")
        .args([BUILD_SH, "mntreap"])
        .env(
            "DOCKER_HOST",
            format!("unix:///proc/{}/root/run/docker.sock", g.leader),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-plugin/build.sh mntreap: {}",
        common::stderr(&out)
    );
    let enable = g.sh_output("docker plugin enable mntreap");
    assert!(
        enable.status.success(),
        "docker plugin enable mntreap (no settings, per docs/docker-plugin.md): {}\nthe plugin's output in journalctl -u docker:\n{}",
        common::stderr(&enable),
        g.sh("journalctl -u docker --no-pager -o cat | grep 'plugin=' | tail -n 20")
    );
    g.sh(r#"sed -i 's/^{/{\n  "authorization-plugins": ["mntreap"],/' /etc/docker/daemon.json"#);
    g.reload_docker();
    assert!(g.has_mount(nginx, &m2));
    g.sh("docker rm -f w2");
    assert!(!g.has_mount(nginx, &m2));
    let journal = g.sh("journalctl -u docker --no-pager -o cat");
    assert!(
        journal.lines().any(|l| l.contains("mntreap::audit")
            && l.contains(&nginx_ns.to_string())
            && l.contains(m2.as_str())
            && l.contains("unmounted")),
        "the plugin released nginx's copy of w2 (audit line in journalctl -u docker):\n{}",
        journal
            .lines()
            .filter(|l| l.contains("plugin="))
            .collect::<Vec<_>>()
            .join("\n")
    );
    g.step("plugin rm -f done");
    // Removed per docs/docker-plugin.md (out of the chain first), so that the agent alone acts below.
    g.sh(r#"sed -i '/"authorization-plugins"/d' /etc/docker/daemon.json"#);
    g.reload_docker();
    g.sh("docker plugin disable mntreap && docker plugin rm mntreap");

    g.step("plugin removed");
    // The agent (a transient unit, no settings) releases a stopped container's leaked copy
    // in a sweep.
    let shm4 = format!("/var/lib/docker/containers/{w4}/mounts/shm");
    g.sh("docker stop -t 0 w4");
    assert!(
        g.has_mount(holder, &shm4),
        "the private holder keeps w4's shm"
    );
    let (_, node) = g.mntreap("scan");
    assert!(
        array(&node, "findings")
            .iter()
            .any(|f| f["mnt_ns"] == holder_ns
                && f["mount_point"] == shm4.as_str()
                && f["container"]["state"] == "exited"),
        "{}",
        pretty(&node)
    );
    // The agent from the Debian package: its unit, as shipped, with a short sweep interval
    // in /etc/default/mntreap (the package's place for options).
    g.sh("dpkg -i /root/mntreap.deb");
    assert_eq!(
        g.sh("systemctl is-enabled mntreap-agent || true"),
        "disabled",
        "installed, not enabled"
    );
    assert!(g.sh("ls /usr/share/man/man1").contains("mntreap-why.1.gz"));
    g.sh(r#"echo 'MNTREAP_AGENT_OPTS="--sweep-interval 2 --metrics-addr off"' > /etc/default/mntreap"#);
    g.sh("systemctl enable --now mntreap-agent");
    // Its own sandboxing strands nothing: the agent runs in the host's mount namespace.
    assert_eq!(
        g.mnt_ns(g.main_pid("mntreap-agent")),
        g.mnt_ns(1),
        "the agent's unit gives it a mount namespace of its own"
    );
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || !g.has_mount(holder, &shm4),
        || {
            format!(
                "the agent did not release w4's shm:\n{}",
                g.sh("journalctl -u mntreap-agent --no-pager -o cat")
            )
        },
    );
    let journal = g.sh("journalctl -u mntreap-agent --no-pager -o cat");
    assert!(
        journal.lines().any(|l| l.contains("mntreap::audit")
            && l.contains(&shm4)
            && l.contains("unmounted")
            && l.contains(r#""trigger":"sweep""#)),
        "{journal}"
    );
    // Removing the package stops and disables the agent.
    g.sh("dpkg -r mntreap");
    assert_eq!(
        g.sh("systemctl is-active mntreap-agent || true"),
        "inactive"
    );

    g.step("agent released");
    // nginx kept serving, in the same namespace, with its PrivateTmp file.
    assert_eq!(g.main_pid("nginx"), nginx);
    assert!(
        g.sh("busybox wget -q -O - http://127.0.0.1:80/")
            .contains("nginx"),
        "nginx serves"
    );
    assert_eq!(
        g.sh(&format!("nsenter -t {nginx} -m cat /tmp/mntreap-marker")),
        "realhost-marker"
    );
    // dockerd's copies of the running containers stayed.
    assert!(g.has_mount(dockerd, &m1) && g.has_mount(dockerd, &m3));
    assert_eq!(g.sh("docker exec w1 echo exec-ok"), "exec-ok");
    assert_eq!(g.sh("docker exec w3 echo exec-ok"), "exec-ok");
}
