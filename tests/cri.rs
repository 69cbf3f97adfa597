//! CRI nodes (containerd without dockerd): pods and containers through a real private
//! containerd's CRI plugin, driven as kubelet drives it (tests/common/cri.rs), and a
//! PrivateTmp-style namespace that copies the pod's mounts after they were made.

mod common;

use std::collections::BTreeSet;

use common::cri::{CriDaemon, Pod};
use common::*;

const UID: &str = "7f3c2a10-0b1e-4d6a-9c55-2f7e8d9a0b01";

/// A pod `default/web` (sandbox + container `app` with an emptyDir tmpfs at kubelet's
/// path), then a holder that copies every mount. Returns (sandbox id, container id,
/// holder pid, kubelet root, volume path).
fn pod_with_a_leak(sb: &mut Sandbox, cri: &CriDaemon) -> (String, String, i32, String, String) {
    let kubelet = format!("{}/kubelet", sb.d());
    let pod = Pod::new("web", UID, &kubelet);
    let vol = pod.empty_dir("data");
    sb.sh(&format!("mkdir -p {vol} && mount -t tmpfs kvol {vol}"));
    let pod_id = cri.run_pod(&pod);
    let app = cri.run_container(&pod_id, "app", &[(&vol, "/data")]);
    let holder = sb.holder(None, None);
    (pod_id, app, holder, kubelet, vol)
}

/// A namespace whose process kubelet's cgroups place in container `app` of pod [`UID`]
/// (a namespace nested in it: DinD, buildkit). Kill it before the pod goes.
fn nested_in_pod(sb: &mut Sandbox, app: &str) -> i32 {
    let nested = sb.holder(None, None);
    let procs = format!("/sys/fs/cgroup/pids/kubepods/besteffort/pod{UID}/{app}/cgroup.procs");
    std::fs::write(&procs, nested.to_string())
        .unwrap_or_else(|e| panic!("moving {nested} into {procs}: {e}"));
    nested
}

/// A free port on the loopback, for an agent's metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts an agent on `cri`'s node in the sandbox: sweeps every `sweep` seconds (0: off),
/// its hook on `socket`, metrics on a free loopback port.
fn spawn_agent(sb: &mut Sandbox, cri: &CriDaemon, kubelet: &str, sweep: u32, socket: &str) -> i32 {
    let metrics = format!("127.0.0.1:{}", free_port());
    sb.spawn_in(&[
        BIN,
        "agent",
        "--sweep-interval",
        &sweep.to_string(),
        "--metrics-addr",
        &metrics,
        "--hook-socket",
        socket,
        "--cri-endpoint",
        &cri.endpoint(),
        "--kubelet-root",
        kubelet,
    ])
}

fn cri_args<'a>(cri: &'a CriDaemon, kubelet: &'a str) -> Vec<String> {
    vec![
        "--cri-endpoint".into(),
        cri.endpoint(),
        "--kubelet-root".into(),
        kubelet.into(),
    ]
}

fn run_json(sb: &Sandbox, args: &[&str], extra: &[String]) -> (i32, serde_json::Value) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    sb.mntreap_json(&all, &[])
}

/// Mount points in the holder's namespace under the runtime's or kubelet's directories.
fn held(pid: i32, cri: &CriDaemon, kubelet: &str) -> BTreeSet<String> {
    mounts_of(pid)
        .into_iter()
        .map(|(point, _)| point)
        .filter(|p| p.starts_with(&cri.d()) || p.starts_with(kubelet))
        .filter(|p| !p.contains("/rootfs/"))
        .collect()
}

