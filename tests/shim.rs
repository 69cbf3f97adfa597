//! containerd's own failure, for real: the runc shim unmounts a task's rootfs without
//! MNT_DETACH (50 tries, 50 ms apart), so a copy that keeps the rootfs busy through
//! propagation (a slave copy in a service's namespace, with a process whose working
//! directory is in it) makes the task's deletion fail with `failed rootfs umount ...
//! device or resource busy` (containerd #11353). mntreap must clear it without touching
//! the runtime's own mounts.

mod common;

use std::time::Duration;

use common::cri::{CriDaemon, Pod};
use common::*;

const UID: &str = "5b2e9c41-7d3a-4f8e-a1b6-0c9d8e7f6a52";

#[test]
fn a_busy_slave_copy_that_fails_the_shims_rootfs_umount_is_released() {
    let mut sb = Sandbox::new("shim-busy");
    let cri = CriDaemon::start(&sb, "shimbusy");
    // Task bundles under a shared mount, as on a node whose / is shared (systemd's default):
    // a service namespace made from it receives the rootfs mounts as slaves.
    let state = cri.state();
    sb.sh(&format!(
        "mount --rbind {state} {state} && mount --make-rshared {state}"
    ));
    let kubelet = format!("{}/kubelet", sb.d());
    let pod = Pod::new("web", UID, &kubelet);
    let pod_id = cri.run_pod(&pod);
    let app = cri.run_container(&pod_id, "app", &[]);
    let rootfs = format!("{state}/io.containerd.runtime.v2.task/k8s.io/{app}/rootfs");
    assert!(has_mount_at(sb.host_pid(), &rootfs));
    let service = sb.holder_with(
        &["-m", "--propagation", "slave"],
        Some(&format!("cd {rootfs} && exec sleep 3600")),
        None,
    );
    assert!(has_mount_at(service, &rootfs));

    // kubelet stops the container: the task exits, and its deletion fails for real.
    let stopped = cri.stop_container(&app);
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || cri.log().contains("failed rootfs umount"),
        || {
            format!(
                "containerd's shim did not fail (stop: {stopped:?}):\n{}",
                cri.log()
            )
        },
    );
    assert!(
        has_mount_at(sb.host_pid(), &rootfs),
        "the rootfs is still mounted"
    );

    // What scan says, release does: the service's copy goes, containerd's rootfs stays for
    // containerd to unmount itself.
    let args = [
        "--cri-endpoint".to_string(),
        cri.endpoint(),
        "--kubelet-root".to_string(),
        kubelet.clone(),
    ];
    let with = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(args.iter().cloned())
            .collect()
    };
    let run = |cmd: &[&str]| {
        let all = with(cmd);
        sb.mntreap_json(&all.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let (code, scan) = run(&["scan", &app]);
    assert_eq!(code, 1, "{scan:#}");
    let (service_ns, host_ns) = (ns_inode(service), ns_inode(sb.host_pid()));
    assert_eq!(decision(&scan, service_ns, &rootfs).0, "detach", "{scan:#}");
    // A dry run exits as scan does; the release exits 1 too: the copy is detached, and the
    // service's process still keeps it alive through its working directory (it no longer
    // hangs below the slave parent, so the shim's unmount does not meet it).
    let (code, plan) = run(&["release", "--dry-run", &app]);
    assert_eq!(code, 1, "{plan:#}");
    let (code, rel) = run(&["release", &app]);
    assert_eq!(code, 1, "{rel:#}");
    assert_scan_is_release(&scan, &plan, &rel);
    assert!(!has_mount_at(service, &rootfs), "the busy copy is gone");
    for ((ns, _), action) in release_actions(&rel) {
        assert!(
            ns != host_ns || action == "keep",
            "containerd's namespace was touched: {rel:#}"
        );
    }

    // containerd's own retry now deletes the task (its unmount no longer meets a busy
    // slave), and kubelet's RemoveContainer succeeds.
    wait_until(
        Duration::from_secs(90),
        Duration::from_millis(250),
        || !has_mount_at(sb.host_pid(), &rootfs),
        || {
            format!(
                "containerd did not unmount the rootfs after the release:\n{}",
                cri.log()
            )
        },
    );
    // containerd unmounts the rootfs before it records the task's exit: until then
    // RemoveContainer says "still running" (seen on a loaded machine), and kubelet retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cri.remove_container(&app) {
            Ok(()) => break,
            Err(e) if e.contains("still running") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            Err(e) => panic!("RemoveContainer after the release: {e}\n{}", cri.log()),
        }
    }
    assert!(!cri.containers().contains(&app));
}
