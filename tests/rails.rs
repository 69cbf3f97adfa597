//! Rails for what runtimes say (issue 17, part 5): a root process named `containerd`
//! holding the CRI socket is the runtime, but its directories, its records and its pace
//! go through rails; and a process merely *named* like a runtime daemon is spared only
//! when it is the host's. The runtime here is a fake (tests/common/fake_cri.rs: a real
//! gRPC server in a process whose executable is named containerd), or a real private
//! containerd with CRI.

mod common;
#[path = "common/fake_cri.rs"]
mod fake_cri;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cri::{CriDaemon, Pod};
use common::*;
use fake_cri::{FakePod, FakeRuntime, FakeSpec};

/// Not a test: the fake runtime's body, run by its copy of this binary (see
/// [`FakeRuntime::start`]); returns at once when run any other way.
#[test]
#[ignore]
fn fake_cri_serves() {
    fake_cri::serve_if_asked();
}

const SERVE: &str = "fake_cri_serves";
const LIAR: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
const OTHER: &str = "0b0b0b0b-0000-4000-8000-00000000000b";

/// Every mount of each of `pids`' namespaces: what "nothing was unmounted" compares.
fn mounts(pids: &[i32]) -> Vec<Vec<(String, String)>> {
    pids.iter().map(|&p| mounts_of(p)).collect()
}

/// A sandbox with kubelet's root in it, the other pod's volume (a real tmpfs) there, and
/// containerd's default config replaced, in the sandbox only, by `config`.
fn node(name: &str, config: &str) -> (Sandbox, String) {
    let sb = Sandbox::new(name);
    let kubelet = format!("{}/kubelet", sb.d());
    let vol = format!("{kubelet}/pods/{OTHER}/volumes/kubernetes.io~empty-dir/v");
    sb.sh(&format!(
        "mkdir -p {vol} && mount -t tmpfs other-vol {vol} && echo data > {vol}/f && \
         mount -t tmpfs fake-config /etc/containerd && printf '{config}' > \
         /etc/containerd/config.toml"
    ));
    (sb, kubelet)
}

fn lying_pods(kubelet: &str) -> Vec<FakePod> {
    let mut liar = FakePod::new(0x0a, LIAR, "liar");
    // The other pod's volume, `/` and `/etc` as the liar's own.
    liar.volumes.push(format!(
        "{kubelet}/pods/{OTHER}/volumes/kubernetes.io~empty-dir/v"
    ));
    let mut root = FakePod::new(0x0c, "0c0c0c0c-0000-4000-8000-00000000000c", "root");
    root.root_path = "/".into();
    let mut etc = FakePod::new(0x0d, "0d0d0d0d-0000-4000-8000-00000000000d", "etc");
    etc.root_path = "../../../../../../etc".into();
    vec![liar, root, etc]
}

fn run(
    sb: &Sandbox,
    args: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, Duration) {
    let mut all = args.to_vec();
    all.extend_from_slice(extra);
    let started = Instant::now();
    let out = sb.mntreap_env(&all, env);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)),
        started.elapsed(),
    )
}

/// Runs the agent with one-second sweeps until its log shows `until` (or 30 s pass);
/// returns the log and how long that took. Killed by pid.
fn agent_until(
    sb: &Sandbox,
    extra: &[&str],
    env: &[(&str, &str)],
    until: &str,
) -> (String, Duration) {
    let file = format!("/tmp/mntreap-rails-agent-{}.log", std::process::id());
    let hook = format!("{}/hook.sock", sb.d());
    let mut child = std::process::Command::new("nsenter")
        .args(["-t", &sb.host_pid().to_string(), "-m", "--", BIN])
        .args(["agent", "--sweep-interval", "1", "--metrics-addr", "off"])
        .args(["--no-events", "--hook-socket", &hook])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains(until) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);
    (text, took)
}

