//! A fake CRI runtime: a process whose executable is named `containerd` (this test binary,
//! copied) that holds a CRI socket and serves a real gRPC RuntimeService (k8s-cri's
//! server side over tonic) with whatever pods a test says, however slowly it says, or
//! hanging after some answers. It is what mntreap establishes as containerd: a root
//! process named containerd holding the socket's listener.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use k8s_cri::v1::*;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::common::Sandbox;

/// The environment variable that makes the `#[ignore]`d serving test serve this spec.
pub const SPEC_ENV: &str = "MNTREAP_FAKE_CRI_SPEC";

/// What the fake runtime answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FakeSpec {
    pub socket: String,
    pub pods: Vec<FakePod>,
    /// Every status call waits this long before it answers.
    pub status_delay_ms: u64,
    /// After this many answered calls (Version included), every call hangs.
    pub hang_after: Option<usize>,
}

/// A pod sandbox and one container, as the runtime describes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FakePod {
    pub id: String,
    pub uid: String,
    pub name: String,
    /// The OCI spec's `root.path` of the sandbox (and of the container).
    pub root_path: String,
    pub shm_source: String,
    pub netns: String,
    pub container_id: String,
    /// The container's CRI mounts (host paths).
    pub volumes: Vec<String>,
}

impl FakePod {
    /// A pod whose every path is what a lying runtime would say.
    pub fn new(n: u8, uid: &str, name: &str) -> FakePod {
        FakePod {
            id: format!("{n:02x}").repeat(32),
            uid: uid.into(),
            name: name.into(),
            root_path: "rootfs".into(),
            shm_source: "/".into(),
            netns: "/etc".into(),
            container_id: format!("c{n:02x}").repeat(21) + "c",
            volumes: vec!["/".into(), "/etc".into()],
        }
    }
}

struct Fake {
    spec: FakeSpec,
    answered: AtomicUsize,
}

impl Fake {
    /// Counts an answer, or hangs for good once the spec says so.
    async fn answer(&self) {
        let n = self.answered.fetch_add(1, Ordering::SeqCst);
        if self.spec.hang_after.is_some_and(|h| n >= h) {
            std::future::pending::<()>().await;
        }
    }

    async fn status_delay(&self) {
        tokio::time::sleep(Duration::from_millis(self.spec.status_delay_ms)).await;
    }

    fn pod(&self, id: &str) -> Result<&FakePod, Status> {
        self.spec
            .pods
            .iter()
            .find(|p| p.id == id || p.container_id == id)
            .ok_or_else(|| Status::not_found(id.to_string()))
    }
}

fn info(doc: serde_json::Value) -> HashMap<String, String> {
    HashMap::from([("info".to_string(), doc.to_string())])
}

fn labels(p: &FakePod) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".into(), p.name.clone()),
        ("io.kubernetes.pod.namespace".into(), "default".into()),
        ("io.kubernetes.pod.uid".into(), p.uid.clone()),
    ])
}

/// The trait's calls the fake answers, then every other one as unimplemented.
macro_rules! runtime_service {
    ({ $($answered:tt)* } unimplemented { $($name:ident($req:ident) -> $resp:ty;)* }) => {
        #[tonic::async_trait]
        impl RuntimeService for Fake {
            $($answered)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}

runtime_service!({
    type GetContainerEventsStream =
        tonic::codegen::tokio_stream::Empty<Result<ContainerEventResponse, Status>>;

    async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        self.answer().await;
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "fake".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        self.answer().await;
        let items = self
            .spec
            .pods
            .iter()
            .map(|p| PodSandbox {
                id: p.id.clone(),
                metadata: Some(PodSandboxMetadata {
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                state: PodSandboxState::SandboxReady as i32,
                labels: labels(p),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        self.answer().await;
        self.status_delay().await;
        let p = self.pod(&r.get_ref().pod_sandbox_id)?;
        Ok(Response::new(PodSandboxStatusResponse {
            info: info(serde_json::json!({
                "pid": 0,
                "snapshotter": "overlayfs",
                "runtimeSpec": {
                    "root": {"path": p.root_path},
                    "mounts": [{"destination": "/dev/shm", "type": "bind", "source": p.shm_source}],
                    "linux": {"namespaces": [{"type": "network", "path": p.netns}]},
                },
            })),
            ..Default::default()
        }))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.answer().await;
        let containers = self
            .spec
            .pods
            .iter()
            .map(|p| k8s_cri::v1::Container {
                id: p.container_id.clone(),
                pod_sandbox_id: p.id.clone(),
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                state: ContainerState::ContainerRunning as i32,
                labels: labels(p),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        self.answer().await;
        self.status_delay().await;
        let p = self.pod(&r.get_ref().container_id)?;
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ContainerStatus {
                id: p.container_id.clone(),
                mounts: p
                    .volumes
                    .iter()
                    .map(|v| Mount {
                        host_path: v.clone(),
                        container_path: "/data".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            info: info(serde_json::json!({
                "pid": 0,
                "snapshotter": "overlayfs",
                "runtimeSpec": {"root": {"path": p.root_path}},
            })),
        }))
    }
} unimplemented {
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
    create_container(CreateContainerRequest) -> CreateContainerResponse;
    start_container(StartContainerRequest) -> StartContainerResponse;
    stop_container(StopContainerRequest) -> StopContainerResponse;
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse;
    exec(ExecRequest) -> ExecResponse;
    attach(AttachRequest) -> AttachResponse;
    port_forward(PortForwardRequest) -> PortForwardResponse;
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
    status(StatusRequest) -> StatusResponse;
    checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
    get_container_events(GetEventsRequest) -> Self::GetContainerEventsStream;
    list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
    list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
});

/// Serves the spec at `$MNTREAP_FAKE_CRI_SPEC` until killed; returns at once without it.
pub fn serve_if_asked() {
    let Ok(path) = std::env::var(SPEC_ENV) else {
        return;
    };
    let spec: FakeSpec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = std::fs::remove_file(&spec.socket);
        let listener = tokio::net::UnixListener::bind(&spec.socket).unwrap();
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let fake = Fake {
            spec,
            answered: AtomicUsize::new(0),
        };
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(fake))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
}

/// The fake runtime, started in a sandbox's namespace; killed by pid on drop.
pub struct FakeRuntime {
    pub dir: PathBuf,
    child: Child,
}

impl FakeRuntime {
    /// Starts the fake serving `spec` (its socket in the fake's directory, outside the
    /// sandbox's tmpfs so that this process sees it too), as `<dir>/containerd`: the test
    /// binary `test` names, re-run for its `#[ignore]`d serving function `serving_test`.
    pub fn start(sb: &Sandbox, name: &str, serving_test: &str, mut spec: FakeSpec) -> FakeRuntime {
        let dir = PathBuf::from(format!("/tmp/mntreap-fake-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("containerd");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        spec.socket = dir.join("containerd.sock").to_string_lossy().into_owned();
        let spec_file = dir.join("spec.json");
        std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("fake.log")).unwrap();
        let child = Command::new("nsenter")
            .args(["-t", &sb.host_pid().to_string(), "-m", "--"])
            .arg(&exe)
            .args(["--exact", serving_test, "--ignored", "--nocapture"])
            .env(SPEC_ENV, &spec_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let fake = FakeRuntime { dir, child };
        let sock = spec.socket.clone();
        crate::common::wait_until(
            Duration::from_secs(20),
            Duration::from_millis(20),
            || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
            || format!("the fake runtime never listened: {}", fake.log()),
        );
        fake
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}/containerd.sock", self.dir.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fake.log")).unwrap_or_default()
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
