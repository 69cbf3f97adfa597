//! The CRI runtime service on the runtime's unix socket (k8s-cri bindings over tonic): pod
//! sandboxes and containers with their verbose status, and removal. Every call has the
//! same short deadline, and a list (pods x status calls) an overall one; a runtime that
//! hangs makes resolution go offline, never wait.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use super::entry::{Entry, SpecMount};
use crate::runtime::{Budget, Overrun};

/// Why a list failed: a call's error in the runtime's words, or the overall deadline.
#[derive(Debug)]
pub(super) enum ListFailure {
    Call(String),
    Overrun(Overrun),
}

/// A connected CRI client.
pub(super) struct Client {
    channel: Channel,
    timeout: Duration,
    /// `runtime_name runtime_version`, from the Version call.
    version: String,
}

impl Client {
    /// `runtime_name runtime_version`, from the Version call.
    pub(super) fn version(&self) -> &str {
        &self.version
    }

    /// Connects to `socket` and asks the runtime's version, within `timeout`.
    pub(super) fn connect(socket: &Path, timeout: Duration) -> Result<Client, String> {
        let rt = crate::runtime::blocking_runtime()?;
        let socket: PathBuf = socket.to_path_buf();
        rt.block_on(async {
            let endpoint = Endpoint::try_from("http://cri.invalid")
                .map_err(|e| e.to_string())?
                .connect_timeout(timeout)
                .timeout(timeout);
            let channel = tokio::time::timeout(
                timeout,
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                })),
            )
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| connect_error(&e))?;
            let version = tokio::time::timeout(
                timeout,
                RuntimeServiceClient::new(channel.clone()).version(VersionRequest::default()),
            )
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| status_text(&s, timeout))?
            .into_inner();
            Ok(Client {
                channel,
                timeout,
                version: format!("{} {}", version.runtime_name, version.runtime_version),
            })
        })
    }

    /// Runs one call with the deadline: the runtime's status, or its silence.
    fn run<T>(
        &self,
        timeout: Duration,
        f: impl AsyncFnOnce(RuntimeServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) -> Result<Result<T, tonic::Status>, String> {
        let rt = crate::runtime::blocking_runtime()?;
        let client = RuntimeServiceClient::new(self.channel.clone());
        rt.block_on(async { tokio::time::timeout(timeout, f(client)).await })
            .map_err(|_| format!("no answer within {timeout:?}"))
    }

    /// One call; any failure in the runtime's words.
    fn call<T>(
        &self,
        f: impl AsyncFnOnce(RuntimeServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) -> Result<T, String> {
        self.run(self.timeout, f)?
            .map_err(|s| status_text(&s, self.timeout))
    }

    /// One call of a list (`what` names it) within its deadline and the list's `budget`;
    /// `None` when the runtime says the object is not found (removed meanwhile).
    fn call_listed<T>(
        &self,
        budget: &mut Budget,
        what: &str,
        f: impl AsyncFnOnce(RuntimeServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) -> Result<Option<T>, ListFailure> {
        let timeout = budget.next(what).map_err(ListFailure::Overrun)?;
        let out = self.run(timeout, f);
        // A silence, or tonic's own deadline, cut short by the overall one is an overrun.
        let silent = match &out {
            Err(_) => true,
            Ok(Err(s)) => status_text(s, timeout).starts_with("no answer"),
            Ok(Ok(_)) => false,
        };
        if silent && let Some(over) = budget.silence(what, timeout) {
            return Err(ListFailure::Overrun(over));
        }
        let fail = |e: String| ListFailure::Call(format!("{what}: {e}"));
        match out.map_err(fail)? {
            Ok(v) => {
                budget.answered();
                Ok(Some(v))
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                budget.answered();
                Ok(None)
            }
            Err(s) => Err(fail(status_text(&s, timeout))),
        }
    }

    /// Every pod sandbox and container, with what their verbose status says, within the
    /// list's overall deadline.
    pub(super) fn entries(&self, overall: Duration) -> Result<Vec<Entry>, ListFailure> {
        let mut budget = Budget::new(self.timeout, overall);
        let pods = self.call_listed(&mut budget, "ListPodSandbox", async |mut c| {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map(|r| r.into_inner().items)
        });
        let pods = listed("ListPodSandbox", pods?)?;
        let containers = self.call_listed(&mut budget, "ListContainers", async |mut c| {
            c.list_containers(ListContainersRequest { filter: None })
                .await
                .map(|r| r.into_inner().containers)
        });
        let containers = listed("ListContainers", containers?)?;
        // Removed meanwhile: not listed. Any other failure fails the list: one left out
        // would make its mounts look orphaned.
        let mut out = Vec::new();
        for p in pods {
            let id = p.id.clone();
            let status = self.call_listed(
                &mut budget,
                &format!("PodSandboxStatus of {}", p.id),
                async |mut c| {
                    c.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose: true,
                    })
                    .await
                    .map(|r| r.into_inner())
                },
            )?;
            out.extend(status.map(|s| sandbox_entry(&p, &s.info)));
        }
        for c in containers {
            let id = c.id.clone();
            let status = self.call_listed(
                &mut budget,
                &format!("ContainerStatus of {}", c.id),
                async |mut cl| {
                    cl.container_status(ContainerStatusRequest {
                        container_id: id,
                        verbose: true,
                    })
                    .await
                    .map(|r| r.into_inner())
                },
            )?;
            out.extend(status.map(|s| container_entry(&c, s.status.as_ref(), &s.info)));
        }
        Ok(out)
    }

    /// RemoveContainer, or RemovePodSandbox (which stops it first), in the runtime's words.
    pub(super) fn remove(&self, id: &str, sandbox: bool) -> Result<(), String> {
        let id = id.to_string();
        if sandbox {
            self.call(async |mut c| {
                c.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
                    .map(|_| ())
            })
        } else {
            self.call(async |mut c| {
                c.remove_container(RemoveContainerRequest { container_id: id })
                    .await
                    .map(|_| ())
            })
        }
    }
}