#[test]
fn a_runtime_whose_state_is_slash_is_refused_and_nothing_is_unmounted() {
    // The node's containerd config says `state = "/"`: every task bundle, every sandbox's
    // shm and the node report's roots would be derived from `/`.
    let (mut sb, kubelet) = node("railstate", "version = 2\\nstate = \"/\"\\n");
    let fake = FakeRuntime::start(
        &sb,
        "state",
        SERVE,
        FakeSpec {
            pods: lying_pods(&kubelet),
            ..Default::default()
        },
    );
    let holder = sb.holder(None, None);
    let pids = [holder, sb.host_pid()];
    let before = mounts(&pids);
    let args = [
        "--cri-endpoint",
        &fake.endpoint(),
        "--kubelet-root",
        &kubelet,
        "--docker-timeout",
        "1",
    ];
    let named = format!("containerd pid {}", fake.pid());
    for cmd in [
        &["scan", "default/liar"][..],
        &["release", "default/liar"],
        &["release", LIAR, "--json"],
        &["scan"],
        &["scan", "--json"],
    ] {
        let (code, out, _) = run(&sb, cmd, &args, &[]);
        assert_eq!(code, 2, "{cmd:?} must fail: {out}");
        assert!(
            out.contains(&named)
                && out.contains("state directory is \"/\"")
                && out.contains("/etc/containerd/config.toml"),
            "{cmd:?} must name the daemon and the bad value: {out}"
        );
        assert_eq!(mounts(&pids), before, "{cmd:?} unmounted something: {out}");
    }
    // The agent's sweeps fail the same way, and release nothing.
    let (log, _) = agent_until(&sb, &args, &[], "sweep failed");
    assert!(
        log.contains("sweep failed") && log.contains(&named),
        "{log}"
    );
    assert_eq!(mounts(&pids), before, "a sweep unmounted something: {log}");
    sb.kill_holder(holder);
}

#[test]
fn a_slow_or_hanging_runtime_fails_the_list_within_its_overall_deadline() {
    let (mut sb, kubelet) = node("railslow", "version = 2\\n");
    let mut pods = lying_pods(&kubelet);
    for n in 0x10..0x20u8 {
        pods.push(FakePod::new(
            n,
            &format!("{n:08x}-0000-4000-8000-0000000000{n:02x}"),
            &format!("p{n}"),
        ));
    }
    // Each status call answers just within its own one-second deadline.
    let slow = FakeRuntime::start(
        &sb,
        "slow",
        SERVE,
        FakeSpec {
            pods: pods.clone(),
            status_delay_ms: 800,
            ..Default::default()
        },
    );
    let holder = sb.holder(None, None);
    let pids = [holder, sb.host_pid()];
    let before = mounts(&pids);
    let ep = slow.endpoint();
    let args = [
        "--cri-endpoint",
        &ep,
        "--kubelet-root",
        &kubelet,
        "--docker-timeout",
        "1",
    ];
    let deadline = [("MNTREAP_LIST_DEADLINE", "3")];
    for cmd in [&["scan"][..], &["release", LIAR]] {
        let (code, out, took) = run(&sb, cmd, &args, &deadline);
        assert_eq!(code, 2, "{cmd:?}: {out}");
        assert!(
            took < Duration::from_secs(9),
            "{cmd:?} took {took:?}: {out}"
        );
        assert!(
            out.contains("overall deadline of 3s") && out.contains("Status of"),
            "{cmd:?} must name the deadline and the call: {out}"
        );
        assert_eq!(mounts(&pids), before, "{cmd:?}: {out}");
    }
    // The agent's first sweep fails at the deadline, not after every status call.
    let (log, took) = agent_until(&sb, &args, &deadline, "sweep failed");
    assert!(log.contains("overall deadline"), "{log}");
    assert!(
        took < Duration::from_secs(9),
        "the sweep took {took:?}: {log}"
    );
    assert_eq!(mounts(&pids), before, "{log}");
    drop(slow);

    // A runtime that answers Version and the pod list, then hangs.
    let hung = FakeRuntime::start(
        &sb,
        "hung",
        SERVE,
        FakeSpec {
            pods,
            hang_after: Some(2),
            ..Default::default()
        },
    );
    let ep = hung.endpoint();
    let args = [
        "--cri-endpoint",
        &ep,
        "--kubelet-root",
        &kubelet,
        "--docker-timeout",
        "1",
    ];
    let (code, out, took) = run(&sb, &["scan"], &args, &deadline);
    assert_eq!(code, 2, "{out}");
    assert!(took < Duration::from_secs(9), "took {took:?}: {out}");
    assert!(out.contains("ListContainers"), "{out}");
    assert_eq!(mounts(&pids), before, "{out}");
    sb.kill_holder(holder);
}

