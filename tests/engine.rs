//! The core engine against real namespaces and real mounts (issue 2's scenarios).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// Layer-like mounts in the sandbox: an overlay for `id` and tmpfs decoys whose names trap
/// prefix matching.
fn layers(sb: &Sandbox, id: &str) {
    let d = sb.d();
    sb.sh(&format!(
        "set -e; cd {d}; mkdir -p ovl/lower ovl/upper ovl/work l/{id}/merged l/{id}-init/merged \
         l/{id}0/merged 'l/sp ace/merged' l/other/merged; echo data > ovl/lower/file; \
         mount -t overlay layer-{id} -o lowerdir=ovl/lower,upperdir=ovl/upper,workdir=ovl/work l/{id}/merged; \
         for x in {id}-init {id}0 'sp ace' other; do mount -t tmpfs \"decoy-$x\" \"l/$x/merged\"; done"
    ));
}

/// A library-level request for `targets`, read from this process (the sandbox is then a
/// foreign namespace), trusting no namespace's view.
fn library_request(
    targets: Vec<std::path::PathBuf>,
    backend: mntreap::engine::source::Backend,
) -> mntreap::engine::scan::ScanRequest {
    mntreap::engine::scan::ScanRequest {
        targets,
        backend,
        proc_root: "/proc".into(),
        threads: 2,
        paths_only: false,
        devices: Vec::new(),
        layer_signatures: Vec::new(),
        trusted_namespaces: Vec::new(),
        no_identity: Vec::new(),
        runtime_pid: None,
    }
}

#[test]
fn scan_and_release_exactly_the_leaked_layer() {
    let mut sb = Sandbox::new("basic");
    let d = sb.d();
    layers(&sb, "abc");
    let leaks: Vec<i32> = (0..3).map(|_| sb.holder(None, None)).collect();
    // The host copy goes, as in dockerd's Put: only the leaked copies remain.
    sb.sh(&format!("umount {d}/l/abc/merged"));
    let target = format!("{d}/l/abc/merged");

    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 1, "leaks found => exit 1: {doc:#}");
    let expected: BTreeSet<u64> = leaks.iter().map(|&p| ns_inode(p)).collect();
    assert_eq!(holder_namespaces(&doc), expected);
    for h in holders(&doc) {
        assert_eq!(h["mount_point"], target.as_str());
        assert_eq!(h["fs_type"], "overlay");
        assert_eq!(h["state"], "leaked");
        let pids: Vec<i64> = h["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_i64().unwrap())
            .collect();
        assert_eq!(pids.len(), 1);
        assert!(leaks.contains(&(pids[0] as i32)));
    }

    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mntreap::audit") && !stderr(&out).contains('\x1b'),
        "audit lines on stderr, without colour codes on a pipe: {}",
        stderr(&out)
    );
    for &pid in &leaks {
        assert!(!has_mount_at(pid, &target), "copy left in {pid}");
        for decoy in ["abc-init", "abc0", "sp ace", "other"] {
            assert!(
                has_mount_at(pid, &format!("{d}/l/{decoy}/merged")),
                "decoy {decoy} gone in {pid}"
            );
        }
    }
    let host = sb.host_pid();
    for decoy in ["abc-init", "abc0", "sp ace", "other"] {
        assert!(has_mount_at(host, &format!("{d}/l/{decoy}/merged")));
    }
    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!((code, holders(&doc).len()), (0, 0), "{doc:#}");
}

#[test]
fn escaped_paths_round_trip() {
    let mut sb = Sandbox::new("escape");
    let d = sb.d();
    layers(&sb, "e1");
    let leak = sb.holder(None, None);
    let target = format!("{d}/l/sp ace/merged");
    let (code, doc) = sb.mntreap_json(
        &["scan", "--any-path", "--path", &target],
        &[("MNTREAP_BACKEND", "mountinfo")],
    );
    assert_eq!(code, 1);
    let points: BTreeSet<&str> = holders(&doc)
        .iter()
        .map(|h| h["mount_point"].as_str().unwrap())
        .collect();
    assert_eq!(points, BTreeSet::from([target.as_str()]));
    // The printed path is accepted back as input and releases the copy.
    let out = sb.mntreap(&["release", "--any-path", "--path", points.first().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!has_mount_at(leak, &target));
    // The human table escapes it like mountinfo, keeping one row per line.
    let out = sb.mntreap(&["scan", "--any-path", "--path", &target]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sp\\040ace"));
}

#[test]
fn loop_device_stays_busy_until_released() {
    let mut sb = Sandbox::new("loop");
    let d = sb.d();
    let dev = sb.loop_ext4("dm");
    let target = format!("{d}/devicemapper/mnt/c0ffee");
    sb.sh(&format!("mkdir -p {target} && mount {dev} {target}"));
    let leak = sb.holder(None, None);
    sb.sh(&format!("umount {target}"));

    let open_excl = || open_excl(&dev);
    let err = open_excl().expect_err("device must be busy while the leaked copy exists");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");

    let out = sb.mntreap(&[
        "release",
        "--log-format",
        "json",
        "--any-path",
        "--path",
        &target,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!has_mount_at(leak, &target));
    open_excl().expect("device free after release");
    // One JSON audit line for the one unmount, naming namespace, pid, mount and result.
    let audits: Vec<Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "mntreap::audit")
        .collect();
    assert_eq!(audits.len(), 1, "{}", stderr(&out));
    let a = &audits[0];
    assert_eq!(a["mnt_ns"].as_u64(), Some(ns_inode(leak)));
    assert_eq!(a["pid_used"].as_i64(), Some(i64::from(leak)));
    assert_eq!(a["path"], target.as_str());
    assert!(a["mount_id"].as_u64().is_some());
    assert!(a["result"].as_str().unwrap().contains("unmounted"), "{a}");
}

#[test]
fn chrooted_holder_found_by_identity() {
    let mut sb = Sandbox::new("chroot");
    let d = sb.d();
    layers(&sb, "ch");
    let busybox = which("busybox");
    sb.sh(&format!(
        "mkdir -p {d}/jail/mnt/layer && cp {busybox} {d}/jail/busybox"
    ));
    // Inside its own namespace: bind the layer into the jail, drop the original path, and
    // chroot: the holder sees the layer at /mnt/layer only.
    let script = format!(
        "mount --bind {d}/l/ch/merged {d}/jail/mnt/layer && umount {d}/l/ch/merged && \
         exec chroot {d}/jail /busybox sleep 3600"
    );
    let pid = sb.holder(Some(&script), None);
    let target = format!("{d}/l/ch/merged");
    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 1, "{doc:#}");
    let foreign: Vec<&Value> = holders(&doc)
        .iter()
        .filter(|h| h["own_namespace"] == false)
        .collect();
    assert_eq!(foreign.len(), 1, "{doc:#}");
    assert_eq!(foreign[0]["mnt_ns"].as_u64(), Some(ns_inode(pid)));
    assert_eq!(foreign[0]["match"], "identity");
    assert_eq!(foreign[0]["mount_point"], format!("{d}/jail/mnt/layer"));
    // From inside the chroot the copy is at /mnt/layer.
    assert!(has_mount_at(pid, "/mnt/layer"));

    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!has_mount_at(pid, "/mnt/layer"));
    // The host's own copy is the runtime's: left alone by default.
    assert!(has_mount_at(sb.host_pid(), &target));
}