#[test]
fn scan_and_release_a_pod_through_cri_keep_the_runtimes_copies() {
    let mut sb = Sandbox::new("cripod");
    let cri = CriDaemon::start(&sb, "pod");
    let (pod_id, app, holder, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let args = cri_args(&cri, &kubelet);
    let bundle = |id: &str| {
        format!(
            "{}/io.containerd.runtime.v2.task/k8s.io/{id}/rootfs",
            cri.state()
        )
    };
    let shm = format!(
        "{}/io.containerd.grpc.v1.cri/sandboxes/{pod_id}/shm",
        cri.state()
    );
    let before = held(holder, &cri, &kubelet);
    for p in [bundle(&pod_id), bundle(&app), shm.clone(), vol.clone()] {
        assert!(
            before.contains(&p),
            "the holder should copy {p}: {before:?}"
        );
    }

    // By pod UID: the runtime is containerd, established by the socket it holds.
    let (code, doc) = run_json(&sb, &["scan", UID], &args);
    assert_eq!(code, 1, "leaks found: {doc}");
    let rt = &doc["runtime"];
    assert_eq!(rt["runtime"], "containerd", "{rt}");
    assert_eq!(rt["via"], "api");
    assert_eq!(rt["pid"], cri.pid(), "{rt}");
    assert!(rt["identity"]["unsure"].is_null(), "{rt}");
    let names: BTreeSet<String> = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, BTreeSet::from(["default/web".into(), "app".into()]));
    let leaked: BTreeSet<String> = holders(&doc)
        .iter()
        .filter(|h| h["mnt_ns"] == ns_inode(holder) && h["role"] == "leaked")
        .map(|h| h["mount_point"].as_str().unwrap().to_string())
        .collect();
    for p in [bundle(&pod_id), bundle(&app), shm.clone(), vol.clone()] {
        assert!(
            leaked.contains(&p),
            "{p} should be a leaked copy: {leaked:?}"
        );
    }
    // containerd's own copies (its namespace is this node's) are the runtime's.
    assert!(
        holders(&doc)
            .iter()
            .any(|h| h["role"] == "runtime" && h["mount_point"] == bundle(&app).as_str())
    );

    // The same pod by namespace/name and by sandbox id prefix; a container by name.
    for name in ["default/web", &pod_id[..10]] {
        let (_, d) = run_json(&sb, &["scan", name], &args);
        assert_eq!(d["containers"].as_array().unwrap().len(), 2, "{name}: {d}");
    }
    let (_, d) = run_json(&sb, &["scan", "app"], &args);
    assert_eq!(d["containers"][0]["id"], app.as_str());

    // The node report attributes the holder's copies to the pod's containers.
    let (code, report) = run_json(&sb, &["scan"], &args);
    assert_eq!(code, 1);
    let found: BTreeSet<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["mnt_ns"] == ns_inode(holder))
        .map(|f| {
            (
                f["class"].as_str().unwrap().to_string(),
                f["owner"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(found.contains(&("leaked".into(), app.clone())), "{report}");
    assert!(
        found.contains(&("leaked".into(), pod_id.clone())),
        "{report}"
    );

    // Dry run changes nothing; the release frees the holder and keeps containerd's.
    let (_, dry) = run_json(&sb, &["release", "default/web", "--dry-run"], &args);
    assert_eq!(held(holder, &cri, &kubelet), before, "{dry}");
    let (code, rel) = run_json(&sb, &["release", "default/web"], &args);
    assert_eq!(code, 0, "{rel}");
    let after = held(holder, &cri, &kubelet);
    assert!(after.is_empty(), "left in the holder: {after:?}\n{rel}");
    assert!(
        has_mount_at(sb.host_pid(), &bundle(&app)),
        "containerd's rootfs must stay"
    );
    assert!(
        has_mount_at(sb.host_pid(), &vol),
        "kubelet's volume must stay"
    );
    // The container still runs on its root, with the pod's volume and shm: a pod's
    // containers use the pod's mounts, and their namespaces are spared.
    let pid = cri.container_pid(&app);
    assert!(std::fs::read_link(format!("/proc/{pid}/root")).is_ok());
    assert!(has_mount_at(pid, "/data"), "app lost its volume: {rel}");
    assert!(
        has_mount_at(pid, "/dev/shm"),
        "app lost the pod's shm: {rel}"
    );
    let (code, doc) = run_json(&sb, &["scan", UID], &args);
    assert_eq!(code, 0, "nothing left to find: {doc}");
    assert!(
        holders(&doc)
            .iter()
            .any(|h| h["mnt_ns"] == ns_inode(pid) && h["role"] == "container"),
        "app's copies are its own: {doc}"
    );
}

#[test]
fn reap_reports_the_runtimes_error_then_removes() {
    let mut sb = Sandbox::new("crireap");
    let cri = CriDaemon::start(&sb, "reap");
    let (pod_id, app, holder, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let args = cri_args(&cri, &kubelet);
    // CRI keeps no "removal failed" state: reap wants names.
    let out = sb.mntreap(&[
        "reap",
        "--cri-endpoint",
        &cri.endpoint(),
        "--kubelet-root",
        &kubelet,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("name the pods or containers"),
        "{}",
        stderr(&out)
    );

    // kubelet stopped the pod; its removal is made to fail (the runtime cannot empty the
    // sandbox's directory). The holder still has the pod's volume.
    cri.stop_pod(&pod_id).unwrap();
    assert!(
        has_mount_at(holder, &vol),
        "the holder keeps the pod's volume"
    );
    let dir = format!(
        "{}/root/io.containerd.grpc.v1.cri/sandboxes/{pod_id}",
        cri.d()
    );
    sb.sh(&format!("touch {dir}/pinned && chattr +i {dir}/pinned"));
    let (code, doc) = run_json(&sb, &["reap", "default/web"], &args);
    assert_eq!(code, 1, "{doc}");
    let entries = doc["containers"].as_array().unwrap();
    // Containers first, then the sandbox.
    assert_eq!(entries[0]["container"]["id"], app.as_str(), "{doc}");
    assert_eq!(entries[0]["removal"]["removed"], true, "{doc}");
    let pod = &entries[1];
    assert_eq!(pod["container"]["id"], pod_id.as_str());
    assert_eq!(pod["removal"]["removed"], false, "{doc}");
    let err = pod["removal"]["error"].as_str().unwrap();
    assert!(
        err.contains("operation not permitted"),
        "the runtime's own words: {err}"
    );
    assert!(
        !has_mount_at(holder, &vol),
        "released before the removal: {doc}"
    );
    assert!(
        has_mount_at(sb.host_pid(), &vol),
        "kubelet's own mount stays"
    );
    assert!(cri.pods().contains(&pod_id));

    sb.sh(&format!("chattr -i {dir}/pinned"));
    let (code, doc) = run_json(&sb, &["reap", &pod_id], &args);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["containers"][0]["removal"]["removed"], true, "{doc}");
    assert!(!cri.pods().contains(&pod_id));
}

#[test]
fn a_hung_runtime_resolves_offline_from_task_bundles() {
    let mut sb = Sandbox::new("crioffline");
    let mut cri = CriDaemon::start(&sb, "offline");
    let (pod_id, app, holder, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let mut args = cri_args(&cri, &kubelet);
    args.extend(["--docker-timeout".to_string(), "1".to_string()]);
    cri.stop_containerd("-STOP");
    let started = std::time::Instant::now();
    let (code, doc) = run_json(&sb, &["scan", "default/web"], &args);
    assert!(
        started.elapsed().as_secs() < 10,
        "must not wait on a hung runtime"
    );
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["runtime"]["via"], "task-bundles", "{}", doc["runtime"]);
    let reason = doc["runtime"]["offline_reason"].as_str().unwrap();
    assert!(reason.contains("no answer"), "{reason}");
    let ids: BTreeSet<&str> = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([pod_id.as_str(), app.as_str()]));
    // The running container's pid comes from its bundle's init.pid.
    let c = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == app.as_str())
        .unwrap();
    assert_eq!(c["state"], "running");
    assert!(c["pid"].as_i64().is_some_and(|p| p > 0));
    let (code, rel) = run_json(&sb, &["release", "default/web"], &args);
    assert_eq!(code, 0, "{rel}");
    assert!(held(holder, &cri, &kubelet).is_empty(), "{rel}");
    assert!(has_mount_at(sb.host_pid(), &vol));
    cri.stop_containerd("-CONT");
}

#[test]
fn a_forged_socket_holder_is_not_taken_for_containerd() {
    // A process that is not containerd serves a socket at the CRI endpoint: the identity
    // is not established, so no namespace is trusted as the runtime's.
    let mut sb = Sandbox::new("criforged");
    let sock = format!("{}/fake.sock", sb.d());
    let script = format!(
        "import socket,time; s=socket.socket(socket.AF_UNIX); s.bind('{sock}'); s.listen(); \
         time.sleep(3600)"
    );
    sb.spawn_in(&["python3", "-c", &script]);
    wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || sb.sh_output(&format!("test -S {sock}")).status.success(),
        || "the fake socket never appeared".into(),
    );
    let endpoint = format!("unix://{sock}");
    let out = sb.mntreap(&[
        "scan",
        "x",
        "--cri-endpoint",
        &endpoint,
        "--docker-timeout",
        "1",
    ]);
    // Not found, offline (no task bundles there): a clear error, exit 2, nothing done.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&sock), "{}", stderr(&out));
    // What mntreap established: no runtime daemon, so no trusted namespace, and doctor
    // says so (the listener's holder, python, is not containerd).
    let (code, doc) = sb.mntreap_json(
        &[
            "doctor",
            "--cri-endpoint",
            &endpoint,
            "--docker-timeout",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1, "{doc}");
    assert!(doc["runtime"]["pid"].is_null(), "{}", doc["runtime"]);
    assert!(doc["runtime"]["mnt_ns"].is_null(), "{}", doc["runtime"]);
    assert_ne!(
        doctor_check(&doc, "runtime-identity")["status"],
        "ok",
        "{doc}"
    );
}

#[test]
fn the_prestop_hook_from_a_cri_container_releases_its_own_pod_only() {
    let mut sb = Sandbox::new("crihook");
    let cri = CriDaemon::start(&sb, "hook");
    let kubelet = format!("{}/kubelet", sb.d());
    let hook_dir = format!("{}/hook", cri.d());
    std::fs::create_dir_all(&hook_dir).unwrap();
    let bin = static_binary();
    // Each pod's container runs the hook the way kubelet runs an exec preStop hook: a
    // process inside the container, here started when the test drops a file.
    let pod = |name: &str, uid: &str, asked: Option<&str>| {
        let p = Pod::new(name, uid, &kubelet);
        let vol = p.empty_dir("data");
        sb.sh(&format!(
            "mkdir -p {vol} && mount -t tmpfs kvol-{name} {vol}"
        ));
        let id = cri.run_pod(&p);
        let extra = asked
            .map(|a| format!(" --container {a}"))
            .unwrap_or_default();
        let script = format!(
            "while [ ! -e /run/mntreap/go-{name} ]; do sleep 0.1; done; \
             /mntreap hook pre-stop{extra} >/run/mntreap/out-{name} 2>/run/mntreap/err-{name}; \
             echo $? >/run/mntreap/rc-{name}; exec sleep 3600"
        );
        let app = cri.run_container_with(
            &id,
            "app",
            &[
                (&vol, "/data"),
                (&bin, "/mntreap"),
                (&hook_dir, "/run/mntreap"),
            ],
            &["/bin/sh", "-c", &script],
        );
        (id, app, vol)
    };
    let uid_a = "aaaaaaaa-0000-4000-8000-00000000000a";
    let uid_b = "bbbbbbbb-0000-4000-8000-00000000000b";
    let (pod_a, app_a, vol_a) = pod("web", uid_a, None);
    let (_pod_b, _app_b, vol_b) = pod("db", uid_b, Some(uid_a));
    let holder = sb.holder(None, None);
    let rootfs = |id: &str| {
        format!(
            "{}/io.containerd.runtime.v2.task/k8s.io/{id}/rootfs",
            cri.state()
        )
    };
    for p in [rootfs(&pod_a), rootfs(&app_a), vol_a.clone(), vol_b.clone()] {
        assert!(has_mount_at(holder, &p), "holder copies {p}");
    }
    let socket = format!("{hook_dir}/hook.sock");
    spawn_agent(&mut sb, &cri, &kubelet, 0, &socket);
    wait_until(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(50),
        || std::path::Path::new(&socket).exists(),
        || "the agent's hook socket never appeared".into(),
    );
    let run_hook = |name: &str| -> (String, String) {
        std::fs::write(format!("{hook_dir}/go-{name}"), "").unwrap();
        let rc = format!("{hook_dir}/rc-{name}");
        wait_until(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(50),
            || std::path::Path::new(&rc).exists(),
            || format!("the hook in {name} never finished"),
        );
        let read =
            |f: &str| std::fs::read_to_string(format!("{hook_dir}/{f}-{name}")).unwrap_or_default();
        (read("rc").trim().to_string(), read("err"))
    };

    // Pod B asks for pod A: refused, nothing changes.
    let (rc, err) = run_hook("db");
    assert_eq!(rc, "2", "{err}");
    assert!(err.contains("only its own containers"), "{err}");
    assert!(has_mount_at(holder, &vol_a) && has_mount_at(holder, &rootfs(&app_a)));

    // Pod A's own hook releases pod A's copies (sandbox and container rootfs, volume) and
    // nothing of pod B's.
    let (rc, err) = run_hook("web");
    assert_eq!(rc, "0", "{err}");
    for p in [rootfs(&pod_a), rootfs(&app_a), vol_a.clone()] {
        assert!(!has_mount_at(holder, &p), "{p} should be released");
    }
    assert!(has_mount_at(holder, &vol_b), "pod B's volume stays");
    assert!(
        has_mount_at(sb.host_pid(), &vol_a),
        "kubelet's own mount stays"
    );
}

#[test]
fn the_agent_image_imports_into_containerd_and_runs_under_cri() {
    let sb = Sandbox::new("criimage");
    let cri = CriDaemon::start(&sb, "image");
    let tar = format!("{}/agent.tar", cri.d());
    let tag = format!("mntreap/agent:cri-{}", std::process::id());
    build_agent_image(&tar, &tag);
    // As docs/kubernetes.md says for a node without a registry: ctr -n k8s.io images import.
    cri.ctr_ok(&["images", "import", &tar]);
    let pod = Pod::new(
        "agent",
        "cccccccc-0000-4000-8000-00000000000c",
        &format!("{}/kubelet", sb.d()),
    );
    let pod_id = cri.run_pod(&pod);
    // The image's entrypoint is /mntreap: args alone choose the command.
    let id = cri.run_image(
        &pod_id,
        "agent",
        &format!("docker.io/{tag}"),
        &[],
        &[],
        &["--version"],
    );
    wait_until(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(50),
        || cri.container_exit(&id).0 == k8s_cri::v1::ContainerState::ContainerExited as i32,
        || {
            format!(
                "the agent image's container did not exit: {:?}",
                cri.container_exit(&id)
            )
        },
    );
    assert_eq!(
        cri.container_exit(&id).1,
        0,
        "mntreap --version in the image"
    );
}

#[test]
fn the_agents_sweep_on_a_cri_node_releases_leaked_copies_only() {
    let mut sb = Sandbox::new("crisweep");
    let cri = CriDaemon::start(&sb, "sweep");
    let (pod_id, app, holder, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let rootfs = |id: &str| {
        format!(
            "{}/io.containerd.runtime.v2.task/k8s.io/{id}/rootfs",
            cri.state()
        )
    };
    spawn_agent(
        &mut sb,
        &cri,
        &kubelet,
        1,
        &format!("{}/hook.sock", cri.d()),
    );
    wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || held(holder, &cri, &kubelet).is_empty(),
        || format!("the sweep left {:?}", held(holder, &cri, &kubelet)),
    );
    // containerd's and kubelet's own mounts, and the running container, are untouched.
    for p in [rootfs(&pod_id), rootfs(&app), vol.clone()] {
        assert!(
            has_mount_at(sb.host_pid(), &p),
            "{p} must stay in the node's namespace"
        );
    }
    let pid = cri.container_pid(&app);
    assert!(std::fs::read_link(format!("/proc/{pid}/root")).is_ok());
}

#[test]
fn doctor_on_a_cri_node_names_containerd_and_private_binds_of_kubelets_root() {
    let mut sb = Sandbox::new("cridoctor");
    let cri = CriDaemon::start(&sb, "doctor");
    let (pod_id, _app, holder, kubelet, _vol) = pod_with_a_leak(&mut sb, &cri);
    // A monitoring agent's container binds kubelet's root with CRI's default propagation
    // (private); app's bind of its own volume is no root and is not flagged.
    let k = kubelet.as_str();
    cri.run_container(&pod_id, "agent", &[(k, "/host/kubelet")]);
    let mut args = vec!["doctor"];
    let extra = cri_args(&cri, &kubelet);
    args.extend(extra.iter().map(String::as_str));
    let (code, doc) = sb.mntreap_json(&args, &[]);
    assert_eq!(code, 1, "{doc}");
    let identity = doctor_check(&doc, "runtime-identity");
    assert_eq!(identity["status"], "ok", "{identity}");
    assert!(
        identity["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("containerd is pid {}", cri.pid())),
        "{identity}"
    );
    let binds = doctor_check(&doc, "data-root-bind-propagation");
    assert_eq!(binds["status"], "warning", "{binds}");
    let evidence = binds["evidence"].to_string();
    assert!(
        evidence.contains("agent (pod default/web) binds") && evidence.contains(k),
        "{binds}"
    );
    assert!(
        !evidence.contains("app (pod"),
        "app binds only its own volume: {binds}"
    );
    let holders = doctor_check(&doc, "foreign-namespace-holders");
    assert_ne!(holders["status"], "ok", "{holders}");
    assert!(
        holders["evidence"]
            .to_string()
            .contains(&ns_inode(holder).to_string()),
        "{holders}"
    );
}

/// What deploy/kubernetes/daemonset-containerd.yaml gives its container: command, args,
/// env, the capabilities added and the exec probes' commands (the file is read, not
/// restated).
struct DaemonSetSpec {
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    caps: Vec<String>,
    probes: Vec<Vec<String>>,
    host_network: bool,
}

fn daemonset_spec(file: &str) -> DaemonSetSpec {
    let text = std::fs::read_to_string(format!(
        "{}/deploy/kubernetes/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let list = |l: &str| -> Vec<String> {
        let inner = l.split_once('[').unwrap().1.rsplit_once(']').unwrap().0;
        inner
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    let mut spec = DaemonSetSpec {
        command: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        caps: Vec::new(),
        probes: Vec::new(),
        host_network: false,
    };
    let mut section = "";
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let t = line.trim();
        match t {
            "args:" | "env:" => section = if t == "args:" { "args" } else { "env" },
            _ if t.starts_with("command:") => spec.command = list(t),
            _ if t.starts_with("add:") => spec.caps = list(t),
            _ if t.starts_with("livenessProbe:") || t.starts_with("readinessProbe:") => {
                assert!(t.contains("exec: {command:"), "an exec probe: {t}");
                spec.probes.push(list(t));
            }
            "hostNetwork: true" => spec.host_network = true,
            _ if t.starts_with("- ") && section == "args" => spec.args.push(t[2..].to_string()),
            _ if t.starts_with("- {name:") && section == "env" => {
                let name = t
                    .split("name:")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .trim();
                let value = t
                    .split("value:")
                    .nth(1)
                    .unwrap()
                    .trim()
                    .trim_end_matches('}');
                spec.env
                    .push((name.to_string(), value.trim().trim_matches('"').to_string()));
            }
            _ => section = "",
        }
    }
    spec
}

/// Both DaemonSets keep metrics on the node's loopback, and both probes ask the health
/// socket, which lives in the container's own filesystem (not the hook's shared directory).
fn assert_unstarvable_probes(file: &str, spec: &DaemonSetSpec) {
    assert!(spec.host_network, "{file}");
    assert!(
        spec.args
            .contains(&"--metrics-addr=127.0.0.1:9477".to_string()),
        "{file}: {:?}",
        spec.args
    );
    assert_eq!(spec.probes.len(), 2, "{file}: liveness and readiness");
    let health = spec
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--health-socket="))
        .unwrap_or_else(|| panic!("{file}: a --health-socket"));
    assert!(!health.starts_with("/run/mntreap/"), "{file}: {health}");
    for p in &spec.probes {
        assert_eq!(p[..2], ["/mntreap", "probe"], "{file}: {p:?}");
        assert!(p.contains(&format!("--socket={health}")), "{file}: {p:?}");
    }
}

#[test]
fn the_docker_daemonset_probes_what_a_flood_cannot_reach() {
    assert_unstarvable_probes("daemonset.yaml", &daemonset_spec("daemonset.yaml"));
}

#[test]
fn the_containerd_daemonset_runs_the_agent_image_under_cri_and_sweeps() {
    let spec = daemonset_spec("daemonset-containerd.yaml");
    assert_unstarvable_probes("daemonset-containerd.yaml", &spec);
    assert_eq!(spec.command, ["/mntreap", "agent"]);
    assert!(
        spec.args.contains(&"--host-root=/proc/1/root".to_string()),
        "{:?}",
        spec.args
    );
    assert!(
        spec.env
            .iter()
            .any(|(k, v)| k == "MNTREAP_RUNTIME" && v == "cri"),
        "{:?}",
        spec.env
    );

    let mut sb = Sandbox::new("cridaemonset");
    let cri = CriDaemon::start(&sb, "daemonset");
    // kubelet's root on the machine's disk (the agent sees the host through /proc/1/root).
    let kubelet = format!("{}/kubelet", cri.d());
    let pod = Pod::new("web", UID, &kubelet);
    let vol = pod.empty_dir("data");
    sb.sh(&format!("mkdir -p {vol} && mount -t tmpfs kvol {vol}"));
    let pod_id = cri.run_pod(&pod);
    let app = cri.run_container(&pod_id, "app", &[(&vol, "/data")]);
    let holder = sb.holder(None, None);
    let rootfs = format!(
        "{}/io.containerd.runtime.v2.task/k8s.io/{app}/rootfs",
        cri.state()
    );
    assert!(has_mount_at(holder, &rootfs) && has_mount_at(holder, &vol));

    // The image the repository builds, imported as the DaemonSet's comment says.
    let tar = format!("{}/agent.tar", cri.d());
    let tag = format!("mntreap/agent:ds-{}", std::process::id());
    build_agent_image(&tar, &tag);
    cri.ctr_ok(&["images", "import", &tar]);

    // The DaemonSet's pod: hostPID, its args (a test port and a 1 s sweep), its env with
    // this node's socket and kubelet root, its capabilities and nothing else.
    let mut agent_pod = Pod::new(
        "mntreap-agent",
        "dddddddd-0000-4000-8000-00000000000d",
        &kubelet,
    );
    agent_pod.namespace = "kube-system".into();
    agent_pod.host_pid = true;
    let agent_pod_id = cri.run_pod(&agent_pod);
    let port = free_port();
    let hook_dir = format!("{}/hook", cri.d());
    std::fs::create_dir_all(&hook_dir).unwrap();
    // On this machine pid 1's root refuses every process, even root with all capabilities
    // (EACCES on /proc/1/root), so the sandbox's first process plays the node's pid 1.
    let args: Vec<String> = spec
        .args
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--sweep-interval", _)) => "--sweep-interval=1".to_string(),
            Some(("--metrics-addr", _)) => format!("--metrics-addr=127.0.0.1:{port}"),
            Some(("--host-root", "/proc/1/root")) => {
                format!("--host-root=/proc/{}/root", sb.host_pid())
            }
            _ => a.clone(),
        })
        .collect();
    let env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "CONTAINER_RUNTIME_ENDPOINT" => (k.clone(), cri.endpoint()),
            "MNTREAP_KUBELET_ROOT" => (k.clone(), kubelet.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Its log says what each sweep did, should this test fail.
    env.push(("RUST_LOG", "mntreap=debug"));
    let caps: Vec<&str> = spec.caps.iter().map(String::as_str).collect();
    let command: Vec<&str> = spec.command.iter().map(String::as_str).collect();
    let agent = cri.run_spec(
        &agent_pod_id,
        "agent",
        &format!("docker.io/{tag}"),
        &[(&hook_dir, "/run/mntreap")],
        &command,
        &args,
        &env,
        &caps,
    );
    wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || !has_mount_at(holder, &rootfs) && !has_mount_at(holder, &vol),
        || {
            let metrics = {
                use std::io::{Read, Write};
                let mut m = String::new();
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                    let _ = c.read_to_string(&mut m);
                }
                m
            };
            format!(
                "the agent's sweeps left the holder's copies (agent container {:?}); \
                 metrics:\n{metrics}\nlog:\n{}",
                cri.container_exit(&agent),
                std::fs::read_to_string(format!("{}/logs/{}/agent.log", cri.d(), agent_pod.uid))
                    .unwrap_or_default()
            )
        },
    );
    // containerd's and kubelet's own mounts stay; the agent still runs.
    assert!(has_mount_at(sb.host_pid(), &rootfs) && has_mount_at(sb.host_pid(), &vol));
    assert_eq!(
        cri.container_exit(&agent).0,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    // The probes, run as kubelet runs them (ExecSync in the agent's container), pass.
    for probe in &spec.probes {
        let (code, out, err) = cri.exec_sync(&agent, probe, 5);
        assert_eq!(code, 0, "probe {probe:?}: {out} {err}");
        assert_eq!(out, "ok\n", "probe {probe:?}: {err}");
    }
}

#[test]
fn a_namespace_in_the_pods_own_cgroup_is_the_pods() {
    // A namespace whose processes kubelet's cgroups place in the pod (a container started
    // after the list, or a namespace nested in a container: DinD, buildkit) holds the
    // pod's mounts as its own; an outsider's namespace does not.
    let mut sb = Sandbox::new("cricgroup");
    let cri = CriDaemon::start(&sb, "cgroup");
    let (_pod_id, app, outsider, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let nested = nested_in_pod(&mut sb, &app);
    let (code, report) = run_json(&sb, &["scan"], &cri_args(&cri, &kubelet));
    assert_eq!(code, 1, "{report}");
    let in_ns = |pid: i32| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["mnt_ns"] == ns_inode(pid))
            .count()
    };
    assert!(
        in_ns(outsider) > 0,
        "the outsider's copies are findings: {report}"
    );
    assert_eq!(
        in_ns(nested),
        0,
        "the pod's own namespace is no finding: {report}"
    );
    assert!(has_mount_at(nested, &vol));
    // release POD spares it too, and frees the outsider.
    let (code, rel) = run_json(&sb, &["release", "default/web"], &cri_args(&cri, &kubelet));
    assert_eq!(code, 0, "{rel}");
    assert!(
        has_mount_at(nested, &vol),
        "the nested namespace keeps the pod's volume: {rel}"
    );
    assert!(!has_mount_at(outsider, &vol), "{rel}");
    // Out of the pod's cgroup before the pod goes, so that its cgroup can be removed.
    sb.kill_holder(nested);
}

#[test]
fn a_pods_network_namespace_file_copy_is_released() {
    // A pod with its own network namespace (CNI): containerd binds it at
    // /var/run/netns/cni-*; a namespace copied after holds that file, and the pod's
    // netns stays busy until it is released.
    let mut sb = Sandbox::new("crinetns");
    let cri = CriDaemon::start(&sb, "netns");
    cri.enable_cni();
    let kubelet = format!("{}/kubelet", sb.d());
    let mut pod = Pod::new("net", "eeeeeeee-0000-4000-8000-00000000000e", &kubelet);
    pod.pod_network = true;
    let pod_id = cri.run_pod(&pod);
    let holder = sb.holder(None, None);
    let netns: Vec<String> = mounts_of(holder)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("/run/netns/cni-"))
        .collect();
    let (code, doc) = run_json(&sb, &["scan", &pod.uid], &cri_args(&cri, &kubelet));
    assert_eq!(code, 1, "{doc}");
    let paths = doc["containers"][0]["paths"].to_string();
    let mine: Vec<&String> = netns
        .iter()
        .filter(|p| paths.contains(p.as_str()))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "the pod's netns file is a target: {paths} / {netns:?}"
    );
    let (code, rel) = run_json(&sb, &["release", &pod_id], &cri_args(&cri, &kubelet));
    assert_eq!(code, 0, "{rel}");
    assert!(!has_mount_at(holder, mine[0]), "{rel}");
    assert!(
        has_mount_at(sb.host_pid(), mine[0]),
        "containerd's own netns file stays"
    );
}

