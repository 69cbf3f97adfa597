//! Trust boundaries: nothing an unprivileged holder, a data-root file, a cgroup name or a
//! request can forge may steer an unmount (issue 11's reproductions, and what held).

mod common;

use common::*;

/// The first reproduction: after the layer left the host, an unprivileged user binds an
/// unrelated filesystem at the target path in its own user+mount namespace. That bind is
/// a holder of the path in the user's namespace, never the target's identity: the victims'
/// copies of the unrelated filesystem stay.
#[test]
fn a_bind_at_the_target_path_in_an_untrusted_namespace_is_no_identity() {
    let mut sb = Sandbox::new("forged-bind");
    let d = sb.d();
    let target = format!("{d}/l/abc/merged");
    sb.sh(&format!(
        "set -e; mkdir -p {target} {d}/vol; mount -t tmpfs target {target}; \
         mount -t tmpfs precious {d}/vol; echo keep > {d}/vol/file"
    ));
    let victims: Vec<i32> = (0..2).map(|_| sb.holder(None, None)).collect();
    sb.sh(&format!("umount {target}"));
    let attacker = sb.holder(
        Some(&format!(
            "exec setpriv --reuid=65534 --regid=65534 --clear-groups unshare -Urm sh -c \
             'mount --bind {d}/vol {target} && exec sleep 3600'"
        )),
        None,
    );
    assert!(
        has_mount_at(attacker, &target),
        "the attacker's bind is in place"
    );

    let (code, doc) = sb.mntreap_json(&["scan", "--any-path", "--path", &target], &[]);
    assert_eq!(code, 1, "{doc:#}");
    for h in doc["holders"].as_array().unwrap() {
        assert_eq!(
            h["mount_point"],
            target.as_str(),
            "only holders of the target path itself: {doc:#}"
        );
    }
    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    for &v in &victims {
        assert!(
            !has_mount_at(v, &target),
            "victim {v} still holds the target"
        );
        assert!(
            has_mount_at(v, &format!("{d}/vol")),
            "the unrelated filesystem was unmounted in victim {v}: {}",
            stderr(&out)
        );
    }
    assert!(has_mount_at(sb.host_pid(), &format!("{d}/vol")));
}

/// The second reproduction: a `config.v2.json` whose `ID` is an absolute path, and a
/// layerdb `mount-id` holding one, once made `release NAME` unmount outside the data root.
/// Now such records are named and skipped, and nothing outside the data root is touched.
#[test]
fn data_root_records_cannot_point_outside_the_data_root() {
    let mut sb = Sandbox::new("records");
    let d = sb.d();
    let root = format!("{d}/docker");
    let good = "b".repeat(64);
    let evil = "c".repeat(64);
    sb.sh(&format!(
        "set -e; mkdir -p {d}/outside/mounts/shm {d}/outside2/merged \
         {root}/containers/byid {root}/containers/{good} {root}/containers/{evil} \
         {root}/image/overlay2/layerdb/mounts/{evil}; \
         mount -t tmpfs precious1 {d}/outside/mounts/shm; \
         mount -t tmpfs precious2 {d}/outside2/merged; \
         echo '{{\"ID\":\"{d}/outside\",\"Name\":\"/absid\",\"Driver\":\"overlay2\"}}' \
           > {root}/containers/byid/config.v2.json; \
         echo '{{\"ID\":\"{evil}\",\"Name\":\"/absmount\",\"Driver\":\"overlay2\"}}' \
           > {root}/containers/{evil}/config.v2.json; \
         echo -n {d}/outside2 > {root}/image/overlay2/layerdb/mounts/{evil}/mount-id; \
         echo '{{\"ID\":\"{good}\",\"Name\":\"/fine\",\"Driver\":\"overlay2\"}}' \
           > {root}/containers/{good}/config.v2.json"
    ));
    let victim = sb.holder(None, None);
    let offline = ["--offline", "--docker-root", root.as_str(), "--any-path"];
    for name in ["absid", "absmount", &evil] {
        let mut args = vec!["release", name];
        args.extend(offline);
        let out = sb.mntreap(&args);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
    }
    // Listing the data root names each bad record with its file and goes on.
    let mut args = vec!["release", "fine", "--dry-run"];
    args.extend(offline);
    let out = sb.mntreap(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{root}/containers/byid/config.v2.json"))
            && err.contains(&format!("{evil}/mount-id")),
        "bad records are named: {err}"
    );
    for pid in [victim, sb.host_pid()] {
        assert!(has_mount_at(pid, &format!("{d}/outside/mounts/shm")));
        assert!(has_mount_at(pid, &format!("{d}/outside2/merged")));
    }
}