#[test]
fn cwd_inside_copy_is_detached_and_named() {
    let mut sb = Sandbox::new("cwd");
    let d = sb.d();
    layers(&sb, "wd");
    let target = format!("{d}/l/wd/merged");
    let pid = sb.holder(Some(&format!("cd {target} && exec sleep 3600")), None);
    sb.sh(&format!("umount {target}"));

    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 1);
    let h = &holders(&doc)[0];
    assert_eq!(h["state"], "pinned");
    assert_eq!(h["pins"], serde_json::json!([{"pid": pid, "via": "cwd"}]));

    let (code, doc) = sb.mntreap_json(&["release", "--any-path", "--path", &target], &[]);
    let doc = the_release(&doc);
    assert_eq!(code, 1, "still pinned => exit 1: {doc:#}");
    let action = &doc["namespaces"][0]["actions"][0];
    assert_eq!(action["result"], "detached", "{doc:#}");
    assert_eq!(action["pins"][0]["pid"], pid);
    assert!(!has_mount_at(pid, &target), "detached from the namespace");
    // The process still works inside its (now detached) directory.
    let file = std::fs::read_to_string(format!("/proc/{pid}/cwd/file")).unwrap();
    assert_eq!(file, "data\n");
}

#[test]
fn container_root_is_never_touched() {
    let mut sb = Sandbox::new("pivot");
    let d = sb.d();
    layers(&sb, "ct");
    let busybox = which("busybox");
    let target = format!("{d}/l/ct/merged");
    sb.sh(&format!(
        "cp {busybox} {target}/busybox && mkdir -p {target}/old"
    ));
    let script = format!("cd {target} && pivot_root . old && exec /busybox sleep 3600");
    let pid = sb.holder(Some(&script), None);
    let before = mounts_of(pid);

    let (code, doc) = sb.mntreap_json(&["release", "--any-path", "--path", &target], &[]);
    let doc = the_release(&doc);
    assert_eq!(code, 1, "in-use copy remains => exit 1: {doc:#}");
    let ns = namespace_entry(&doc, ns_inode(pid));
    let action = &ns["actions"][0];
    assert_eq!(action["result"], "kept", "{doc:#}");
    assert!(
        action["reason"]
            .as_str()
            .unwrap()
            .contains("root of its mount namespace")
    );
    assert_eq!(mounts_of(pid), before, "nothing changed in the container");
    let remaining = doc["remaining"].as_array().unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["in_use"]["kind"], "namespace-root");
}

/// The 32-bit mount id comes back once its mount is gone; the 64-bit one never does. A
/// mount at the holder's path with the holder's 32-bit id but another 64-bit one is not it.
#[test]
fn a_mount_with_the_holders_old_id_but_another_unique_id_is_not_unmounted() {
    let mut sb = Sandbox::new("uniqueid");
    let d = sb.d();
    layers(&sb, "uq");
    let leak = sb.holder(None, None);
    sb.sh(&format!("umount {d}/l/uq/merged"));
    let target = format!("{d}/l/uq/merged");
    let request = library_request(
        vec![target.clone().into()],
        mntreap::engine::source::Backend::Listmount,
    );
    let mut scan = match mntreap::engine::scan::scan(&request) {
        Ok(scan) => scan,
        Err(e) => {
            eprintln!("skipped: this kernel has no listmount(2) for foreign namespaces: {e}");
            return;
        }
    };
    let held = scan
        .holders
        .iter_mut()
        .find(|h| scan.namespaces[h.ns].ns.inode == ns_inode(leak))
        .expect("the leak holds the layer");
    // The scan as it would be had the copy gone and another mount taken its 32-bit id.
    let unique = held.mount.unique_id.expect("listmount gives 64-bit ids");
    held.mount.unique_id = std::num::NonZeroU64::new(unique.get() + (1 << 40));
    let rel = mntreap::engine::release::run_on(scan, &request, Default::default(), false).unwrap();
    assert!(
        // The holder's own mount is gone (its 64-bit id is not mounted): what is there is
        // another.
        rel.results
            .iter()
            .all(|r| matches!(r.outcome, mntreap::engine::release::Outcome::Gone)),
        "{:?}",
        rel.results
    );
    assert!(
        has_mount_at(leak, &target),
        "a mount was taken for the holder by its 32-bit id"
    );
}

#[test]
fn namespace_vanishing_between_scan_and_release() {
    let mut sb = Sandbox::new("vanish");
    let d = sb.d();
    layers(&sb, "vn");
    let stay = sb.holder(None, None);
    let vanish = sb.holder(None, None);
    sb.sh(&format!("umount {d}/l/vn/merged"));
    let target = std::path::PathBuf::from(format!("{d}/l/vn/merged"));
    // Library-level: scan from this process (the sandbox is a foreign namespace here),
    // then the holder exits, then release acts on the held namespace descriptors.
    let request = library_request(
        vec![target.clone()],
        mntreap::engine::source::Backend::Mountinfo,
    );
    let scan = mntreap::engine::scan::scan(&request).unwrap();
    let in_scan: BTreeSet<u64> = scan
        .holders
        .iter()
        .map(|h| scan.namespaces[h.ns].ns.inode)
        .collect();
    let vanished_ns = ns_inode(vanish);
    assert!(in_scan.contains(&ns_inode(stay)) && in_scan.contains(&vanished_ns));
    sb.kill_holder(vanish);

    // Only the two leak namespaces are in scope here: the sandbox's own copy is gone.
    let rel = mntreap::engine::release::run_on(scan, &request, Default::default(), false).unwrap();
    for r in &rel.results {
        assert!(
            matches!(
                r.outcome,
                mntreap::engine::release::Outcome::Unmounted
                    | mntreap::engine::release::Outcome::Gone
            ),
            "{:?}",
            r.outcome
        );
    }
    assert!(
        rel.notes
            .iter()
            .any(|n| n.contains(&vanished_ns.to_string()) && n.contains("no process left")),
        "{:?}",
        rel.notes
    );
    assert!(!has_mount_at(stay, target.to_str().unwrap()));
    assert!(rel.remaining().is_empty());
}

