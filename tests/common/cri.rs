//! A private containerd with its CRI plugin per test (Debian's containerd 1.6): own root,
//! state and socket, started inside a sandbox's namespace, with a busybox image imported
//! into Kubernetes' namespace (`k8s.io`) as the sandbox ("pause") image and the workload
//! image. Tests drive CRI as kubelet does (host-network pods, so no CNI), through the
//! `k8s-cri` bindings. Torn down by pid: pods stopped and removed through CRI, then
//! containerd, its shims and their containers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Sandbox;

/// The image both sandboxes and containers run: busybox, whose default command sleeps.
pub const IMAGE: &str = "mntreap.test/busybox:1";

/// A pod as kubelet describes it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// kubelet's root (`/var/lib/kubelet` on a node), for the pod's volume paths.
    pub kubelet_root: String,
    /// Whether the cgroup parent follows the systemd driver's layout.
    pub systemd_cgroup: bool,
    /// `hostPID: true`.
    pub host_pid: bool,
    /// A pod network namespace through CNI (`hostNetwork: false`); needs
    /// [`CriDaemon::enable_cni`].
    pub pod_network: bool,
}

impl Pod {
    pub fn new(name: &str, uid: &str, kubelet_root: &str) -> Pod {
        Pod {
            name: name.into(),
            namespace: "default".into(),
            uid: uid.into(),
            kubelet_root: kubelet_root.into(),
            systemd_cgroup: false,
            host_pid: false,
            pod_network: false,
        }
    }

    /// `<kubelet>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>`.
    pub fn empty_dir(&self, volume: &str) -> String {
        format!(
            "{}/pods/{}/volumes/kubernetes.io~empty-dir/{volume}",
            self.kubelet_root, self.uid
        )
    }

    fn cgroup_parent(&self) -> String {
        if self.systemd_cgroup {
            // kubelet's systemd driver: a slice (systemd creates its parents).
            return format!(
                "kubepods-besteffort-pod{}.slice",
                self.uid.replace('-', "_")
            );
        }
        // cgroupfs driver (containerd's default, `SystemdCgroup = false`).
        format!("/kubepods/besteffort/pod{}", self.uid)
    }

