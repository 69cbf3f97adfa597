//! Test fixture: a private "host" mount namespace per test, with real mounts and real
//! leak-holder processes, torn down (by pid) even when the test fails.
//!
//! Each sandbox is a `sleep` started under `unshare -m --propagation private`: its
//! namespace plays the node's host namespace, and mntreap runs inside it (`nsenter`), so
//! "own namespace" means the sandbox's and nothing a test does touches the machine's real
//! mount table. Leak holders are further `unshare -m` processes started from inside it:
//! they copy every mount the sandbox has at that moment, exactly like a PrivateTmp service.
#![allow(dead_code)]

#[cfg(feature = "cri")]
pub mod cri;
pub mod docker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mntreap");

pub struct Sandbox {
    pub dir: PathBuf,
    host: Child,
    children: Vec<Child>,
    loops: Vec<String>,
}

impl Sandbox {
    /// A sandbox whose directory `dir` is a tmpfs mounted only in the sandbox namespace.
    pub fn new(name: &str) -> Sandbox {
        require_root();
        let dir = PathBuf::from(format!("/tmp/mntreap-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the sandbox namespace (unshare)");
        let sb = Sandbox {
            dir,
            host,
            children: Vec::new(),
            loops: Vec::new(),
        };
        sb.wait_own_ns(sb.host.id() as i32);
        sb.sh(&format!("mount -t tmpfs mntreap-sandbox {}", sb.d()));
        sb
    }

    /// The sandbox directory as a shell word.
    pub fn d(&self) -> String {
        self.dir.to_str().unwrap().to_string()
    }

    pub fn host_pid(&self) -> i32 {
        self.host.id() as i32
    }

    /// Waits until `pid` has left our namespace (unshare has run), so its copy is complete.
    fn wait_own_ns(&self, pid: i32) {
        let ours = ns_inode(std::process::id() as i32);
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                let theirs = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .ok();
                theirs.is_some()
                    && theirs != Some(ours)
                    && exe.is_some_and(|e| !e.ends_with("unshare"))
            },
            || format!("process {pid} did not enter a new mount namespace"),
        );
    }

    /// Runs a shell script inside the sandbox namespace; panics with its output on failure.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "script failed: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sh_output(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.host_pid().to_string(),
                "-m",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts a leak holder: a process in a new private mount namespace copied from the
    /// sandbox's, which then runs `script` (default: sleep). Returns its pid once its
    /// namespace exists and `ready_file` (if any) has appeared.
    pub fn holder(&mut self, script: Option<&str>, ready_file: Option<&str>) -> i32 {
        self.holder_with(&["-m", "--propagation", "private"], script, ready_file)
    }

    pub fn holder_with(
        &mut self,
        unshare_args: &[&str],
        script: Option<&str>,
        ready_file: Option<&str>,
    ) -> i32 {
        self.holder_via(&[], unshare_args, script, ready_file)
    }

    /// A holder whose namespace is made on `cpu` (`taskset`): the kernel hands out namespace
    /// ids from per-CPU batches, so only on one CPU is a later namespace sure to get a
    /// higher id than an earlier one.
    pub fn holder_on_cpu(&mut self, cpu: usize) -> i32 {
        let cpu = cpu.to_string();
        self.holder_via(
            &["taskset", "-c", &cpu],
            &["-m", "--propagation", "private"],
            None,
            None,
        )
    }

    /// A holder whose namespace is copied from `parent`'s (another holder's), not the
    /// sandbox's: a chain of namespaces, each a copy of the one before.
    pub fn holder_from(&mut self, parent: i32, unshare_args: &[&str], script: &str) -> i32 {
        let parent = parent.to_string();
        self.holder_via(
            &["nsenter", "-t", &parent, "-m", "--"],
            unshare_args,
            Some(script),
            None,
        )
    }

    fn holder_via(
        &mut self,
        launcher: &[&str],
        unshare_args: &[&str],
        script: Option<&str>,
        ready_file: Option<&str>,
    ) -> i32 {
        let body = script.unwrap_or("exec sleep 3600");
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.host_pid().to_string(), "-m", "--"])
            .args(launcher)
            .arg("unshare")
            .args(unshare_args)
            .args(["sh", "-c", body])
            .stdin(Stdio::null());
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        self.wait_own_ns(pid);
        if let Some(f) = ready_file {
            wait_until(
                Duration::from_secs(10),
                Duration::from_millis(10),
                || Path::new(f).exists(),
                || format!("holder {pid} never became ready ({f})"),
            );
        }
        // Wait for the final exec (sleep) so that the process's identity is stable.
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || matches!(comm(pid).as_deref(), Some("sleep" | "busybox")),
            || format!("holder {pid} never reached its sleep"),
        );
        pid
    }

    /// Runs `script` (which ends in `exec sleep ...`) inside the sandbox namespace, killed
    /// by pid with the sandbox; returns its pid once it sleeps, with everything the script
    /// set up before (a working directory, open descriptors) in place.
    pub fn sleeper_in(&mut self, script: &str) -> i32 {
        let pid = self.spawn_in(&["sh", "-c", script]);
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || comm(pid).as_deref() == Some("sleep"),
            || format!("pid {pid} never reached its sleep"),
        );
        pid
    }

    /// Starts a command inside the sandbox namespace (no new namespace), killed by pid
    /// with the sandbox; returns its pid.
    pub fn spawn_in(&mut self, argv: &[&str]) -> i32 {
        let child = Command::new("nsenter")
            .args(["-t", &self.host_pid().to_string(), "-m", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// Runs mntreap inside the sandbox namespace.
    pub fn mntreap(&self, args: &[&str]) -> Output {
        self.mntreap_env(args, &[])
    }

    pub fn mntreap_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.host_pid().to_string(), "-m", "--", BIN])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// mntreap with `--json`; returns the exit code and the parsed document, which must
    /// also read back as one of the documented types with unknown fields denied.
    pub fn mntreap_json(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value) {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.mntreap_env(&all, env);
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mntreap {all:?} printed no JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_documented(&out.stdout);
        (out.status.code().unwrap_or(-1), doc)
    }

    /// Sets up a loop device with an ext4 filesystem on a file in the sandbox.
    pub fn loop_ext4(&mut self, name: &str) -> String {
        let img = format!("{}/{name}.img", self.d());
        self.sh(&format!("truncate -s 32M {img} && mkfs.ext4 -q -F {img}"));
        self.loop_file(&img)
    }

    /// Attaches a loop device to `file` (a path inside the sandbox namespace); detached
    /// with the sandbox.
    pub fn loop_file(&mut self, file: &str) -> String {
        let dev = self
            .sh(&format!("losetup --find --show {file}"))
            .trim()
            .to_string();
        self.loops.push(dev.clone());
        dev
    }

    /// Detaches one of the sandbox's loop devices now (and forgets it: another test may
    /// attach the same device next).
    pub fn detach_loop(&mut self, dev: &str) {
        self.sh(&format!("losetup -d {dev}"));
        self.loops.retain(|l| l != dev);
    }

    /// Kills one holder (by pid) and reaps it.
    pub fn kill_holder(&mut self, pid: i32) {
        if let Some(pos) = self.children.iter().position(|c| c.id() as i32 == pid) {
            let mut c = self.children.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in self
            .children
            .iter_mut()
            .chain(std::iter::once(&mut self.host))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The namespaces are gone with their last processes, and their mounts with them.
        // Last attached first: a loop backed by a file on an earlier loop's filesystem.
        for dev in self.loops.iter().rev() {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every JSON document a command prints is one of the typed documents of
/// `mntreap::report::doc`, read back with unknown fields denied: the schema is the code's,
/// and nothing undocumented slips out.
pub fn assert_documented(bytes: &[u8]) {
    use mntreap::report::doc::*;
    fn attempt<T: serde::de::DeserializeOwned>(bytes: &[u8], name: &str) -> Result<(), String> {
        serde_json::from_slice::<T>(bytes)
            .map(|_| ())
            .map_err(|e| format!("{name}: {e}"))
    }
    let tries = [
        attempt::<ScanDoc>(bytes, "ScanDoc"),
        attempt::<ReleasesDoc>(bytes, "ReleasesDoc"),
        attempt::<FailedDoc>(bytes, "FailedDoc"),
        attempt::<NodeReportDoc>(bytes, "NodeReportDoc"),
        attempt::<ReapDoc>(bytes, "ReapDoc"),
        attempt::<DoctorDoc>(bytes, "DoctorDoc"),
        attempt::<HookReply>(bytes, "HookReply"),
        attempt::<ErrorDoc>(bytes, "ErrorDoc"),
        attempt::<WhyDoc>(bytes, "WhyDoc"),
    ];
    if tries.iter().all(|t| t.is_err()) {
        let why: Vec<String> = tries.into_iter().filter_map(|t| t.err()).collect();
        panic!(
            "output is none of the documented JSON documents:\n{}\n{}",
            why.join("\n"),
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Polls `ready` every `every` until it holds; after `within`, fails with `what()`. The
/// one deadline loop of the tests.
pub fn wait_until(
    within: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(every);
    }
}

/// The `holders` array of a scan document.
pub fn holders(doc: &serde_json::Value) -> &Vec<serde_json::Value> {
    doc["holders"].as_array().expect("a document with holders")
}

/// `(mnt_ns, mount_id) -> action word` of every action in a release document (`releases`).
pub fn release_actions(doc: &serde_json::Value) -> std::collections::BTreeMap<(u64, u64), String> {
    let mut out = std::collections::BTreeMap::new();
    for rel in doc["releases"].as_array().unwrap() {
        for ns in rel["namespaces"].as_array().unwrap() {
            for a in ns["actions"].as_array().unwrap() {
                let word = match a["result"].as_str().unwrap() {
                    "unmounted" | "would-unmount" => "unmount",
                    "detached" | "would-detach" => "detach",
                    "kept" => "keep",
                    other => other,
                };
                let key = (
                    ns["mnt_ns"].as_u64().unwrap(),
                    a["mount_id"].as_u64().unwrap(),
                );
                // A copy that any container's release unmounts is unmounted.
                let slot = out.entry(key).or_insert_with(|| word.to_string());
                if word != "keep" {
                    *slot = word.to_string();
                }
            }
        }
    }
    out
}

/// `(mnt_ns, mount_id) -> action` of every holder of a scan document; each holder must
/// say why.
pub fn scan_actions(doc: &serde_json::Value) -> std::collections::BTreeMap<(u64, u64), String> {
    holders(doc)
        .iter()
        .map(|h| {
            assert!(h["reason"].is_string(), "every holder says why: {h}");
            (
                (
                    h["mnt_ns"].as_u64().unwrap(),
                    h["mount_id"].as_u64().unwrap(),
                ),
                h["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts that a scan's actions are the plan's and the release's, holder by holder.
pub fn assert_scan_is_release(
    scan: &serde_json::Value,
    plan: &serde_json::Value,
    done: &serde_json::Value,
) {
    let shown = scan_actions(scan);
    for (doc, what) in [(plan, "plan"), (done, "release")] {
        for (key, action) in &release_actions(doc) {
            assert_eq!(
                shown.get(key),
                Some(action),
                "holder {key:?}: scan {scan} {what} {doc}"
            );
        }
    }
    let taken = release_actions(done);
    for (key, action) in shown.iter().filter(|(_, a)| *a != "keep") {
        assert_eq!(
            taken.get(key),
            Some(action),
            "holder {key:?}: release {done}"
        );
    }
}

pub fn require_root() {
    assert!(
        nix_is_root(),
        "these tests create mount namespaces and must run as root (CI runs them as root)"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn ns_inode(pid: i32) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!("/proc/{pid}/ns/mnt")).unwrap())
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status).
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Mount points (decoded) and fs sources in `pid`'s mountinfo, as (mount_point, source).
pub fn mounts_of(pid: i32) -> Vec<(String, String)> {
    let text = std::fs::read(format!("/proc/{pid}/mountinfo")).unwrap();
    let table = mntreap::engine::mountinfo::parse(&text).unwrap();
    table
        .mounts
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(table.mount_point(m)).into_owned(),
                String::from_utf8_lossy(table.str(m.source)).into_owned(),
            )
        })
        .collect()
}

pub fn has_mount_at(pid: i32, point: &str) -> bool {
    mounts_of(pid).iter().any(|(p, _)| p == point)
}

/// The set of namespace inodes among a JSON report's holders.
pub fn holder_namespaces(doc: &serde_json::Value) -> std::collections::BTreeSet<u64> {
    doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mnt_ns"].as_u64().unwrap())
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The path of a program; panics naming the package to install.
pub fn which(name: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "{name} is needed (see .ci/run)");
    path
}

/// Status and body of a raw HTTP/1.1 response read to its end.
pub fn parse_http_response(out: &str) -> (u16, String) {
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The entry of a release document's `namespaces` for mount namespace `inode`.
/// The one release of a `release --path ... --json` document (`releases[0]`: the same
/// shape as a release of containers), checked to be alone.
pub fn the_release(doc: &serde_json::Value) -> serde_json::Value {
    let releases = doc["releases"].as_array().expect("a ReleasesDoc");
    assert_eq!(releases.len(), 1, "{doc:#}");
    releases[0].clone()
}

pub fn namespace_entry(doc: &serde_json::Value, inode: u64) -> serde_json::Value {
    doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mnt_ns"].as_u64() == Some(inode))
        .unwrap_or_else(|| panic!("no entry for mount namespace {inode}: {doc:#}"))
        .clone()
}

/// One check of a `doctor --json` document, by id.
pub fn doctor_check(doctor: &serde_json::Value, id: &str) -> serde_json::Value {
    doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {doctor:#}"))
        .clone()
}

/// The static binary (the plugin's build, which `.ci/run` makes first): what runs inside
/// containers and the plugin.
pub fn static_binary() -> String {
    let out = Command::new("bash")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker-plugin/build.sh"),
            "--binary",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the agent image archive (deploy/image/build.sh) at `tar`, tagged `tag`.
pub fn build_agent_image(tar: &str, tag: &str) {
    let build = Command::new("bash")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image/build.sh"),
            tar,
            tag,
        ])
        .output()
        .unwrap();
    assert!(build.status.success(), "build.sh: {}", stderr(&build));
}

/// A test daemon's leftovers in the sandbox: immutable files (which would survive
/// rm -rf) made mutable, its mounts under `dir` unmounted in the sandbox namespace (which
/// goes with the sandbox), the directory removed.
pub fn remove_daemon_dir(sandbox_pid: i32, dir: &Path) {
    let d = dir.to_string_lossy();
    let _ = Command::new("chattr")
        .args(["-R", "-i", &d])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("nsenter")
        .args(["-t", &sandbox_pid.to_string(), "-m", "--", "sh", "-c"])
        .arg(format!(
            "grep -o ' {d}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l"
        ))
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

/// `(action, reason)` of the holder at `point` in mount namespace `ns` of a scan document.
pub fn decision(doc: &serde_json::Value, ns: u64, point: &str) -> (String, String) {
    let h = holders(doc)
        .iter()
        .find(|h| h["mnt_ns"] == ns && h["mount_point"] == point)
        .unwrap_or_else(|| panic!("no holder {point} in mount namespace {ns}: {doc:#}"));
    (
        h["action"].as_str().unwrap().into(),
        h["reason"].as_str().unwrap().into(),
    )
}

/// Opens a block device exclusively, as `rbd unmap`, `cryptsetup close` and CSI drivers'
/// detach need it: `EBUSY` while any filesystem on it is mounted anywhere.
pub fn open_excl(dev: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(dev)
}
