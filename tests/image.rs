//! The agent image the repository builds (deploy/image/build.sh): a `docker save` archive
//! with the static binary, loaded into a real dockerd and into that daemon's containerd in
//! Kubernetes' namespace, and run.

mod common;

use std::process::Command;

use common::docker::DockerDaemon;
use common::*;

#[test]
fn the_agent_image_loads_into_docker_and_containerd_and_runs() {
    let sb = Sandbox::new("image");
    let dk = DockerDaemon::start(&sb, "image", false, &[]);
    let tar = format!("{}/agent.tar", dk.d());
    let tag = format!("mntreap/agent:test-{}", std::process::id());
    build_agent_image(&tar, &tag);

    let loaded = dk.docker_ok(&["load", "-i", &tar]);
    assert!(loaded.contains(&tag), "{loaded}");
    let version = dk.docker_ok(&["run", "--rm", "--network", "none", &tag, "--version"]);
    assert!(version.starts_with("mntreap "), "{version}");
    // Its default command is the agent.
    let cmd = dk.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.Entrypoint}} {{.Config.Cmd}}",
        &tag,
    ]);
    assert_eq!(cmd, "[/mntreap] [agent]");

    // containerd takes the same archive (the daemon's own containerd, k8s.io namespace).
    let address = format!("{}/exec/containerd/containerd.sock", dk.d());
    let import = Command::new("ctr")
        .args([
            "--address",
            &address,
            "-n",
            "k8s.io",
            "images",
            "import",
            &tar,
        ])
        .output()
        .unwrap();
    assert!(import.status.success(), "ctr import: {}", stderr(&import));
    let list = Command::new("ctr")
        .args(["--address", &address, "-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&tag),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
}