/// A list call's answer: not found is no answer to a list.
fn listed<T>(what: &str, v: Option<T>) -> Result<T, ListFailure> {
    v.ok_or_else(|| ListFailure::Call(format!("{what}: not found")))
}

/// A gRPC status as the runtime said it; the channel's own deadline (tonic cancels the
/// call) reads as the silence it is.
fn status_text(s: &tonic::Status, timeout: Duration) -> String {
    match s.code() {
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            if s.message().contains("Timeout") =>
        {
            format!("no answer within {timeout:?}")
        }
        code => format!("{code:?}: {}", s.message()),
    }
}

fn connect_error(e: &tonic::transport::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The verbose `info` document (key `info`; older CRI-O put its keys at the top level).
fn info_doc(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    match info.get("info") {
        Some(text) => serde_json::from_str(text).unwrap_or_default(),
        None => {
            let map: serde_json::Map<String, serde_json::Value> = info
                .iter()
                .map(|(k, v)| {
                    let parsed = serde_json::from_str(v)
                        .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                    (k.clone(), parsed)
                })
                .collect();
            serde_json::Value::Object(map)
        }
    }
}

fn spec_mounts(info: &serde_json::Value) -> Vec<SpecMount> {
    info["runtimeSpec"]["mounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| SpecMount {
                    destination: m["destination"].as_str().unwrap_or_default().into(),
                    kind: m["type"].as_str().unwrap_or_default().into(),
                    source: m["source"].as_str().unwrap_or_default().into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn network_ns_path(info: &serde_json::Value) -> Option<String> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .map(String::from)
}

fn sandbox_entry(p: &PodSandbox, info: &std::collections::HashMap<String, String>) -> Entry {
    let doc = info_doc(info);
    let meta = p.metadata.clone().unwrap_or_default();
    Entry {
        id: p.id.clone(),
        sandbox: true,
        name: meta.name.clone(),
        pod_name: meta.name,
        pod_namespace: meta.namespace,
        pod_uid: meta.uid,
        sandbox_id: p.id.clone(),
        state: match PodSandboxState::try_from(p.state) {
            Ok(PodSandboxState::SandboxReady) => "ready",
            _ => "notready",
        }
        .into(),
        pid: doc["pid"].as_i64().filter(|&p| p > 0).map(|p| p as i32),
        snapshotter: doc["snapshotter"].as_str().unwrap_or_default().into(),
        root_path: doc["runtimeSpec"]["root"]["path"]
            .as_str()
            .map(String::from),
        mounts: spec_mounts(&doc),
        netns: network_ns_path(&doc).or_else(|| doc["netNamespacePath"].as_str().map(String::from)),
        volumes: Vec::new(),
    }
}

fn container_entry(
    c: &Container,
    status: Option<&ContainerStatus>,
    info: &std::collections::HashMap<String, String>,
) -> Entry {
    let doc = info_doc(info);
    let meta = c.metadata.clone().unwrap_or_default();
    let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
    Entry {
        id: c.id.clone(),
        sandbox: false,
        name: meta.name,
        pod_name: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        pod_uid: label("io.kubernetes.pod.uid"),
        sandbox_id: c.pod_sandbox_id.clone(),
        state: match ContainerState::try_from(c.state) {
            Ok(ContainerState::ContainerCreated) => "created",
            Ok(ContainerState::ContainerRunning) => "running",
            Ok(ContainerState::ContainerExited) => "exited",
            _ => "unknown",
        }
        .into(),
        pid: doc["pid"].as_i64().filter(|&p| p > 0).map(|p| p as i32),
        snapshotter: doc["snapshotter"].as_str().unwrap_or_default().into(),
        root_path: doc["runtimeSpec"]["root"]["path"]
            .as_str()
            .map(String::from),
        mounts: spec_mounts(&doc),
        netns: None,
        volumes: status
            .map(|s| s.mounts.iter().map(|m| m.host_path.clone()).collect())
            .unwrap_or_default(),
    }
}
