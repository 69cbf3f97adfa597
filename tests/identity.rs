//! The runtime's identity, established and never guessed (issue 10): dockerd under socket
//! activation in a `MountFlags=slave`-style namespace of its own, as systemd runs it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::docker::DockerDaemon;
use common::*;
use serde_json::Value;

/// A PrivateTmp-style service cloned from dockerd's own namespace; killed by pid.
struct ServiceInDockerdNamespace(Child);

impl ServiceInDockerdNamespace {
    fn start(dockerd: i32) -> ServiceInDockerdNamespace {
        let child = Command::new("nsenter")
            .args(["-t", &dockerd.to_string(), "-m", "--"])
            .args(["unshare", "-m", "--propagation", "private", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || comm(pid).as_deref() == Some("sleep") && ns_inode(pid) != ns_inode(dockerd),
            || format!("service {pid} never started"),
        );
        ServiceInDockerdNamespace(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ServiceInDockerdNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a systemd host showed: the socket's peer is the activator (systemd), dockerd lives
/// in a slave namespace of its own. mntreap must name the real dockerd everywhere and keep
/// its copy of a running container's layer, while it releases a service's copy.
#[test]
fn socket_activated_dockerd_in_a_slave_namespace_is_found_and_its_copy_kept() {
    let sb = Sandbox::new("activated");
    // systemd's MountFlags=slave: dockerd in its own namespace, a slave of the host's.
    sb.sh("mount --make-rshared /");
    let dk = DockerDaemon::start_activated(&sb, "actv", true, &["-m", "--propagation", "slave"]);
    dk.run("web");
    let merged = dk.merged("web");
    let dockerd = dk.pid();
    assert_ne!(dockerd, dk.socket_creator());
    assert_ne!(ns_inode(dockerd), ns_inode(sb.host_pid()));
    assert!(has_mount_at(dockerd, &merged));
    let service = ServiceInDockerdNamespace::start(dockerd);
    assert!(has_mount_at(service.pid(), &merged));
    let host = dk.host();
    let docker_args = ["--docker-host", host.as_str()];

    // Reports name the real daemon.
    let mut args = vec!["scan", "web"];
    args.extend(docker_args);
    let (code, doc) = sb.mntreap_json(&args, &[]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        doc["runtime"]["pid"].as_i64(),
        Some(dockerd as i64),
        "{doc:#}"
    );
    assert_eq!(doc["runtime"]["mnt_ns"].as_u64(), Some(ns_inode(dockerd)));
    let web_pid: i32 = dk
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "web"])
        .parse()
        .unwrap();
    for h in doc["holders"].as_array().unwrap() {
        if h["mnt_ns"].as_u64() == Some(ns_inode(dockerd)) {
            assert_eq!(h["role"], "runtime", "{h:#}");
        }
        // Everything in the container's own namespace is the container's.
        if h["mnt_ns"].as_u64() == Some(ns_inode(web_pid)) {
            assert_eq!(h["role"], "container", "{h:#}");
            assert_eq!(h["container"]["name"], "web", "{h:#}");
        }
    }

    // The node report does not call dockerd's copy of a running container leaked.
    let mut args = vec!["scan"];
    args.extend(docker_args);
    let (_, doc) = sb.mntreap_json(&args, &[]);
    for f in doc["findings"].as_array().unwrap() {
        assert_ne!(
            f["mnt_ns"].as_u64(),
            Some(ns_inode(dockerd)),
            "dockerd's own copy listed: {f:#}"
        );
    }

    // doctor names the real dockerd and the write-up-1 conflict, without Rust debug text.
    let mut args = vec!["doctor"];
    args.extend(docker_args);
    let (_, doc) = sb.mntreap_json(&args, &[]);
    let identity = doctor_check(&doc, "runtime-identity");
    assert_eq!(identity["status"], "ok", "{identity:#}");
    assert!(
        identity["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {dockerd}"))
    );
    let conflict = doctor_check(&doc, "mountflags-slave-live-restore");
    assert_eq!(conflict["status"], "problem", "{conflict:#}");
    assert!(
        conflict["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {dockerd}"))
    );
    let split = doctor_check(&doc, "split-namespaces");
    assert_eq!(split["status"], "ok", "no shim is stranded: {split:#}");
    let mut args = vec!["doctor"];
    args.extend(docker_args);
    let text = String::from_utf8_lossy(&sb.mntreap(&args).stdout).into_owned();
    assert!(!text.contains("Some(") && !text.contains("None"), "{text}");

    // Releasing the running container frees the service's copy and keeps dockerd's.
    let mut args = vec!["release", "web"];
    args.extend(docker_args);
    let (code, doc) = sb.mntreap_json(&args, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert!(
        !has_mount_at(service.pid(), &merged),
        "the service's copy is released"
    );
    assert!(
        has_mount_at(dockerd, &merged),
        "dockerd's copy of running web was unmounted"
    );
    dk.docker_ok(&["exec", "web", "true"]);
}

/// Evidence that disagrees (the daemon's pidfile names another live process): protect.
/// Nothing in any namespace that may be the runtime's is released; the report says why
/// and the exit is 1.
#[test]
fn disagreeing_evidence_protects_every_runtime_namespace() {
    let sb = Sandbox::new("unsure");
    let dk = DockerDaemon::start_activated(&sb, "unsr", false, &["-m", "--propagation", "slave"]);
    dk.run("web");
    dk.docker_ok(&["stop", "-t", "0", "web"]);
    let dockerd = dk.pid();
    // A stopped container's layer, mounted by hand in dockerd's namespace: the runtime's
    // copy that an established identity would release (the container is not running).
    let upper = dk.upper("web");
    let layer = upper.trim_end_matches("/diff").to_string();
    let merged = format!("{layer}/merged");
    let lower = std::fs::read_to_string(format!("{layer}/lower")).unwrap();
    let lowers: Vec<String> = lower
        .trim()
        .split(':')
        .map(|l| format!("{}/overlay2/{l}", dk.root()))
        .collect();
    let status = Command::new("nsenter")
        .args(["-t", &dockerd.to_string(), "-m", "--", "sh", "-c"])
        .arg(format!(
            "mkdir -p {merged} && exec mount -t overlay overlay -o \"$0\" {merged}"
        ))
        .arg(format!(
            "lowerdir={},upperdir={upper},workdir={layer}/work",
            lowers.join(":")
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let service = ServiceInDockerdNamespace::start(dockerd);
    assert!(has_mount_at(service.pid(), &merged));
    // The pidfile now names a live process that is not the daemon.
    std::fs::write(format!("{}/pid", dk.d()), sb.host_pid().to_string()).unwrap();

    let out = sb.mntreap_env(
        &["release", "web", "--docker-host", &dk.host(), "--json"],
        &[],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_documented(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    assert!(
        doc["runtime"]["identity"]["unsure"]
            .as_str()
            .is_some_and(|u| u.contains("pidfile")),
        "{doc:#}"
    );
    assert!(
        stderr(&out).contains("identity is unsure"),
        "{}",
        stderr(&out)
    );
    assert!(
        has_mount_at(dockerd, &merged),
        "a possible runtime namespace was touched"
    );
    assert!(
        !has_mount_at(service.pid(), &merged),
        "the service's copy still goes"
    );
    let _ = Command::new("nsenter")
        .args(["-t", &dockerd.to_string(), "-m", "--", "umount", &merged])
        .status();
}