#[test]
fn holders_exiting_during_scans_do_not_break_them() {
    let mut sb = Sandbox::new("churn");
    let d = sb.d();
    layers(&sb, "ch");
    sb.holder(None, None);
    // A storm of short-lived namespaces holding copies, for the whole test.
    let storm = "end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do \
         for i in 1 2 3 4; do unshare -m --propagation private sleep 0.0$i & done; wait; done";
    let mut churn = std::process::Command::new("nsenter")
        .args([
            "-t",
            &sb.host_pid().to_string(),
            "-m",
            "--",
            "sh",
            "-c",
            storm,
        ])
        .spawn()
        .unwrap();
    let target = format!("{d}/l/ch/merged");
    for i in 0..15 {
        let backend = if i % 2 == 0 { "listmount" } else { "mountinfo" };
        let (code, doc) = sb.mntreap_json(
            &["scan", "--any-path", "--path", &target],
            &[("MNTREAP_BACKEND", backend)],
        );
        assert_eq!(code, 1, "scan {i} ({backend}): {doc:#}");
        assert!(!holders(&doc).is_empty());
    }
    churn.wait().unwrap();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut sb = Sandbox::new("badinput");
    let d = sb.d();
    layers(&sb, "bi");
    let leak = sb.holder(None, None);
    let before = (mounts_of(leak), mounts_of(sb.host_pid()));
    let cases: &[(&[&str], &str)] = &[
        (&["release", "--path", "l/bi/merged"], "relative path"),
        (&["release", "--path", "/"], "system directory"),
        (&["release", "--path", "/proc"], "never unmounts"),
        (&["release", "--path", "/sys/fs/cgroup"], "never unmounts"),
        (&["release", "--path", "/run"], "system directory"),
        (
            &["release", "--any-path", "--path", "/tmp/mntreap-no-such/x"],
            "does not exist",
        ),
        (
            &["release", "--path", &format!("{d}/l/bi/merged")],
            "--any-path",
        ),
        (
            &[
                "release",
                "--any-path",
                "--path",
                &format!("{d}/l/../l/bi/merged"),
            ],
            "'..'",
        ),
    ];
    for (args, message) in cases {
        let out = sb.mntreap(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "no report on refusal");
        // Under --json the refusal is a document on stdout, never nothing.
        let (code, doc) = sb.mntreap_json(args, &[]);
        assert_eq!(code, 2, "{args:?}: {doc:#}");
        assert_eq!(doc["kind"], "bad-input", "{args:?}: {doc:#}");
        assert!(
            doc["error"].as_str().unwrap().contains(message),
            "{args:?}: {doc:#}"
        );
    }
    // A command line that does not parse is bad input too, with its document.
    let (code, doc) = sb.mntreap_json(&["scan", "--no-such-flag"], &[]);
    assert_eq!(
        (code, &doc["kind"]),
        (2, &Value::from("bad-input")),
        "{doc:#}"
    );
    assert!(doc["error"].as_str().unwrap().contains("--no-such-flag"));
    assert_eq!((mounts_of(leak), mounts_of(sb.host_pid())), before);
}

#[test]
fn a_runtime_that_does_not_answer_is_no_bad_input() {
    // No dockerd at the socket and no data root to read records from: the command cannot
    // run now, and says so as its own kind (retry), not as a mistake in the command.
    let sb = Sandbox::new("noanswer");
    let d = sb.d();
    let socket = format!("unix://{d}/no-such.sock");
    let root = format!("{d}/no-such-root");
    let (code, doc) = sb.mntreap_json(
        &[
            "scan",
            "web",
            "--docker-host",
            &socket,
            "--docker-root",
            &root,
        ],
        &[],
    );
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["kind"], "runtime-unavailable", "{doc:#}");
    assert!(
        doc["error"].as_str().unwrap().contains("does not answer"),
        "{doc:#}"
    );
}

/// A patched dockerd (patches/) calls `mntreap release --path` on its layers; with a
/// non-default data root it names it in MNTREAP_DOCKER_ROOT, which then counts as a
/// runtime root. Without it the same call is refused.
#[test]
fn the_docker_data_root_counts_as_a_runtime_root() {
    let mut sb = Sandbox::new("dataroot");
    let d = sb.d().to_string();
    layers(&sb, "dr");
    let leak = sb.holder(None, None);
    let target = format!("{d}/l/dr/merged");
    let refused = sb.mntreap(&["release", "--dry-run", "--path", &target]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let (code, doc) = sb.mntreap_json(
        &["release", "--path", &target],
        &[("MNTREAP_DOCKER_ROOT", &d)],
    );
    let doc = the_release(&doc);
    assert_eq!(code, 0, "{doc:#}");
    assert!(
        !mounts_of(leak).iter().any(|(m, _)| *m == target),
        "the leaked copy is released"
    );
}

#[test]
fn stacked_mounts_release_only_the_targets() {
    let mut sb = Sandbox::new("stacked");
    let d = sb.d();
    layers(&sb, "st");
    let target = format!("{d}/l/st/merged");
    let elsewhere = format!("{d}/l/other/merged");
    // In the foreign namespace: a copy of the layer stacked on a decoy at another path,
    // and a second mount stacked on the layer at its own path.
    let script = format!(
        "mount --bind {target} {elsewhere} && mount -t tmpfs upper {target} && exec sleep 3600"
    );
    let pid = sb.holder(Some(&script), None);
    // The host keeps the layer: its copy is the trusted view that says what the layer is
    // (a copy at another path is matched only through such a view; see the trust model).
    let count_at = |p: &str| mounts_of(pid).iter().filter(|(m, _)| m == p).count();
    assert_eq!((count_at(&target), count_at(&elsewhere)), (2, 2));

    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count_at(&target), 0);
    let left: Vec<(String, String)> = mounts_of(pid)
        .into_iter()
        .filter(|(m, _)| *m == elsewhere)
        .collect();
    assert_eq!(left, vec![(elsewhere.clone(), "decoy-other".to_string())]);
}