#[test]
fn a_record_through_a_symlink_into_another_pod_is_named_and_skipped() {
    let (mut sb, kubelet) = node("railsym", "version = 2\\n");
    // The liar's volumes directory is the other pod's, through a symlink.
    sb.sh(&format!(
        "mkdir -p {kubelet}/pods/{LIAR} && ln -s {kubelet}/pods/{OTHER}/volumes \
         {kubelet}/pods/{LIAR}/volumes"
    ));
    let mut liar = FakePod::new(0x0a, LIAR, "liar");
    liar.volumes = vec![format!(
        "{kubelet}/pods/{LIAR}/volumes/kubernetes.io~empty-dir/v"
    )];
    let mut other = FakePod::new(0x0b, OTHER, "other");
    other.volumes = vec![format!(
        "{kubelet}/pods/{OTHER}/volumes/kubernetes.io~empty-dir/v"
    )];
    let fake = FakeRuntime::start(
        &sb,
        "sym",
        SERVE,
        FakeSpec {
            pods: vec![liar, other],
            ..Default::default()
        },
    );
    let holder = sb.holder(None, None);
    let pids = [holder, sb.host_pid()];
    let before = mounts(&pids);
    let ep = fake.endpoint();
    let args = [
        "--cri-endpoint",
        &ep,
        "--kubelet-root",
        &kubelet,
        "--docker-timeout",
        "1",
    ];
    let (code, out, _) = run(&sb, &["release", "default/liar"], &args, &[]);
    assert_eq!(
        code, 2,
        "the liar's records are refused, so it is not found: {out}"
    );
    assert!(
        out.contains("runtime record skipped") && out.contains("symlink"),
        "the refusal is named: {out}"
    );
    assert_eq!(mounts(&pids), before, "{out}");
    // The other pod, whose paths are real, still resolves.
    let (code, out, _) = run(&sb, &["scan", "default/other"], &args, &[]);
    assert_eq!(code, 1, "its volume's copy in the holder is found: {out}");
    sb.kill_holder(holder);
}

#[test]
fn a_containers_process_named_containerd_is_not_spared() {
    // A real pod through a real containerd, and a PrivateTmp-style namespace holding
    // copies of its mounts whose process runs its own `/usr/bin/containerd` (a bind of
    // `sleep` over that path in its namespace): what a container's process named
    // containerd looks like from the host.
    let mut sb = Sandbox::new("railname");
    let cri = CriDaemon::start(&sb, "railname");
    let kubelet = format!("{}/kubelet", sb.d());
    let uid = "9e3c2a10-0b1e-4d6a-9c55-2f7e8d9a0b09";
    let pod = Pod::new("named", uid, &kubelet);
    let vol = pod.empty_dir("data");
    sb.sh(&format!("mkdir -p {vol} && mount -t tmpfs nvol {vol}"));
    let pod_id = cri.run_pod(&pod);
    let app = cri.run_container(&pod_id, "app", &[(&vol, "/data")]);
    let fake_bin = format!("{}/sleep-as-containerd", sb.d());
    sb.sh(&format!("cp /bin/sleep {fake_bin}"));
    let pid = sb.spawn_in(&[
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("mount --bind {fake_bin} /usr/bin/containerd && exec /usr/bin/containerd 3600"),
    ]);
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || comm(pid).as_deref() == Some("containerd"),
        || format!("holder {pid} never ran as containerd"),
    );
    assert!(
        has_mount_at(pid, &vol),
        "the holder copies the pod's volume"
    );
    let args = [
        "--cri-endpoint",
        &cri.endpoint(),
        "--kubelet-root",
        &kubelet,
    ];
    let (code, doc) = sb.mntreap_json(&[&["release", "default/named"][..], &args].concat(), &[]);
    assert_eq!(code, 0, "{doc}");
    let left: BTreeSet<String> = mounts_of(pid)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(&kubelet) || p.starts_with(&cri.d()))
        .collect();
    assert!(
        left.is_empty(),
        "the holder named containerd kept {left:?}: {doc}"
    );
    // containerd's and kubelet's own copies stay, and the container keeps its volume.
    assert!(has_mount_at(sb.host_pid(), &vol));
    assert!(has_mount_at(cri.container_pid(&app), "/data"));
    // The holder is no runtime process, and it did not steer the identity.
    let (_, scan) = sb.mntreap_json(&[&["scan", "default/named"][..], &args].concat(), &[]);
    let identity = &scan["runtime"]["identity"];
    assert_eq!(scan["runtime"]["pid"], cri.pid(), "{identity}");
    assert!(
        identity["runtime_processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != pid),
        "{identity}"
    );
}