    fn config(&self, log_dir: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            // Host-network pods keep the node's hostname (kubelet sets none).
            log_directory: log_dir.into(),
            labels: HashMap::from([
                ("io.kubernetes.pod.name".into(), self.name.clone()),
                ("io.kubernetes.pod.namespace".into(), self.namespace.clone()),
                ("io.kubernetes.pod.uid".into(), self.uid.clone()),
            ]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(self.host_pid, self.pod_network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn namespaces(host_pid: bool, pod_network: bool) -> NamespaceOption {
    NamespaceOption {
        network: if pod_network {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Node as i32
        },
        pid: if host_pid {
            NamespaceMode::Node as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

pub struct CriDaemon {
    /// The private daemon's directory; for an attached runtime, a directory of the node's
    /// for pod logs. Both as containerd names paths.
    pub dir: PathBuf,
    /// The CRI socket, as this process reaches it.
    sock: String,
    /// How this process reaches a path containerd names: empty for a private daemon,
    /// `/proc/<pid>/root` for a booted guest's.
    view: String,
    sandbox_pid: i32,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pods: std::cell::RefCell<HashMap<String, Pod>>,
}

const CONFIG: &str = r#"version = 2
root = "@D@/root"
state = "@D@/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "@D@/containerd.sock"
[ttrpc]
  address = "@D@/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "mntreap.test/busybox:1"
  disable_apparmor = true
  # A sandbox's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which CI's root may lack:
  # clamp to containerd's own, as on nodes that run containerd unprivileged.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "@D@/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"#;

/// A `docker save` archive of busybox-static whose command sleeps (sandboxes run it).
const IMAGE_SCRIPT: &str = r#"
import hashlib, io, json, sys, tarfile
busybox, out, tag = sys.argv[1:4]
def info(name, **kw):
    i = tarfile.TarInfo(name); i.mtime = 0
    for k, v in kw.items(): setattr(i, k, v)
    return i
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    for d in ["bin", "tmp", "data", "dev", "proc", "sys", "etc"]:
        t.addfile(info(d, type=tarfile.DIRTYPE, mode=0o755))
    data = open(busybox, "rb").read()
    t.addfile(info("bin/busybox", size=len(data), mode=0o755), io.BytesIO(data))
    for l in ["sh", "sleep", "cat", "ls", "touch", "echo", "true", "mount"]:
        t.addfile(info("bin/" + l, type=tarfile.SYMTYPE, linkname="busybox"))
layer = layer.getvalue()
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
with tarfile.open(out, mode="w") as t:
    for name, data in [(cname, config), ("layer.tar", layer),
                       ("manifest.json", json.dumps([{"Config": cname, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode())]:
        t.addfile(info(name, size=len(data), mode=0o644), io.BytesIO(data))
"#;

impl CriDaemon {
    pub fn start(sb: &Sandbox, name: &str) -> CriDaemon {
        let dir = PathBuf::from(format!("/tmp/mntreap-cri-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["root", "state", "cni-bin", "cni-conf", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut d = CriDaemon {
            sock: format!("{}/containerd.sock", dir.display()),
            dir,
            view: String::new(),
            sandbox_pid: sb.host_pid(),
            child: None,
            rt,
            pods: Default::default(),
        };
        d.spawn();
        d.import_image();
        d
    }

    /// The CRI of a runtime this test did not start (a booted guest's containerd), reached
    /// through `view` (`/proc/<guest pid 1>/root`): its socket at `sock` and a directory
    /// `dir` for pod logs, both as the guest names them. The busybox image is imported.
    /// Dropping it stops and removes the pods it ran, nothing else.
    pub fn attach(view: &str, sock: &str, dir: &str) -> CriDaemon {
        std::fs::create_dir_all(format!("{view}{dir}")).unwrap();
        let d = CriDaemon {
            dir: dir.into(),
            sock: format!("{view}{sock}"),
            view: view.into(),
            sandbox_pid: 0,
            child: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            pods: Default::default(),
        };
        d.import_image();
        d
    }

    fn attached(&self) -> bool {
        !self.view.is_empty()
    }

    pub fn d(&self) -> String {
        self.dir.to_str().unwrap().to_string()
    }

    pub fn sock(&self) -> String {
        self.sock.clone()
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.sock())
    }

    /// containerd's state directory (task bundles live below it).
    pub fn state(&self) -> String {
        format!("{}/state", self.d())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("containerd running").id() as i32
    }

    /// Starts containerd (again) and waits until CRI answers.
    pub fn spawn(&mut self) {
        let d = self.d();
        std::fs::write(format!("{d}/config.toml"), CONFIG.replace("@D@", &d)).unwrap();
        let _ = std::fs::remove_file(self.sock());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{d}/containerd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .args(["-t", &self.sandbox_pid.to_string(), "-m", "--"])
            .args(["containerd", "--config", &format!("{d}/config.toml")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = self.rt.block_on(async {
                let mut c = RuntimeServiceClient::new(self.channel().await.ok()?);
                c.version(VersionRequest::default()).await.ok()
            });
            if up.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        if self.attached() {
            return "(the runtime's log is the node's journal)".into();
        }
        std::fs::read_to_string(format!("{}/containerd.log", self.d())).unwrap_or_default()
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let sock = self.sock();
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
    }

    fn runtime<T>(
        &self,
        f: impl AsyncFnOnce(RuntimeServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) -> Result<T, String> {
        self.rt.block_on(async {
            let channel = self.channel().await.map_err(|e| e.to_string())?;
            f(RuntimeServiceClient::new(channel))
                .await
                .map_err(|s| s.message().to_string())
        })
    }

    fn import_image(&self) {
        let tar = format!("{}{}/busybox.tar", self.view, self.d());
        let out = Command::new("python3")
            .args(["-c", IMAGE_SCRIPT, &super::which("busybox"), &tar, IMAGE])
            .output()
            .unwrap();
        assert!(out.status.success(), "image: {}", super::stderr(&out));
        self.ctr_ok(&["images", "import", &tar]);
        // CRI sees it under the tag kubelet would ask for.
        let listed = self.rt.block_on(async {
            let mut c = ImageServiceClient::new(self.channel().await.unwrap());
            c.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
        });
        assert!(listed.is_some(), "CRI does not see {IMAGE}");
    }

    /// Gives pods a network namespace through CNI (Debian's containernetworking-plugins):
    /// point-to-point veths with addresses from a private range, no bridge, no iptables.
    pub fn enable_cni(&self) {
        let conf = format!(
            r#"{{"cniVersion": "0.4.0", "name": "mntreap-test", "plugins": [{{"type": "ptp",
              "ipMasq": false, "ipam": {{"type": "host-local", "subnet": "10.251.{}.0/24",
              "dataDir": "{}/cni-ipam"}}}}]}}"#,
            std::process::id() % 250,
            self.d()
        );
        std::fs::write(format!("{}/cni-conf/10-mntreap.conflist", self.d()), conf).unwrap();
        // containerd picks the configuration up within a few seconds.
        std::thread::sleep(Duration::from_secs(3));
    }

    /// `ctr -n k8s.io ARGS` against this containerd; panics on failure.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args(["--address", &self.sock(), "-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            super::stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// RunPodSandbox, as kubelet does for a host-network pod; returns the sandbox id.
    pub fn run_pod(&self, pod: &Pod) -> String {
        let log_dir = format!("{}/logs/{}", self.d(), pod.uid);
        std::fs::create_dir_all(format!("{}{log_dir}", self.view)).unwrap();
        let config = pod.config(&log_dir);
        let id = self
            .runtime(async |mut c| {
                c.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
            })
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}\n{}", pod.name, self.log()));
        self.pods.borrow_mut().insert(id.clone(), pod.clone());
        id
    }

    /// CreateContainer + StartContainer with bind mounts (host path, container path);
    /// returns the container id.
    pub fn run_container(&self, pod_id: &str, name: &str, mounts: &[(&str, &str)]) -> String {
        self.run_container_with(pod_id, name, mounts, &[])
    }

    /// [`CriDaemon::run_container`] with a command (default: the image's, which sleeps).
    pub fn run_container_with(
        &self,
        pod_id: &str,
        name: &str,
        mounts: &[(&str, &str)],
        command: &[&str],
    ) -> String {
        self.run_image(pod_id, name, IMAGE, mounts, command, &[])
    }

    /// A container of `image` with a command (entrypoint) and args, as a pod spec's
    /// `command` and `args` give them.
    pub fn run_image(
        &self,
        pod_id: &str,
        name: &str,
        image: &str,
        mounts: &[(&str, &str)],
        command: &[&str],
        args: &[&str],
    ) -> String {
        self.run_spec(pod_id, name, image, mounts, command, args, &[], &[])
    }

    /// The general form: also environment variables and capabilities added (all others
    /// dropped when any are given), as a pod spec's securityContext says.
    #[allow(clippy::too_many_arguments)]
    pub fn run_spec(
        &self,
        pod_id: &str,
        name: &str,
        image: &str,
        mounts: &[(&str, &str)],
        command: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        caps_add: &[&str],
    ) -> String {
        let pod = self.pods.borrow()[pod_id].clone();
        let log_dir = format!("{}/logs/{}", self.d(), pod.uid);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            log_path: format!("{name}.log"),
            command: command.iter().map(|c| c.to_string()).collect(),
            args: args.iter().map(|c| c.to_string()).collect(),
            labels: HashMap::from([
                ("io.kubernetes.container.name".into(), name.into()),
                ("io.kubernetes.pod.name".into(), pod.name.clone()),
                ("io.kubernetes.pod.namespace".into(), pod.namespace.clone()),
                ("io.kubernetes.pod.uid".into(), pod.uid.clone()),
            ]),
            mounts: mounts
                .iter()
                .map(|(host, inside)| Mount {
                    host_path: (*host).into(),
                    container_path: (*inside).into(),
                    ..Default::default()
                })
                .collect(),
            envs: env
                .iter()
                .map(|(k, v)| KeyValue {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(pod.host_pid, pod.pod_network)),
                    capabilities: (!caps_add.is_empty()).then(|| Capability {
                        add_capabilities: caps_add.iter().map(|c| c.to_string()).collect(),
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_config = pod.config(&log_dir);
        let pod_id = pod_id.to_string();
        self.runtime(async |mut c| {
            let id = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await?
                .into_inner()
                .container_id;
            c.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            Ok(id)
        })
        .unwrap_or_else(|e| panic!("container {name}: {e}\n{}", self.log()))
    }

    /// The container's init pid, from CRI's verbose status.
    pub fn container_pid(&self, id: &str) -> i32 {
        let id = id.to_string();
        let info = self
            .runtime(async |mut c| {
                c.container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await
                .map(|r| r.into_inner().info)
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
        v["pid"].as_i64().unwrap() as i32
    }

    /// The container's state and exit code, from CRI's status.
    pub fn container_exit(&self, id: &str) -> (i32, i32) {
        let id = id.to_string();
        self.runtime(async |mut c| {
            c.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .map(|r| {
                let s = r.into_inner().status.unwrap_or_default();
                (s.state, s.exit_code)
            })
        })
        .unwrap()
    }

    /// ExecSync, as kubelet runs an exec probe: the exit code, stdout and stderr.
    pub fn exec_sync(&self, id: &str, cmd: &[String], timeout_s: i64) -> (i32, String, String) {
        let (id, cmd) = (id.to_string(), cmd.to_vec());
        self.runtime(async |mut c| {
            c.exec_sync(ExecSyncRequest {
                container_id: id,
                cmd,
                timeout: timeout_s,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout).into_owned(),
                    String::from_utf8_lossy(&r.stderr).into_owned(),
                )
            })
        })
        .unwrap()
    }

    pub fn stop_container(&self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.runtime(async |mut c| {
            c.stop_container(StopContainerRequest {
                container_id: id,
                timeout: 0,
            })
            .await
            .map(|_| ())
        })
    }

    /// StopContainer with a gRPC deadline: containerd answers only once the task is deleted,
    /// and a deletion that fails keeps the call waiting (as kubelet's would).
    pub fn stop_container_within(&self, id: &str, deadline: Duration) -> Result<(), String> {
        let id = id.to_string();
        self.runtime(async |mut c| {
            let mut req = tonic::Request::new(StopContainerRequest {
                container_id: id,
                timeout: 0,
            });
            req.set_timeout(deadline);
            c.stop_container(req).await.map(|_| ())
        })
    }

    pub fn remove_container(&self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.runtime(async |mut c| {
            c.remove_container(RemoveContainerRequest { container_id: id })
                .await
                .map(|_| ())
        })
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.runtime(async |mut c| {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ())
        })
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.runtime(async |mut c| {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ())
        })
    }

    /// Pod sandbox ids CRI lists (all states).
    pub fn pods(&self) -> Vec<String> {
        self.runtime(async |mut c| {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
        })
        .unwrap()
    }

    /// Container ids CRI lists (all states).
    pub fn containers(&self) -> Vec<String> {
        self.runtime(async |mut c| {
            c.list_containers(ListContainersRequest { filter: None })
                .await
                .map(|r| {
                    r.into_inner()
                        .containers
                        .into_iter()
                        .map(|c| c.id)
                        .collect()
                })
        })
        .unwrap()
    }

    /// Pids of the processes this containerd started (shims), found by our unique
    /// directory in their command lines, and their descendants (the containers).
    fn descendants(&self) -> Vec<i32> {
        super::docker::descendants_of_dir(&self.d())
    }

    pub fn stop_containerd(&mut self, signal: &str) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for CriDaemon {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) containerd must run again to be stopped.
        self.stop_containerd("-CONT");
        let pods: Vec<String> = self.pods.borrow().keys().cloned().collect();
        if self.child.is_some() || self.attached() {
            for id in &pods {
                let _ = self.stop_pod(id);
                let _ = self.remove_pod(id);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.attached() {
            return;
        }
        for pid in self.descendants() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        super::remove_daemon_dir(self.sandbox_pid, &self.dir);
    }
}