#[test]
fn backends_agree() {
    let mut sb = Sandbox::new("backends");
    let d = sb.d();
    layers(&sb, "bk");
    // An agent that sees the layers at another path, in a namespace of its own (a view in
    // the trusted namespace itself would make the layer "not private to the target").
    sb.holder(
        Some(&format!(
            "mkdir -p {d}/agent/view && mount --rbind {d}/l {d}/agent/view && exec sleep 3600"
        )),
        None,
    );
    for _ in 0..2 {
        sb.holder(None, None);
    }
    sb.holder(
        Some(&format!("cd {d}/l/bk/merged && exec sleep 3600")),
        None,
    );
    // The host keeps the layer: the trusted view for identity matches at other paths.
    let target = format!("{d}/l/bk/merged");
    let strip = |mut doc: Value| {
        for h in doc["holders"].as_array_mut().unwrap() {
            h.as_object_mut().unwrap().remove("mount_id_unique");
        }
        doc.as_object_mut().unwrap().remove("backend");
        // Other tests create and end namespaces meanwhile: compare holders, not the node.
        doc["summary"]
            .as_object_mut()
            .unwrap()
            .remove("namespaces_scanned");
        doc
    };
    let (c1, listmount) = sb.mntreap_json(
        &["scan", "--any-path", "--path", &target],
        &[("MNTREAP_BACKEND", "listmount")],
    );
    let (c2, mountinfo) = sb.mntreap_json(
        &["scan", "--any-path", "--path", &target],
        &[("MNTREAP_BACKEND", "mountinfo")],
    );
    assert_eq!(listmount["backend"], "listmount");
    assert_eq!(mountinfo["backend"], "mountinfo");
    assert!(holders(&listmount).len() >= 6, "{listmount:#}");
    assert_eq!(c1, c2);
    assert_eq!(strip(listmount), strip(mountinfo));
}

