//! mntreap speaking Docker, against a real private dockerd (issue 3's scenarios).

mod common;

use common::docker::DockerDaemon;
use common::*;
use serde_json::Value;

fn roles(doc: &Value) -> Vec<(u64, String)> {
    let mut r: Vec<(u64, String)> = holders(doc)
        .iter()
        .map(|h| {
            (
                h["mnt_ns"].as_u64().unwrap(),
                h["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    r.sort();
    r
}

#[test]
fn privatetmp_leak_released_and_exec_still_works() {
    let mut sb = Sandbox::new("dk-privatetmp");
    let dk = DockerDaemon::start(&sb, "privatetmp", false, &[]);
    let id = dk.run("web");
    let merged = dk.merged("web");
    // A service with PrivateTmp starts now: its namespace copies the container's layer.
    let service = sb.holder(None, None);
    assert!(has_mount_at(service, &merged));
    let host = dk.host();

    let (code, doc) = sb.mntreap_json(&["scan", "web", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["runtime"]["via"], "api");
    assert_eq!(doc["containers"][0]["id"], id.as_str());
    assert_eq!(doc["containers"][0]["state"], "running");
    let container_pid: i32 = dk
        .docker_ok(&["inspect", "web", "--format", "{{.State.Pid}}"])
        .parse()
        .unwrap();
    let expected = {
        let mut v = vec![
            (ns_inode(sb.host_pid()), "runtime".to_string()),
            (ns_inode(service), "leaked".to_string()),
            (ns_inode(container_pid), "container".to_string()),
        ];
        v.sort();
        v
    };
    assert_eq!(roles(&doc), expected, "{doc:#}");
    for h in holders(&doc) {
        assert_eq!(h["container"]["name"], "web");
    }

    // Offline resolution from the data root agrees with the daemon's.
    let (code_off, offline) = sb.mntreap_json(
        &[
            "scan",
            "web",
            "--offline",
            "--docker-root",
            &dk.root(),
            "--docker-host",
            &host,
        ],
        &[],
    );
    assert_eq!(code_off, code);
    assert_eq!(offline["runtime"]["via"], "data-root");
    assert_eq!(offline["containers"], doc["containers"]);
    assert_eq!(roles(&offline), roles(&doc));

    // --dry-run plans the release and changes nothing.
    let (code, plan) = sb.mntreap_json(
        &["release", "web", "--dry-run", "--docker-host", &host],
        &[],
    );
    assert_eq!(code, 1, "{plan:#}");
    let plan = &plan["releases"][0];
    assert_eq!(
        namespace_entry(plan, ns_inode(service))["actions"][0]["result"],
        "would-unmount",
        "{plan:#}"
    );
    assert!(has_mount_at(service, &merged));

    // The node-wide report names the service's namespace.
    let (code, node) = sb.mntreap_json(&["scan", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{node:#}");
    let findings = node["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{node:#}");
    assert_eq!(findings[0]["class"], "leaked");
    assert_eq!(findings[0]["mnt_ns"].as_u64(), Some(ns_inode(service)));
    assert_eq!(findings[0]["container"]["name"], "web");
    // why CONTAINER: each filesystem of web's mounts, with the service's copy among the
    // reasons its rootfs is busy, the one mntreap releases.
    let (code, why) = sb.mntreap_json(&["why", "web", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{why:#}");
    let rootfs = why["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["target"]
                .as_str()
                .unwrap()
                .ends_with(&format!(" {merged}"))
        })
        .unwrap_or_else(|| panic!("no target for web's rootfs: {why:#}"));
    assert!(
        rootfs["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "mount"
                && r["mnt_ns"].as_u64() == Some(ns_inode(service))
                && r["releasable"] == true),
        "{why:#}"
    );
    // As a node-problem-detector plugin: one line, exit 1 (problem).
    let npd = sb.mntreap(&["scan", "--npd", "--docker-host", &host]);
    let line = String::from_utf8_lossy(&npd.stdout);
    assert_eq!(npd.status.code(), Some(1), "{line}{}", stderr(&npd));
    assert_eq!(
        line,
        "problem: 1 leaked, 0 orphaned container mounts (mntreap scan)\n"
    );
    assert!(line.len() <= 80, "the detector's default output limit");

    let out = sb.mntreap(&["release", "web", "--docker-host", &host]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let npd = sb.mntreap(&["scan", "--npd", "--docker-host", &host]);
    assert_eq!(
        (
            npd.status.code(),
            String::from_utf8_lossy(&npd.stdout).as_ref()
        ),
        (Some(0), "ok: no leaked or orphaned container mounts\n"),
        "{}",
        stderr(&npd)
    );
    assert!(
        !has_mount_at(service, &merged),
        "the service's copy is released"
    );
    assert!(
        has_mount_at(sb.host_pid(), &merged),
        "dockerd's copy stays while web runs"
    );
    assert_eq!(
        dk.docker_ok(&["exec", "web", "echo", "still-works"]),
        "still-works"
    );
    let (code, _) = sb.mntreap_json(&["scan", "web", "--docker-host", &host], &[]);
    assert_eq!(code, 0);
    let (code, node) = sb.mntreap_json(&["scan", "--docker-host", &host], &[]);
    assert_eq!(
        (code, node["findings"].as_array().unwrap().len()),
        (0, 0),
        "{node:#}"
    );
}

#[test]
fn offline_when_dockerd_is_down() {
    let mut sb = Sandbox::new("dk-offline");
    let mut dk = DockerDaemon::start(&sb, "offline", true, &[]);
    dk.run("db");
    let merged = dk.merged("db");
    let service = sb.holder(None, None);
    dk.kill9();
    let host = dk.host();
    let root = dk.root();

    let (code, doc) = sb.mntreap_json(
        &["scan", "db", "--docker-host", &host, "--docker-root", &root],
        &[],
    );
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        doc["runtime"]["via"], "data-root",
        "fell back to the data root: {doc:#}"
    );
    assert!(doc["runtime"]["offline_reason"].as_str().is_some());
    assert_eq!(
        doc["containers"][0]["state"], "running",
        "live-restore kept it"
    );
    assert!(
        roles(&doc).contains(&(ns_inode(service), "leaked".to_string())),
        "{doc:#}"
    );
    assert!(
        holders(&doc).iter().all(|h| h["container"]["name"] == "db"),
        "every holder attributed: {doc:#}"
    );

    let out = sb.mntreap(&[
        "release",
        "db",
        "--docker-host",
        &host,
        "--docker-root",
        &root,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!has_mount_at(service, &merged));
    assert!(
        has_mount_at(sb.host_pid(), &merged),
        "the running container's copy stays"
    );
}

#[test]
fn stuck_removal_is_reaped() {
    let mut sb = Sandbox::new("dk-reap");
    let dk = DockerDaemon::start(&sb, "reap", false, &[]);
    dk.run("stuck");
    let merged = dk.merged("stuck");
    let upper = dk.upper("stuck");
    dk.docker_ok(&["exec", "stuck", "touch", "/pinned-file"]);
    // An agent that sees the layer at another path. (A copy at the layer's own path would
    // be detached by the kernel (>= 3.18) when dockerd removes the merged directory.)
    let view = format!("{}/agent-view", sb.d());
    let service = sb.holder(
        Some(&format!(
            "mkdir -p {view} && mount --bind {merged} {view} && exec sleep 3600"
        )),
        None,
    );
    let pinned = format!("{upper}/pinned-file");
    assert!(
        std::process::Command::new("chattr")
            .args(["+i", &pinned])
            .status()
            .unwrap()
            .success()
    );
    let rm = dk.docker(&["rm", "-f", "stuck"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("operation not permitted"));
    let state = dk.docker_ok(&["inspect", "stuck", "--format", "{{.State.Status}}"]);
    assert!(state == "dead" || state == "removing", "{state}");
    let host = dk.host();
    // Node-wide: the agent's copy of a Dead container's layer is orphaned; doctor agrees.
    let (code, node) = sb.mntreap_json(&["scan", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{node:#}");
    let f = &node["findings"][0];
    assert_eq!(
        (f["class"].as_str(), f["mount_point"].as_str()),
        (Some("orphaned"), Some(view.as_str())),
        "{node:#}"
    );
    assert_eq!(f["container"]["name"], "stuck");
    let (code, doctor) = sb.mntreap_json(&["doctor", "--docker-host", &host], &[]);
    assert_eq!(code, 1);
    let check = |id: &str| doctor_check(&doctor, id);
    assert_eq!(check("stuck-containers")["status"], "problem", "{doctor:#}");
    assert_eq!(
        check("foreign-namespace-holders")["status"],
        "problem",
        "{doctor:#}"
    );
    assert_eq!(check("kernel-lazy-detach")["status"], "ok");

    let (code, doc) = sb.mntreap_json(&["reap", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "still stuck: {doc:#}");
    let c = &doc["containers"][0];
    assert_eq!(c["container"]["name"], "stuck");
    assert!(
        c["removal"]["error"]
            .as_str()
            .unwrap()
            .contains("operation not permitted"),
        "{doc:#}"
    );
    let released: Vec<&Value> = c["release"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["mnt_ns"].as_u64() == Some(ns_inode(service)))
        .collect();
    assert_eq!(released.len(), 1, "{doc:#}");
    let action = released[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["mount_point"] == view.as_str())
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(action["result"], "unmounted");
    assert_eq!(action["match"], "identity");
    assert!(!has_mount_at(service, &view));

    assert!(
        std::process::Command::new("chattr")
            .args(["-i", &pinned])
            .status()
            .unwrap()
            .success()
    );
    let (code, doc) = sb.mntreap_json(&["reap", "--docker-host", &host], &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["containers"][0]["removal"]["removed"], true);
    assert!(dk.docker_ok(&["ps", "-aq"]).is_empty());
}

#[test]
fn bad_container_input_is_refused() {
    let sb = Sandbox::new("dk-bad");
    let dk = DockerDaemon::start(&sb, "bad", false, &[]);
    // 17 containers: two of them share a first id character.
    let ids: Vec<String> = (0..17)
        .map(|i| {
            dk.docker_ok(&[
                "create",
                "--name",
                &format!("c{i}"),
                "--network",
                "none",
                "bb",
                "true",
            ])
        })
        .collect();
    let prefix = (b'0'..=b'f')
        .map(|c| (c as char).to_string())
        .find(|p| ids.iter().filter(|id| id.starts_with(p.as_str())).count() >= 2)
        .unwrap();
    let host = dk.host();
    let before = mounts_of(sb.host_pid());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "scan".into(),
                "nosuch".into(),
                "--docker-host".into(),
                host.clone(),
            ],
            "no such container",
        ),
        (
            vec![
                "release".into(),
                prefix.clone(),
                "--docker-host".into(),
                host.clone(),
            ],
            "ambiguous",
        ),
        (
            vec![
                "release".into(),
                prefix.clone(),
                "--offline".into(),
                "--docker-root".into(),
                dk.root(),
            ],
            "ambiguous",
        ),
        (
            vec![
                "scan".into(),
                "c1".into(),
                "--docker-host".into(),
                "unix:///nonexistent/docker.sock".into(),
                "--docker-root".into(),
                "/nonexistent".into(),
            ],
            "cannot be read",
        ),
        (
            vec![
                "scan".into(),
                "c1".into(),
                "--docker-host".into(),
                "tcp://10.0.0.1:2375".into(),
            ],
            "unix socket",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.mntreap(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(mounts_of(sb.host_pid()), before);
    assert_eq!(dk.docker_ok(&["ps", "-aq"]).lines().count(), 17);
}

#[test]
fn mountflags_slave_with_live_restore_restart() {
    let sb = Sandbox::new("dk-slave");
    // systemd's MountFlags=slave: dockerd in its own namespace, a slave of the host's.
    sb.sh("mount --make-rshared /");
    let mut dk = DockerDaemon::start(&sb, "slave", true, &["-m", "--propagation", "slave"]);
    // Shareable IPC: each container's shm is a mount in dockerd's namespace.
    let app = dk.run_with("app", &["--ipc", "shareable"]);
    dk.run_with("bpp", &["--ipc", "shareable"]);
    let shm = format!("{}/containers/{app}/mounts/shm", dk.root());
    let old_ns = ns_inode(dk.pid());
    assert_ne!(old_ns, ns_inode(sb.host_pid()));
    dk.kill9();
    dk.spawn();
    let new_ns = ns_inode(dk.pid());
    assert_ne!(new_ns, old_ns, "the restart made a new namespace");
    let host = dk.host();
    assert_eq!(
        dk.docker_ok(&["inspect", "app", "--format", "{{.State.Status}}"]),
        "running"
    );

    let (code, doctor) = sb.mntreap_json(&["doctor", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{doctor:#}");
    let check = |id: &str| doctor_check(&doctor, id);
    assert_eq!(
        check("mountflags-slave-live-restore")["status"],
        "problem",
        "{doctor:#}"
    );
    let split = check("split-namespaces");
    assert_eq!(split["status"], "problem", "{doctor:#}");
    assert_eq!(
        split["evidence"].as_array().unwrap().len(),
        2,
        "two shims: {doctor:#}"
    );
    assert!(
        split["evidence"][0]
            .as_str()
            .unwrap()
            .contains(&old_ns.to_string())
    );

    // The old namespace, kept alive by the shims, still holds app's shm.
    let (code, doc) = sb.mntreap_json(&["scan", "app", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{doc:#}");
    let old: Vec<&Value> = holders(&doc)
        .iter()
        .filter(|h| h["mnt_ns"].as_u64() == Some(old_ns))
        .collect();
    assert_eq!(old.len(), 1, "{doc:#}");
    assert_eq!(old[0]["role"], "leaked");
    assert_eq!(old[0]["mount_point"], shm.as_str());
    let shim = old[0]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"].as_str().unwrap().starts_with("containerd-shim"))
        .unwrap_or_else(|| panic!("held by the shims: {doc:#}"))["pid"]
        .as_i64()
        .unwrap() as i32;
    let (code, node) = sb.mntreap_json(&["scan", "--docker-host", &host], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        node["summary"]["leaked"], 2,
        "both containers' shm: {node:#}"
    );

    let out = sb.mntreap(&["release", "app", "bpp", "--docker-host", &host]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !has_mount_at(shim, &shm),
        "the old namespace's copy is gone"
    );
    assert_eq!(
        dk.docker_ok(&["inspect", "app", "--format", "{{.State.Status}}"]),
        "running"
    );
    let (code, node) = sb.mntreap_json(&["scan", "--docker-host", &host], &[]);
    assert_eq!(code, 0, "{node:#}");
}

#[test]
fn a_hanging_daemon_means_offline_after_the_timeout() {
    let mut sb = Sandbox::new("dk-hang");
    let dk = DockerDaemon::start(&sb, "hang", false, &[]);
    dk.run("slow");
    let merged = dk.merged("slow");
    let service = sb.holder(None, None);
    // A socket that accepts connections and never answers, like a wedged dockerd.
    let hung = format!("{}/hung.sock", dk.d());
    let listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(8) {
            held.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let started = std::time::Instant::now();
    let (code, doc) = sb.mntreap_json(
        &[
            "scan",
            "slow",
            "--docker-host",
            &format!("unix://{hung}"),
            "--docker-root",
            &dk.root(),
            "--docker-timeout",
            "1",
        ],
        &[],
    );
    let took = started.elapsed();
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["runtime"]["via"], "data-root");
    assert!(
        doc["runtime"]["offline_reason"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{doc:#}"
    );
    assert!(took < std::time::Duration::from_secs(8), "took {took:?}");
    assert!(roles(&doc).contains(&(ns_inode(service), "leaked".to_string())));
    assert!(has_mount_at(service, &merged));
}

#[test]
fn a_pods_pause_shm_stays_in_its_other_containers() {
    // kubelet on Docker (dockershim, cri-dockerd): the pause container owns the pod's shm
    // and the app joins its IPC namespace, so the app's /dev/shm is a bind of the pause
    // container's shm. Releasing the pause container's copies, or sweeping, must spare the
    // app: it is of the same pod (kubelet's io.kubernetes.pod.uid label).
    let mut sb = Sandbox::new("dk-podshm");
    let dk = DockerDaemon::start(&sb, "podshm", false, &[]);
    let label = "io.kubernetes.pod.uid=5a5a5a5a-0000-4000-8000-000000000001";
    let pause = dk.run_with("pause", &["--ipc", "shareable", "--label", label]);
    dk.run_with("app", &["--ipc", "container:pause", "--label", label]);
    let service = sb.holder(None, None);
    let shm = format!("{}/containers/{pause}/mounts/shm", dk.root());
    assert!(has_mount_at(service, &shm));
    let app_pid: i32 = dk
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "app"])
        .parse()
        .unwrap();
    assert!(has_mount_at(app_pid, "/dev/shm"));

    let (code, doc) = sb.mntreap_json(&["release", "pause", "--docker-host", &dk.host()], &[]);
    assert_eq!(code, 0, "{doc}");
    assert!(
        !has_mount_at(service, &shm),
        "the service's copy goes: {doc}"
    );
    assert!(
        has_mount_at(app_pid, "/dev/shm"),
        "app keeps the pod's shm: {doc}"
    );
    let (_, scan) = sb.mntreap_json(&["scan", "pause", "--docker-host", &dk.host()], &[]);
    assert!(
        holders(&scan)
            .iter()
            .any(|h| h["mnt_ns"] == ns_inode(app_pid) && h["role"] == "container"),
        "{scan}"
    );
}

#[test]
fn what_scan_says_of_a_container_is_what_release_does() {
    // A running container, a PrivateTmp-style service holding its layer, and one whose
    // process works inside the copy: `scan CONTAINER --json` shows per holder the action
    // `release --dry-run` plans and `release` takes (keep the runtime's and the
    // container's own, unmount the leak, detach the pinned copy).
    let mut sb = Sandbox::new("dk-agree");
    let dk = DockerDaemon::start(&sb, "agree", false, &[]);
    dk.run("web");
    let merged = dk.merged("web");
    let leak = sb.holder(None, None);
    let pinned = sb.holder(Some(&format!("cd {merged} && exec sleep 3600")), None);
    let host = dk.host();
    let (code, scan) = sb.mntreap_json(&["scan", "web", "--docker-host", &host], &[]);
    assert_eq!(code, 1, "{scan:#}");
    let shown = scan_actions(&scan);
    let action_in = |pid: i32| {
        shown
            .iter()
            .filter(|((ns, _), _)| *ns == ns_inode(pid))
            .map(|(_, a)| a.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(action_in(leak), vec!["unmount"], "{scan:#}");
    assert_eq!(action_in(pinned), vec!["detach"], "{scan:#}");
    assert_eq!(action_in(sb.host_pid()), vec!["keep"], "{scan:#}");
    let (_, plan) = sb.mntreap_json(
        &["release", "web", "--dry-run", "--docker-host", &host],
        &[],
    );
    let (_, done) = sb.mntreap_json(&["release", "web", "--docker-host", &host], &[]);
    assert_scan_is_release(&scan, &plan, &done);
    assert!(!has_mount_at(leak, &merged) && !has_mount_at(pinned, &merged));
    assert!(has_mount_at(sb.host_pid(), &merged), "dockerd's copy stays");
}

#[test]
fn release_device_keeps_a_running_containers_volume_and_frees_the_copies() {
    // A CSI-like volume staged on the node, used by `db` at /data (a bind it asked for),
    // and copied into `agent` through its bind of kubelet's directory (Docker binds are
    // recursive and private). kubelet unstages it on the node; the device stays busy.
    // dockerd's records say where each container asked for its mounts: db's /data is a
    // use, so nothing goes while db runs (the agent's copy would free nothing); once db is
    // gone the agent's copy goes and the device is free.
    let mut sb = Sandbox::new("dk-device");
    let dk = DockerDaemon::start(&sb, "device", false, &[]);
    let d = sb.d();
    let dev = sb.loop_ext4("vol");
    let g = format!("{d}/kubelet/plugins/kubernetes.io/csi/drv/77/globalmount");
    sb.sh(&format!(
        "mkdir -p {g} && mount {dev} {g} && echo rows > {g}/table"
    ));
    dk.run_with("db", &["-v", &format!("{g}:/data")]);
    dk.run_with("agent", &["-v", &format!("{d}/kubelet:/host/kubelet")]);
    sb.sh(&format!("umount {g}"));
    let pid = |name: &str| -> i32 {
        dk.docker_ok(&["inspect", name, "--format", "{{.State.Pid}}"])
            .parse()
            .unwrap()
    };
    let (db, agent) = (pid("db"), pid("agent"));
    let copy = "/host/kubelet/plugins/kubernetes.io/csi/drv/77/globalmount";
    assert!(has_mount_at(agent, copy) && has_mount_at(db, "/data"));
    let host = dk.host();
    let kubelet = format!("{d}/kubelet");
    let args = |cmd: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--device".into(),
            dev.clone(),
            "--docker-host".into(),
            host.clone(),
            "--kubelet-root".into(),
            kubelet.clone(),
        ]);
        v
    };
    let run = |cmd: &[&'static str]| {
        let a = args(cmd);
        sb.mntreap_json(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };

    let (code, scan) = run(&["scan"]);
    assert_eq!(code, 1, "{scan:#}");
    let decision = |pid: i32, point: &str| decision(&scan, ns_inode(pid), point);
    let (action, reason) = decision(db, "/data");
    assert_eq!(action, "keep", "{scan:#}");
    assert!(
        reason.contains("container db mounted it at /data"),
        "{reason}"
    );
    let (action, reason) = decision(agent, copy);
    assert_eq!(action, "keep", "{scan:#}");
    assert!(reason.contains("would free nothing"), "{reason}");

    let (code, rel) = run(&["release"]);
    assert_eq!(code, 1, "db's volume remains: {rel:#}");
    assert!(
        has_mount_at(agent, copy),
        "a live volume's copy stays: {rel:#}"
    );
    assert!(has_mount_at(db, "/data"));
    assert_eq!(dk.docker_ok(&["exec", "db", "cat", "/data/table"]), "rows");

    dk.docker_ok(&["rm", "-f", "db"]);
    let (code, rel) = run(&["release"]);
    assert_eq!(code, 0, "{rel:#}");
    assert!(!has_mount_at(agent, copy), "{rel:#}");
    open_excl(&dev).expect("the device is free");
}