/// The same bind made in a namespace the host's user namespace owns (what a setuid sandbox
/// helper sets up for its user): still no identity. Only mntreap's own namespace and the
/// established runtime's say what a target is.
#[test]
fn a_bind_at_the_target_path_in_a_sandbox_helpers_namespace_is_no_identity_either() {
    let mut sb = Sandbox::new("forged-sandbox");
    let d = sb.d();
    let target = format!("{d}/l/abc/merged");
    sb.sh(&format!(
        "set -e; mkdir -p {target} {d}/vol; mount -t tmpfs target {target}; \
         mount -t tmpfs precious {d}/vol"
    ));
    let victim = sb.holder(None, None);
    sb.sh(&format!("umount {target}"));
    let sandbox = sb.holder(
        Some(&format!("mount --bind {d}/vol {target} && exec sleep 3600")),
        None,
    );
    assert!(has_mount_at(sandbox, &target));
    let out = sb.mntreap(&["release", "--any-path", "--path", &target]);
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    assert!(
        !has_mount_at(victim, &target),
        "the victim's copy of the target goes"
    );
    assert!(
        has_mount_at(victim, &format!("{d}/vol")),
        "the unrelated filesystem was unmounted in the victim: {}",
        stderr(&out)
    );
}

/// A user namespace's owner can mount FUSE anywhere in its own mount namespace, over a
/// target's path too, and never answer: a path lookup there waits on that daemon for as
/// long as it likes. The scan reads such a namespace's mounts from the kernel and never
/// walks its paths, so it finishes, and still lists the copy there.
#[test]
fn a_fuse_daemon_that_never_answers_on_a_targets_path_does_not_stall_the_scan() {
    let mut sb = Sandbox::new("fuse-stall");
    let d = sb.d();
    let target = format!("{d}/l/abc/merged");
    sb.sh(&format!(
        "set -e; mkdir -p {target}; mount -t tmpfs target {target}"
    ));
    // The FUSE connection stays open in the sleep the script ends in; nothing reads it.
    let fuse = sb.holder(
        Some(&format!(
            "exec unshare -Urm python3 -c \"
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('/dev/fuse', os.O_RDWR)
os.set_inheritable(fd, True)
opts = ('fd=%d,rootmode=40000,user_id=0,group_id=0' % fd).encode()
assert libc.mount(b'stall', b'{d}/l', b'fuse', 0, opts) == 0, ctypes.get_errno()
os.execvp('sleep', ['sleep', '3600'])
\""
        )),
        None,
    );
    let fuse_at = std::fs::read_to_string(format!("/proc/{fuse}/mountinfo"))
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!(" {d}/l ")) && l.contains(" - fuse "));
    assert!(fuse_at, "the FUSE mount is in place over {d}/l");

    // `--paths-only` looks each target up in each namespace instead of reading its table.
    for extra in [&[][..], &["--paths-only"][..]] {
        let mut scan = std::process::Command::new("nsenter")
            .args(["-t", &sb.host_pid().to_string(), "-m", "--", BIN])
            .args(["scan", "--any-path", "--json", "--path", &target])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while scan.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = scan.kill(); // a FUSE wait is killable
                let _ = scan.wait();
                panic!("the scan {extra:?} stalled on the FUSE mount over {d}/l");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = scan.wait_with_output().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
        let fuse_ns = ns_inode(fuse);
        assert!(
            doc["holders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["mnt_ns"] == fuse_ns && h["mount_point"] == target.as_str()),
            "the copy under the FUSE mount is still listed by the scan {extra:?}: {doc:#}"
        );
    }
}