#[test]
fn shared_parent_propagation_is_refused() {
    let mut sb = Sandbox::new("propagation");
    let d = sb.d();
    layers(&sb, "pr");
    sb.sh(&format!("mount --make-rshared {d}"));
    // A namespace whose mounts are peers of the sandbox's: an unmount there would
    // propagate back and take the sandbox's (the runtime's) own copy with it.
    let pid = sb.holder_with(&["-m", "--propagation", "unchanged"], None, None);
    let target = format!("{d}/l/pr/merged");
    let (code, doc) = sb.mntreap_json(&["release", "--any-path", "--path", &target], &[]);
    let doc = the_release(&doc);
    assert_eq!(code, 1, "{doc:#}");
    let ns = namespace_entry(&doc, ns_inode(pid));
    assert_eq!(ns["actions"][0]["result"], "kept", "{doc:#}");
    assert!(
        ns["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("shared"),
        "{doc:#}"
    );
    assert!(
        has_mount_at(sb.host_pid(), &target),
        "the runtime's copy must survive"
    );
    assert!(has_mount_at(pid, &target));
    // With --everywhere the runtime's copy is in scope too, so nothing is lost by propagating.
    let (code, doc) = sb.mntreap_json(
        &["release", "--everywhere", "--any-path", "--path", &target],
        &[],
    );
    let doc = the_release(&doc);
    assert_eq!(code, 0, "{doc:#}");
    assert!(!has_mount_at(pid, &target) && !has_mount_at(sb.host_pid(), &target));
}

/// Propagation follows the whole propagation tree: a slave that is itself shared passes an
/// unmount on to its own slaves, whatever it has at that place itself.
#[test]
fn propagation_through_a_slave_of_a_slave_is_refused() {
    let mut sb = Sandbox::new("slaveofslave");
    let d = sb.d();
    sb.sh(&format!(
        "set -e; mkdir -p {d}/p {d}/other; mount -t tmpfs parent {d}/p; \
         mount --make-shared {d}/p; mkdir {d}/p/x; mount -t tmpfs target {d}/p/x"
    ));
    let target = format!("{d}/p/x");
    // A: the leak. Its copy of the parent is a slave of the sandbox's and shared again, as
    // systemd leaves a service's namespace.
    let a = sb.holder_with(
        &["-m", "--propagation", "unchanged"],
        Some(&format!(
            "mount --make-slave {d}/p && mount --make-shared {d}/p && exec sleep 3600"
        )),
        None,
    );
    // B, copied from A: the same again, but without the target (it was unmounted there).
    let b = sb.holder_from(
        a,
        &["-m", "--propagation", "unchanged"],
        &format!(
            "mount --make-slave {d}/p && mount --make-shared {d}/p && umount {target} && \
             exec sleep 3600"
        ),
    );
    // C, copied from B: a slave of B's group, with a bind of the parent elsewhere and a
    // mount of its own where the target would be under that bind. No holder, nobody's copy.
    let c = sb.holder_from(
        b,
        &["-m", "--propagation", "unchanged"],
        &format!(
            "mount --make-slave {d}/p && mount --bind {d}/p {d}/other && \
             mount -t tmpfs its-own {d}/other/x && exec sleep 3600"
        ),
    );
    let own = format!("{d}/other/x");
    assert!(has_mount_at(c, &own) && has_mount_at(a, &target));
    let runs = [&[][..], &["--everywhere"][..]]
        .into_iter()
        .flat_map(|scope| ["listmount", "mountinfo"].map(|backend| (scope, backend)));
    for (scope, backend) in runs {
        let mut args = vec!["release", "--any-path", "--path", &target];
        args.extend_from_slice(scope);
        let (code, doc) = sb.mntreap_json(&args, &[("MNTREAP_BACKEND", backend)]);
        let doc = the_release(&doc);
        assert_eq!(doc["backend"], backend);
        assert_eq!(code, 1, "{scope:?} {backend}: {doc:#}");
        let action = &namespace_entry(&doc, ns_inode(a))["actions"][0];
        assert_eq!(action["result"], "kept", "{scope:?} {backend}: {doc:#}");
        let reason = action["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("{}", ns_inode(c))) && reason.contains(&own),
            "the reason names what would be lost: {reason}"
        );
        assert!(
            has_mount_at(c, &own),
            "{scope:?} {backend}: the unmount in A propagated through B to C's own mount"
        );
        assert!(has_mount_at(a, &target));
    }
}

#[test]
fn paths_only_matches_the_full_scans_path_holders_on_both_backends() {
    let mut sb = Sandbox::new("pathsonly");
    let d = sb.d();
    layers(&sb, "po");
    let target = format!("{d}/l/po/merged");
    // An agent that sees the layers only at another path, in a namespace of its own.
    sb.holder(
        Some(&format!(
            "mkdir -p {d}/agent/view && mount --rbind {d}/l {d}/agent/view && \
             umount {target} && exec sleep 3600"
        )),
        None,
    );
    sb.holder(None, None);
    sb.holder(Some(&format!("cd {target} && exec sleep 3600")), None);
    sb.holder(
        Some(&format!(
            "mount -t tmpfs upper {target} && mkdir -p {target}/sub && \
             mount -t tmpfs below {target}/sub && exec sleep 3600"
        )),
        None,
    );
    // The host keeps the layer: the trusted view for identity matches at other paths.
    let normalise = |mut doc: Value| {
        let mut hs: Vec<Value> = doc["holders"].as_array().unwrap().clone();
        for h in &mut hs {
            h.as_object_mut().unwrap().remove("mount_id_unique");
        }
        hs.sort_by_key(|h| (h["mnt_ns"].as_u64(), h["mount_id"].as_u64()));
        doc["holders"] = Value::Array(hs);
        doc
    };
    let scan = |backend: &str, extra: &[&str]| {
        let mut args = vec!["scan", "--any-path", "--path", &target];
        args.extend_from_slice(extra);
        normalise(sb.mntreap_json(&args, &[("MNTREAP_BACKEND", backend)]).1)
    };
    let lm = scan("listmount", &["--paths-only"]);
    let mi = scan("mountinfo", &["--paths-only"]);
    let full = scan("listmount", &[]);
    assert_eq!(lm["paths_only"], true);
    assert_eq!(
        lm["holders"], mi["holders"],
        "backends differ in --paths-only"
    );
    let path_holders: Vec<Value> = full["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["match"] == "path")
        .cloned()
        .collect();
    assert_eq!(lm["holders"].as_array().unwrap(), &path_holders);
    // The host's own copy, and 3 namespaces: 1 + 1 (pinned by cwd) + 3 (stacked upper and
    // a mount below it).
    assert_eq!(path_holders.len(), 6, "{full:#}");
    assert_eq!(
        path_holders
            .iter()
            .filter(|h| h["own_namespace"] == true)
            .count(),
        1
    );
    assert!(
        full["holders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["match"] == "identity")
    );
    let pinned: Vec<&Value> = path_holders
        .iter()
        .filter(|h| h["state"] == "pinned")
        .collect();
    assert_eq!(pinned.len(), 1);
}

#[test]
fn paths_only_refuses_unmounts_under_shared_parents() {
    let mut sb = Sandbox::new("pathsonlyshared");
    let d = sb.d();
    layers(&sb, "ps");
    sb.sh(&format!("mount --make-rshared {d}"));
    let pid = sb.holder_with(&["-m", "--propagation", "unchanged"], None, None);
    let target = format!("{d}/l/ps/merged");
    let (code, doc) = sb.mntreap_json(
        &["release", "--paths-only", "--any-path", "--path", &target],
        &[("MNTREAP_BACKEND", "listmount")],
    );
    let doc = the_release(&doc);
    assert_eq!(code, 1, "{doc:#}");
    let ns = namespace_entry(&doc, ns_inode(pid));
    assert_eq!(ns["actions"][0]["result"], "kept");
    assert!(
        ns["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("--paths-only")
    );
    assert!(has_mount_at(pid, &target) && has_mount_at(sb.host_pid(), &target));
}

#[test]
fn namespaces_that_cannot_be_read_never_make_a_clean_result() {
    // The agent's pod once had CAP_SYS_ADMIN and CAP_SYS_PTRACE but not CAP_SYS_CHROOT,
    // which setns into a mount namespace needs: every namespace was skipped, and scan and
    // release said "nothing holds it", exit 0.
    let mut sb = Sandbox::new("denied");
    let d = sb.d();
    layers(&sb, "den");
    let leak = sb.holder(None, None);
    sb.sh(&format!("umount {d}/l/den/merged"));
    let target = format!("{d}/l/den/merged");
    let limited = |args: &[&str]| {
        let mut all = vec![
            "setpriv",
            "--bounding-set=-all,+sys_admin,+sys_ptrace",
            "--inh-caps=-all",
            BIN,
        ];
        all.extend_from_slice(args);
        sb.sh_output(
            &all.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    for cmd in ["scan", "release"] {
        let out = limited(&[cmd, "--any-path", "--path", &target]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("could not be read") && stderr(&out).contains("CAP_SYS_CHROOT"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
    assert!(
        has_mount_at(leak, &target),
        "nothing was released without the capability"
    );
    // With it, the copy is found and released.
    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!has_mount_at(leak, &target));
}

#[test]
fn file_mount_points_are_found_and_released_on_both_backends() {
    // A pod's netns file (/run/netns/cni-*) and a bind of one file are mount points that
    // are files: the path lookup once opened every target as a directory and missed them.
    for backend in ["listmount", "mountinfo"] {
        let mut sb = Sandbox::new(&format!("filemount-{backend}"));
        let d = sb.d();
        sb.sh(&format!(
            "set -e; mkdir -p {d}/l/f; echo x > {d}/src; touch {d}/l/f/file; \
             mount --bind {d}/src {d}/l/f/file"
        ));
        let leak = sb.holder(None, None);
        sb.sh(&format!("umount {d}/l/f/file"));
        let target = format!("{d}/l/f/file");
        let env = [("MNTREAP_BACKEND", backend)];
        let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &env);
        assert_eq!(code, 1, "{backend}: {doc}");
        assert_eq!(
            holder_namespaces(&doc),
            [ns_inode(leak)].into(),
            "{backend}: {doc}"
        );
        let out = sb.mntreap_env(&["release", "--any-path", "--path", &target], &env);
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", stderr(&out));
        assert!(!has_mount_at(leak, &target), "{backend}");
    }
}

#[test]
fn a_scan_from_another_pid_namespace_is_never_clean() {
    // From a pid namespace that is not the host's (a pod without hostPID), /proc lists
    // that namespace's processes alone: a leaked copy elsewhere is not seen, and the scan
    // must say it is incomplete instead of "no namespace holds it".
    let mut sb = Sandbox::new("pidns");
    let d = sb.d();
    layers(&sb, "pn");
    let leak = sb.holder(None, None);
    let target = format!("{d}/l/pn/merged");
    assert!(has_mount_at(leak, &target));
    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(
        code, 1,
        "from the host's pid namespace the leak is seen: {doc:#}"
    );
    let out = sb.sh_output(&format!(
        "unshare --pid --fork --mount-proc {BIN} scan --json --any-path --path {target}"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["notes"].to_string().contains("not the host's"),
        "the note says why: {doc:#}"
    );
    assert!(stderr(&out).contains("hostPID"), "{}", stderr(&out));
}

#[test]
fn a_scan_from_a_private_cgroup_namespace_reads_the_hosts_view_and_moves_no_thread_of_ours() {
    // This thread in a cgroup namespace of its own (as the DaemonSet's agent is): the scan
    // reads members' cgroups as the host names them, on workers that enter the host's
    // cgroup namespace and end; the calling thread stays where it was.
    let mut sb = Sandbox::new("cgthread");
    let d = sb.d();
    layers(&sb, "cg");
    let leak = sb.holder(None, None);
    let target = std::path::PathBuf::from(format!("{d}/l/cg/merged"));
    let me = std::process::id() as i32;
    let (before, after, read) = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).unwrap();
        let ns = || std::fs::read_link("/proc/thread-self/ns/cgroup").unwrap();
        let before = ns();
        let request = mntreap::engine::scan::ScanRequest {
            runtime_pid: Some(me),
            ..library_request(vec![target], mntreap::engine::source::Backend::Mountinfo)
        };
        let scan = mntreap::engine::scan::scan(&request).unwrap();
        let read: Vec<(i32, Option<String>)> = scan
            .namespaces
            .iter()
            .flat_map(|n| n.processes.iter().map(|p| (p.pid, p.cgroup.clone())))
            .collect();
        (before, ns(), read)
    })
    .join()
    .unwrap();
    assert_eq!(before, after, "the calling thread changed cgroup namespace");
    assert_ne!(
        before,
        std::fs::read_link("/proc/self/ns/cgroup").unwrap(),
        "the thread was in a namespace of its own"
    );
    let theirs = std::fs::read_to_string(format!("/proc/{leak}/cgroup")).unwrap();
    assert!(
        read.contains(&(leak, Some(theirs))),
        "the leak's cgroups, as the host names them: {read:?}"
    );
}

#[test]
fn namespaces_with_no_process_are_found_scanned_released_and_their_pins_named() {
    // Two namespaces whose processes are all gone: one kept by an nsfs bind (`unshare
    // --mount=FILE`, as snapd keeps its snaps' under /run/snapd/ns), one by a descriptor
    // another process holds. Both keep a copy of the layer.
    let mut sb = Sandbox::new("noproc");
    let d = sb.d();
    layers(&sb, "np");
    let target = format!("{d}/l/np/merged");
    // As `unshare --mount=FILE` does it. The kernel binds a namespace file only if that
    // namespace's id is above the binder's (a loop check), and 6.18 hands ids out from
    // per-CPU batches: a namespace made later on another CPU can get a lower id, and the
    // bind fails with EINVAL. On the CPU the sandbox's namespace was made on, a later one is
    // always higher, so one attempt per CPU is enough.
    sb.sh(&format!("touch {d}/ns.mnt"));
    let mut bound = None;
    let mut refused = Vec::new();
    for cpu in allowed_cpus() {
        let first = sb.holder_on_cpu(cpu);
        let bind = sb.sh_output(&format!("mount --bind /proc/{first}/ns/mnt {d}/ns.mnt"));
        let inode = ns_inode(first);
        sb.kill_holder(first);
        if bind.status.success() {
            bound = Some(inode);
            break;
        }
        refused.push((cpu, String::from_utf8_lossy(&bind.stderr).into_owned()));
    }
    let bound =
        bound.unwrap_or_else(|| panic!("the nsfs bind was refused on every CPU: {refused:?}"));
    let holder = sb.holder(None, None);
    let held = ns_inode(holder);
    let keeper = sb.sleeper_in(&format!("exec 3</proc/{holder}/ns/mnt; exec sleep 3600"));
    sb.kill_holder(holder);
    for backend in ["mountinfo", "listmount"] {
        let (code, doc) = sb.mntreap_json(
            &["scan", "--any-path", "--path", &target],
            &[("MNTREAP_BACKEND", backend)],
        );
        assert_eq!(code, 1, "{backend}: {doc:#}");
        let of = |ns: u64| {
            holders(&doc)
                .iter()
                .find(|h| h["mnt_ns"] == ns)
                .unwrap_or_else(|| panic!("{backend}: namespace {ns} not listed: {doc:#}"))
        };
        let by_bind = of(bound);
        assert_eq!(by_bind["ns_via"], "kernel-list", "{by_bind:#}");
        assert_eq!(by_bind["pids"].as_array().unwrap().len(), 0);
        assert_eq!(by_bind["ns_pinned_by"][0]["kind"], "bind", "{by_bind:#}");
        assert_eq!(
            by_bind["ns_pinned_by"][0]["path"],
            format!("{d}/ns.mnt").as_str()
        );
        let by_fd = of(held);
        assert_eq!(by_fd["ns_pinned_by"][0]["kind"], "descriptor", "{by_fd:#}");
        assert_eq!(by_fd["ns_pinned_by"][0]["pid"], keeper);
        assert_eq!(by_fd["ns_pinned_by"][0]["fd"], 3);
    }
    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for ns in [format!("{d}/ns.mnt"), format!("/proc/{keeper}/fd/3")] {
        let inside = sb.sh(&format!("nsenter --mount={ns} cat /proc/self/mountinfo"));
        assert!(
            !inside.contains(&format!(" {target} ")),
            "the copy in {ns} is left: {inside}"
        );
    }
    assert!(
        has_mount_at(sb.host_pid(), &target),
        "mntreap's own namespace keeps its mount"
    );
}

#[test]
fn why_names_every_holder_of_a_device_and_what_to_do_about_it() {
    // An ext4 volume mounted on the node, with the holders the field's reports name: a copy
    // in another namespace, a process working inside it with a file open, and a loop device
    // backed by a file on it. `why` names each, and says which one mntreap releases.
    let mut sb = Sandbox::new("why");
    let d = sb.d();
    let dev = sb.loop_ext4("why");
    sb.sh(&format!(
        "mkdir -p {d}/vol && mount {dev} {d}/vol && mkdir {d}/vol/dir && truncate -s 8M {d}/vol/disk.img"
    ));
    let copy = sb.holder(None, None);
    let worker = sb.sleeper_in(&format!(
        "cd {d}/vol/dir && exec 4<{d}/vol/disk.img && exec sleep 3600"
    ));
    let backed = sb.loop_file(&format!("{d}/vol/disk.img"));
    // A raw user of the device (a block volume, a VM's disk).
    let raw = sb.sleeper_in(&format!("exec 6<{dev} && exec sleep 3600"));
    for target in [dev.clone(), format!("{d}/vol")] {
        let (code, doc) = sb.mntreap_json(&["why", &target], &[]);
        assert_eq!(code, 1, "{doc:#}");
        assert_eq!(doc["busy"], true);
        assert_eq!(doc["targets"].as_array().unwrap().len(), 1, "{doc:#}");
        let reasons = doc["targets"][0]["reasons"].as_array().unwrap();
        let find = |pred: &dyn Fn(&Value) -> bool, what: &str| {
            reasons
                .iter()
                .find(|r| pred(r))
                .unwrap_or_else(|| panic!("{target}: no {what}: {doc:#}"))
                .clone()
        };
        let own = find(
            &|r| r["kind"] == "mount" && r["mnt_ns"] == ns_inode(sb.host_pid()),
            "own mount",
        );
        assert_eq!(own["releasable"], false);
        let copied = find(
            &|r| r["kind"] == "mount" && r["mnt_ns"] == ns_inode(copy),
            "copy",
        );
        assert_eq!(copied["releasable"], true, "{copied:#}");
        assert_eq!(copied["mount_point"], format!("{d}/vol").as_str());
        find(
            &|r| r["kind"] == "process" && r["pid"] == worker && r["via"] == "cwd",
            "cwd",
        );
        let open = find(
            &|r| r["kind"] == "process" && r["pid"] == worker && r["via"] == "open-file",
            "open file",
        );
        assert_eq!(open["fd"], 4);
        if target == dev {
            let opened = find(
                &|r| r["kind"] == "process" && r["pid"] == raw && r["via"] == "open-device",
                "the device held open",
            );
            assert_eq!(opened["fd"], 6);
            assert!(
                opened["remedy"]
                    .as_str()
                    .unwrap()
                    .contains("holds the device itself open")
            );
        }
        let looped = find(&|r| r["kind"] == "loop", "loop device");
        assert_eq!(looped["device"], backed.as_str());
        assert!(looped["remedy"].as_str().unwrap().contains("losetup -d"));
    }
    let text = sb.mntreap(&["why", &dev]);
    assert_eq!(text.status.code(), Some(1));
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains(&format!("pid {worker}")) && out.contains("[mntreap]"),
        "{out}"
    );
    // The device behind the loop file holds nothing: not busy, exit 0.
    sb.detach_loop(&backed);
    let (code, doc) = sb.mntreap_json(&["why", &backed], &[]);
    assert_eq!((code, &doc["busy"]), (0, &Value::Bool(false)), "{doc:#}");
    assert_eq!(doc["targets"][0]["busy"], false);
}

#[test]
fn release_device_frees_a_volume_from_its_copies_and_keeps_what_may_be_a_use() {
    // A CSI volume staged at kubelet's globalmount, then copied: a service's namespace
    // (PrivateTmp) carries the globalmount; a backup job's namespace mounted the device
    // itself at its own place; a container (its own root) mounted the volume at /data.
    // kubelet unstages it (umount on the node) and the device stays busy. No runtime
    // answers here: the container is nobody's known volume, the backup's mount is its own:
    // both are uses, so the service's copy would free nothing and stays too. Once they
    // are gone, the copy goes and the device is free.
    let mut sb = Sandbox::new("device");
    let d = sb.d();
    let dev = sb.loop_ext4("csi");
    let kubelet = format!("{d}/var/lib/kubelet");
    let g = format!("{kubelet}/plugins/kubernetes.io/csi/drv/0f1e/globalmount");
    sb.sh(&format!("mkdir -p {g} {d}/backup && mount {dev} {g}"));
    let service = sb.holder(None, None);
    let backup = sb.holder(
        Some(&format!("mount {dev} {d}/backup && exec sleep 3600")),
        None,
    );
    layers(&sb, "ct");
    let busybox = which("busybox");
    let root = format!("{d}/l/ct/merged");
    sb.sh(&format!(
        "cp {busybox} {root}/busybox && mkdir -p {root}/old {root}/data"
    ));
    let container = sb.holder(
        Some(&format!(
            "mount --bind {g} {root}/data && cd {root} && pivot_root . old && exec /busybox sleep 3600"
        )),
        None,
    );
    sb.sh(&format!("umount {g}"));
    wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || has_mount_at(backup, &format!("{d}/backup")) && has_mount_at(container, "/data"),
        || "the backup's and the container's mounts never appeared".into(),
    );
    let open_excl = || open_excl(&dev);
    let err = open_excl().expect_err("the copies keep the device busy");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");

    let no_docker = format!("{d}/no-docker");
    let env = [
        ("MNTREAP_RUNTIME", "docker"),
        ("DOCKER_HOST", "unix:///nonexistent.sock"),
        ("MNTREAP_DOCKER_ROOT", no_docker.as_str()),
        ("MNTREAP_KUBELET_ROOT", kubelet.as_str()),
    ];
    let (code, scan) = sb.mntreap_json(&["scan", "--device", &dev], &env);
    assert_eq!(code, 1, "held elsewhere: {scan:#}");
    assert_documented(scan.to_string().as_bytes());
    let decided: std::collections::BTreeMap<(u64, u64), (String, String)> = holders(&scan)
        .iter()
        .map(|h| {
            assert_eq!(h["match"], "device", "{h:#}");
            (
                (
                    h["mnt_ns"].as_u64().unwrap(),
                    h["mount_id"].as_u64().unwrap(),
                ),
                (
                    h["action"].as_str().unwrap().to_string(),
                    h["mount_point"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let of = |pid: i32| -> Vec<(String, String)> {
        decided
            .iter()
            .filter(|((ns, _), _)| *ns == ns_inode(pid))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(of(service), vec![("keep".into(), g.clone())], "{scan:#}");
    let backups = of(backup);
    assert!(
        backups.contains(&("keep".into(), format!("{d}/backup"))),
        "{scan:#}"
    );
    let contained = of(container);
    assert!(
        contained.contains(&("keep".into(), "/data".into())),
        "{scan:#}"
    );
    assert!(decided.values().all(|(a, _)| a == "keep"), "{scan:#}");
    let reason_of = |pid: i32, point: &str| decision(&scan, ns_inode(pid), point).1;
    assert!(reason_of(service, &g).contains("releasing this copy would free nothing"));
    assert!(reason_of(backup, &format!("{d}/backup")).contains("outside the runtimes'"));
    assert!(reason_of(container, "/data").contains("no runtime record"));

    // Nothing goes while the uses remain: exit 1, nothing changed.
    let before = (mounts_of(service), mounts_of(backup), mounts_of(container));
    let (code, rel) = sb.mntreap_json(&["release", "--device", &dev], &env);
    assert_eq!(code, 1, "{rel:#}");
    assert_documented(rel.to_string().as_bytes());
    assert_eq!(
        before,
        (mounts_of(service), mounts_of(backup), mounts_of(container))
    );

    // The uses end: the copy is all that holds the device. A dry run changes nothing, and
    // what the scan says is what the release does.
    sb.kill_holder(container);
    sb.kill_holder(backup);
    let (code, scan) = sb.mntreap_json(&["scan", "--device", &dev], &env);
    assert_eq!(code, 1, "{scan:#}");
    let scanned: std::collections::BTreeMap<(u64, u64), String> = holders(&scan)
        .iter()
        .map(|h| {
            (
                (
                    h["mnt_ns"].as_u64().unwrap(),
                    h["mount_id"].as_u64().unwrap(),
                ),
                h["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        scanned.values().collect::<Vec<_>>(),
        vec!["unmount"],
        "{scan:#}"
    );
    let (code, dry) = sb.mntreap_json(&["release", "--dry-run", "--device", &dev], &env);
    assert_eq!(code, 1, "{dry:#}");
    assert!(has_mount_at(service, &g), "a dry run changes nothing");
    let (code, rel) = sb.mntreap_json(&["release", "--device", &dev], &env);
    assert_eq!(code, 0, "{rel:#}");
    assert_eq!(release_actions(&dry), release_actions(&rel));
    assert_eq!(
        scanned,
        release_actions(&rel),
        "scan promised what release did"
    );
    assert!(!has_mount_at(service, &g));
    open_excl().expect("the device is free");
}

#[test]
fn a_device_that_holds_the_system_or_is_no_block_device_is_refused() {
    let sb = Sandbox::new("device-rails");
    let root_dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata("/").unwrap());
    let root = format!(
        "{}:{}",
        nix::sys::stat::major(root_dev),
        nix::sys::stat::minor(root_dev)
    );
    for (raw, says) in [
        (root.as_str(), "holds /"),
        ("/dev/null", "not a block device"),
        ("0:1", "not a block device"),
        ("rootfs", "not a block device"),
    ] {
        let (code, doc) = sb.mntreap_json(&["release", "--device", raw], &[]);
        assert_eq!(code, 2, "{raw}: {doc:#}");
        assert_eq!(doc["kind"], "bad-input", "{raw}: {doc:#}");
        assert!(
            doc["error"].as_str().unwrap().contains(says),
            "{raw}: {doc:#}"
        );
    }
}

#[test]
fn device_rails_resolve_the_nodes_symlinks_within_the_nodes_root() {
    // The node keeps Docker's data on its own disk behind an absolute symlink, as many do
    // (`/var/lib/docker -> /data/docker`), and mntreap sees the node at `--host-root`, as
    // the agent's pod does: the symlink must lead to the node's `/data/docker`, not ours.
    let mut sb = Sandbox::new("device-rails-symlink");
    let node = format!("{}/node", sb.d());
    let dev = sb.loop_ext4("data");
    sb.sh(&format!(
        "mkdir -p {node}/data/docker {node}/var/lib && mount {dev} {node}/data/docker \
         && ln -s /data/docker {node}/var/lib/docker"
    ));
    assert!(
        !std::path::Path::new("/data/docker").exists(),
        "this machine has its own /data/docker: the test would not tell the views apart"
    );
    let (code, doc) = sb.mntreap_json(&["scan", "--device", &dev, "--host-root", &node], &[]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["kind"], "bad-input", "{doc:#}");
    assert!(
        doc["error"].as_str().unwrap().contains("/var/lib/docker"),
        "{doc:#}"
    );
}

/// systemd (252, Debian 12) sets up a sandboxed service's namespace by binding the root to a
/// new place and moving it onto `/`: the namespace's first tree stays under the new root,
/// covered, and every mount propagated into the namespace lands in both trees. listmount
/// lists both copies; no path reaches the covered one (setns roots a thread at the top of
/// the stack, as the service is rooted), so nothing can unmount it, and it goes when its
/// master's mount goes. Found on the booted Debian 12 host: scan promised an unmount, the
/// release said "gone" and then listed the copy as remaining.
#[test]
fn a_copy_covered_by_a_services_moved_root_is_neither_promised_nor_called_gone() {
    let mut sb = Sandbox::new("covered");
    let d = sb.d();
    sb.sh(&format!(
        "mount --make-rshared {d} && mkdir -p {d}/t {d}/newroot"
    ));
    // As systemd's namespace set-up does: rbind /, move it onto /, chroot into it.
    let service = sb.holder_with(
        &["-m", "--propagation", "slave"],
        Some(&format!(
            "mount --rbind / {d}/newroot && cd {d}/newroot && mount --move . / && \
             exec chroot . sleep 3600"
        )),
        None,
    );
    let target = format!("{d}/t");
    sb.sh(&format!("mount -t tmpfs covered-t {target}"));
    assert!(
        has_mount_at(service, &target),
        "the service's reachable copy"
    );

    let (code, scan) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 1, "{scan:#}");
    let in_service: Vec<&Value> = holders(&scan)
        .iter()
        .filter(|h| h["mnt_ns"] == ns_inode(service))
        .collect();
    assert_eq!(
        in_service.len(),
        1,
        "only the copy a path reaches is a holder to act on: {scan:#}"
    );
    assert_eq!(in_service[0]["action"], "unmount", "{scan:#}");
    let notes = scan.to_string();
    assert!(
        notes.contains("not reachable by any path"),
        "the covered copy is counted in a note: {scan:#}"
    );

    let (code, rel) = sb.mntreap_json(&["release", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 0, "nothing the release could reach remains: {rel:#}");
    let results: Vec<String> = the_release(&rel)["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["actions"].as_array().unwrap().clone())
        .map(|a| a["result"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !results.iter().any(|r| r == "gone"),
        "no copy that is still there is called gone: {rel:#}"
    );
    assert!(!has_mount_at(service, &target), "the reachable copy went");
    assert!(
        has_mount_at(sb.host_pid(), &target),
        "the host keeps its own"
    );

    // A mount over a parent directory in the service's namespace covers what propagation
    // put below it: its path there is the covering tmpfs's (empty) directory.
    let deep = format!("{d}/u/t");
    sb.sh(&format!(
        "mkdir -p {deep} && mount -t tmpfs covered-u {deep}"
    ));
    assert!(has_mount_at(service, &deep));
    let over = std::process::Command::new("nsenter")
        .args([
            "-t",
            &service.to_string(),
            "-m",
            "mount",
            "-t",
            "tmpfs",
            "cover",
        ])
        .arg(format!("{d}/u"))
        .status()
        .unwrap();
    assert!(over.success());
    let (code, scan) = sb.mntreap_json(&["scan", "--any-path", "--path", &deep], &[]);
    assert!(
        !holders(&scan)
            .iter()
            .any(|h| h["mnt_ns"] == ns_inode(service)),
        "no covered copy is a holder: {scan:#}"
    );
    assert_eq!(code, 0, "{scan:#}");
    assert!(
        scan.to_string().contains("not reachable by any path"),
        "{scan:#}"
    );
}