#[test]
fn a_subpath_onto_the_root_of_a_node_tmpfs_never_makes_the_nodes_tmpfs_the_pods() {
    // A pod allowed hostPath mounts `hostPath: /dev` with `subPath: shm`: kubelet binds the
    // root of the node's /dev/shm tmpfs under the pod's volume-subpaths, a target of its
    // sandbox. Services that copied the node's mounts hold that tmpfs as their own
    // /dev/shm: no sweep, no preStop hook and no `release POD` may take it from them.
    let mut sb = Sandbox::new("crisubpath");
    let cri = CriDaemon::start(&sb, "subpath");
    let d = sb.d();
    let kubelet = format!("{d}/kubelet");
    let node_shm = format!("{d}/node/dev/shm");
    let subpath = format!("{kubelet}/pods/{UID}/volume-subpaths/host/app/0");
    sb.sh(&format!(
        "mkdir -p {node_shm} {subpath} && mount -t tmpfs nodeshm {node_shm} && \
         echo node > {node_shm}/marker && mount --bind {node_shm} {subpath}"
    ));
    let hook_dir = format!("{}/hook", cri.d());
    std::fs::create_dir_all(&hook_dir).unwrap();
    let bin = static_binary();
    let pod = Pod::new("web", UID, &kubelet);
    let pod_id = cri.run_pod(&pod);
    let script = "while [ ! -e /run/mntreap/go ]; do sleep 0.1; done; \
                  /mntreap hook pre-stop >/run/mntreap/out 2>/run/mntreap/err; \
                  echo $? >/run/mntreap/rc; exec sleep 3600";
    cri.run_container_with(
        &pod_id,
        "app",
        &[
            (&subpath, "/hostshm"),
            (&bin, "/mntreap"),
            (&hook_dir, "/run/mntreap"),
        ],
        &["/bin/sh", "-c", script],
    );
    // A service made now (PrivateTmp-style: it copies every mount), and one that also
    // binds the node's tmpfs at a path of its own (a hostIPC pod's /dev/shm).
    let service = |sb: &mut Sandbox| {
        let plain = sb.holder(None, None);
        let own_path = sb.holder(
            Some(&format!(
                "mkdir -p {d}/svc-$$ && mount --bind {node_shm} {d}/svc-$$ && exec sleep 3600"
            )),
            None,
        );
        (plain, own_path)
    };
    let keeps_the_nodes_tmpfs = |(plain, own_path): (i32, i32), after: &str| {
        assert!(
            has_mount_at(plain, &node_shm),
            "{after}: the service lost the node's tmpfs"
        );
        assert!(
            has_mount_at(own_path, &node_shm)
                && has_mount_at(own_path, &format!("{d}/svc-{own_path}")),
            "{after}: the other service lost the node's tmpfs"
        );
    };

    // `scan POD` and `release POD --dry-run` name no holder of the node's tmpfs, and say
    // why identity was refused.
    let svc = service(&mut sb);
    let (_, doc) = run_json(&sb, &["scan", "default/web"], &cri_args(&cri, &kubelet));
    // (The pod's containers hold their rootfs as their own root, role `container`.)
    for h in holders(&doc).iter().filter(|h| h["role"] != "container") {
        let point = h["mount_point"].as_str().unwrap_or_default();
        assert!(
            point.starts_with(&kubelet) || point.starts_with(&cri.d()),
            "a holder outside the pod's paths: {h}"
        );
    }
    assert!(
        doc.to_string().contains("not private to the target")
            || doc.to_string().contains("by path only"),
        "the refusal is said: {doc}"
    );
    let (_, plan) = run_json(
        &sb,
        &["release", "--dry-run", "default/web"],
        &cri_args(&cri, &kubelet),
    );
    assert!(
        !plan.to_string().contains(&format!("{d}/svc-"))
            && !plan.to_string().contains(&format!("\"{node_shm}\"")),
        "the plan touches the node's tmpfs: {plan}"
    );
    keeps_the_nodes_tmpfs(svc, "scan and dry run");

    // An agent sweeping every second: it releases the service's copy of the subPath bind
    // (a leak at the pod's own path), and nothing of the node's tmpfs.
    let socket = format!("{hook_dir}/hook.sock");
    spawn_agent(&mut sb, &cri, &kubelet, 1, &socket);
    wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || !has_mount_at(svc.0, &subpath),
        || "the sweep never released the service's copy of the subPath".into(),
    );
    // Two more sweeps, to be sure none takes the tmpfs later.
    std::thread::sleep(std::time::Duration::from_secs(2));
    keeps_the_nodes_tmpfs(svc, "sweeps");

    // The pod's own preStop hook.
    let svc = service(&mut sb);
    std::fs::write(format!("{hook_dir}/go"), "").unwrap();
    let rc = format!("{hook_dir}/rc");
    wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || std::path::Path::new(&rc).exists(),
        || "the hook never finished".into(),
    );
    let err = std::fs::read_to_string(format!("{hook_dir}/err")).unwrap_or_default();
    assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0", "{err}");
    keeps_the_nodes_tmpfs(svc, "the preStop hook");

    // `release POD`.
    let svc = service(&mut sb);
    let (code, rel) = run_json(&sb, &["release", "default/web"], &cri_args(&cri, &kubelet));
    assert!(code == 0 || code == 1, "{rel}");
    keeps_the_nodes_tmpfs(svc, "release POD");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/root{node_shm}/marker", sb.host_pid())).unwrap(),
        "node\n"
    );
    let _ = pod_id;
}

/// A cgroup of the test's own in the pids hierarchy, removed when dropped: declare it
/// before the sandbox, so that the sandbox's processes are gone by then.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/pids/mntreap-test-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TestCgroup(dir)
    }

    fn procs(&self) -> String {
        format!("{}/cgroup.procs", self.0.display())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

#[test]
fn an_agent_in_a_private_cgroup_namespace_spares_a_namespace_nested_in_a_pod() {
    // In a private cgroup namespace (every non-privileged container on cgroup v2, the
    // DaemonSet's agent among them) kubelet's cgroups read `/../kubepods/...`: the rule that
    // spares a namespace nested in a pod must still see them, as the host names them.
    let cg = TestCgroup::new("cgns");
    let mut sb = Sandbox::new("cricgns");
    let cri = CriDaemon::start(&sb, "cgns");
    let (_pod_id, app, outsider, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let nested = nested_in_pod(&mut sb, &app);
    // mntreap moves into the test's cgroup, then into a cgroup namespace rooted there.
    let in_private_cgroupns = |args: &str| {
        format!(
            "echo $$ > {} && exec unshare -C {BIN} {args} --cri-endpoint {} --kubelet-root {kubelet}",
            cg.procs(),
            cri.endpoint()
        )
    };
    let port = free_port();
    let agent = sb.spawn_in(&[
        "sh",
        "-c",
        &in_private_cgroupns(&format!(
            "agent --sweep-interval 1 --metrics-addr 127.0.0.1:{port} --hook-socket {}/hook.sock",
            cri.d()
        )),
    ]);
    wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || !has_mount_at(outsider, &vol),
        || "the sweep never released the outsider's copy".into(),
    );
    let cgroupns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).ok();
    assert_ne!(
        cgroupns(agent),
        cgroupns(std::process::id() as i32),
        "the agent runs in a cgroup namespace of its own"
    );
    // More sweeps: none may take the nested namespace's volume.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        has_mount_at(nested, &vol),
        "a namespace nested in the pod lost the pod's volume to a sweep"
    );
    // `release POD` from such a namespace keeps it too.
    let out = sb.sh_output(&in_private_cgroupns("release --json default/web"));
    let rel = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{rel}{}", stderr(&out));
    assert!(has_mount_at(nested, &vol), "release POD took it: {rel}");
    assert!(
        rel.contains("kubelet's cgroups place its processes in app's container or pod"),
        "{rel}"
    );
    sb.kill_holder(nested);
}

#[test]
fn what_scan_says_of_a_pod_is_what_release_does() {
    // A pod, a namespace nested in its container (kubelet's cgroups place it there) and an
    // outsider that copied the pod's mounts: `scan POD --json` shows, per holder, the action
    // that `release POD --dry-run` plans and `release POD` takes; the nested namespace's
    // mounts are the pod's own (role container, action keep), never "leaked".
    let mut sb = Sandbox::new("criagree");
    let cri = CriDaemon::start(&sb, "agree");
    let (_pod_id, app, outsider, kubelet, vol) = pod_with_a_leak(&mut sb, &cri);
    let nested = nested_in_pod(&mut sb, &app);
    let args = cri_args(&cri, &kubelet);
    let (code, scan) = run_json(&sb, &["scan", "default/web"], &args);
    assert_eq!(code, 1, "the outsider's copies are leaks: {scan}");
    let shown = scan_actions(&scan);
    for h in holders(&scan)
        .iter()
        .filter(|h| h["mnt_ns"] == ns_inode(nested))
    {
        assert_eq!(
            h["role"], "container",
            "the nested namespace is the pod's: {h}"
        );
        assert_eq!(h["action"], "keep", "{h}");
    }
    assert!(
        shown
            .iter()
            .any(|((ns, _), a)| *ns == ns_inode(outsider) && a == "unmount"),
        "{scan}"
    );
    let (_, plan) = run_json(&sb, &["release", "--dry-run", "default/web"], &args);
    let (code, done) = run_json(&sb, &["release", "default/web"], &args);
    assert_eq!(code, 0, "{done}");
    assert_scan_is_release(&scan, &plan, &done);
    assert!(has_mount_at(nested, &vol) && !has_mount_at(outsider, &vol));
    sb.kill_holder(nested);
}

#[test]
fn a_csi_volume_copied_by_an_agent_pod_is_freed_and_a_running_pods_volume_kept() {
    // The field's case (a privileged agent that binds kubelet's directory keeps a CSI
    // volume's globalmount): a loop-backed ext4 staged at kubelet's globalmount and
    // published into pod db's volume directory (kubelet's binds), used by container `db`
    // at /data; container `agent` of another pod binds kubelet's root (private, as a
    // `hostPath` without mountPropagation) and so carries copies of both.
    let mut sb = Sandbox::new("cri-csi");
    let cri = CriDaemon::start(&sb, "csi");
    let kubelet = format!("{}/kubelet", sb.d());
    let args = cri_args(&cri, &kubelet);
    let dev = sb.loop_ext4("pv");
    let db_pod = Pod::new("db", UID, &kubelet);
    let global = format!("{kubelet}/plugins/kubernetes.io/csi/csi.test/0a1b/globalmount");
    let volume = format!("{kubelet}/pods/{UID}/volumes/kubernetes.io~csi/pv-1/mount");
    sb.sh(&format!(
        "mkdir -p {global} {volume} && mount {dev} {global} && mount --bind {global} {volume}"
    ));
    let db_sandbox = cri.run_pod(&db_pod);
    let db = cri.run_container(&db_sandbox, "db", &[(&volume, "/data")]);
    let agent_pod = Pod::new("agent", "9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d", &kubelet);
    let agent_sandbox = cri.run_pod(&agent_pod);
    let agent = cri.run_container(&agent_sandbox, "agent", &[(&kubelet, "/host/kubelet")]);
    let (db_pid, agent_pid) = (cri.container_pid(&db), cri.container_pid(&agent));
    let copies = [
        "/host/kubelet/plugins/kubernetes.io/csi/csi.test/0a1b/globalmount".to_string(),
        format!("/host/kubelet/pods/{UID}/volumes/kubernetes.io~csi/pv-1/mount"),
    ];
    for c in &copies {
        assert!(has_mount_at(agent_pid, c), "the agent should carry {c}");
    }

    // While db runs: its /data and kubelet's mounts are uses, so the agent's copies would
    // free nothing and stay too.
    let (code, scan) = run_json(&sb, &["scan", "--device", &dev], &args);
    assert_eq!(code, 1, "{scan:#}");
    let decision = |pid: i32, point: &str| decision(&scan, ns_inode(pid), point);
    let (action, reason) = decision(db_pid, "/data");
    assert_eq!(action, "keep", "{scan:#}");
    assert!(
        reason.contains("container db of pod default/db mounted it at /data"),
        "{reason}"
    );
    for c in &copies {
        let (action, reason) = decision(agent_pid, c);
        assert_eq!(action, "keep", "{scan:#}");
        assert!(reason.contains("would free nothing"), "{reason}");
    }
    assert_eq!(decision(sb.host_pid(), &global).0, "keep", "{scan:#}");
    // The pod's volume by its name (the PV's, for CSI) is the same device, decided alike.
    let (code, by_name) = run_json(&sb, &["scan", "default/db", "--volume", "pv-1"], &args);
    assert_eq!(code, 1, "{by_name:#}");
    assert_eq!(by_name["devices"], scan["devices"], "{by_name:#}");
    let actions = |doc: &serde_json::Value| -> BTreeSet<(u64, u64, String)> {
        holders(doc)
            .iter()
            .map(|h| {
                (
                    h["mnt_ns"].as_u64().unwrap(),
                    h["mount_id"].as_u64().unwrap(),
                    h["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(actions(&by_name), actions(&scan));
    let (code, missing) = run_json(&sb, &["release", "default/db", "--volume", "pv-2"], &args);
    assert_eq!(code, 2, "{missing:#}");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("has no volume pv-2"),
        "{missing:#}"
    );

    // The pod goes, kubelet unpublishes and unstages (its unmounts on the node succeed),
    // and the device stays busy: the agent's copies hold it.
    cri.stop_pod(&db_sandbox).unwrap();
    cri.remove_pod(&db_sandbox).unwrap();
    sb.sh(&format!("umount {volume} && umount {global}"));
    let open_excl = || open_excl(&dev);
    let err = open_excl().expect_err("the agent's copies keep the device busy");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    // The node report names the device, its copies and what release --device does.
    let (code, node) = run_json(&sb, &["scan"], &args);
    assert_eq!(code, 1, "{node:#}");
    assert_documented(node.to_string().as_bytes());
    let minor = std::fs::read_to_string(format!(
        "/sys/class/block/{}/dev",
        dev.trim_start_matches("/dev/")
    ))
    .unwrap();
    let entry = node["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dev"] == minor.trim())
        .unwrap_or_else(|| panic!("no {dev} in the node report: {node:#}"));
    assert_eq!(node["summary"]["devices_held"], 1, "{node:#}");
    assert!(
        entry["volume"].as_str().unwrap().contains("pv-1")
            || entry["volume"].as_str().unwrap().contains("csi.test"),
        "{entry:#}"
    );
    let points: BTreeSet<(String, String)> = entry["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["mount_point"].as_str().unwrap().into(),
                h["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let wanted: BTreeSet<(String, String)> = copies
        .iter()
        .map(|c| (c.clone(), "unmount".to_string()))
        .collect();
    assert_eq!(points, wanted, "{entry:#}");
    let npd = sb.mntreap(
        &[
            &["scan", "--npd"][..],
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    assert_eq!(npd.status.code(), Some(1), "{}", stderr(&npd));
    assert!(
        String::from_utf8_lossy(&npd.stdout).contains("1 block device(s) held by copies"),
        "{}",
        String::from_utf8_lossy(&npd.stdout)
    );
    let (code, rel) = run_json(&sb, &["release", "--device", &dev], &args);
    assert_eq!(code, 0, "{rel:#}");
    for c in &copies {
        assert!(!has_mount_at(agent_pid, c), "{c} should be gone: {rel:#}");
    }
    assert!(
        has_mount_at(agent_pid, "/host/kubelet"),
        "the agent's own bind stays"
    );
    open_excl().expect("the device is free: the CSI driver can detach it");
}
