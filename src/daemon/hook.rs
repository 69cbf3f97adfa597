//! The preStop hook's server side: a world-connectable unix socket where a pod asks the
//! agent to release its own container's copies. The caller is identified by the kernel and
//! the runtime's records together (see [`crate::runtime::caller`]), never by its request.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tracing::info_span;

use super::agent_state::Agent;
use super::serve::{accept_loop, write_within};
use crate::report::doc::{FailedDoc, HookReply, HookRequest, ReleaseOutcome};
use crate::runtime::ContainerRuntime;
use crate::runtime::cri::CriOptions;
use crate::runtime::docker::DockerOptions;
use crate::runtime::model::{Container, Daemon, RuntimeKind};
use crate::runtime::scope::short_id;

/// A hook request is one JSON line; anything longer or slower is refused.
const HOOK_REQUEST_MAX: u64 = 4096;
const HOOK_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A caller that does not read its reply loses it (and its slot) after this long.
const HOOK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn serve(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let log = agent.log_budget.clone();
    accept_loop(listener, &log, "hook socket", |stream| {
        // World-connectable: a bounded number of requests at once; past it, closed.
        let peer = stream.peer_cred().ok().and_then(|c| c.pid());
        let Some(permit) = agent.hook_slots.admit(
            &agent.log_budget,
            "hook socket",
            &format!("peer pid {peer:?}"),
        ) else {
            return;
        };
        let accepted_at = crate::runtime::caller::boot_ticks(&agent.config.base.proc_root);
        let agent = agent.clone();
        tokio::spawn(async move {
            let _permit = permit;
            answer(&agent, stream, peer, accepted_at).await;
        });
    })
    .await
}

/// Reads one request line from `stream` and writes the reply, each within its deadline.
async fn answer(
    agent: &Arc<Agent>,
    stream: tokio::net::UnixStream,
    peer: Option<i32>,
    accepted_at: Option<u64>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One short line, soon: the socket is world-connectable.
    let mut reader = BufReader::new(read.take(HOOK_REQUEST_MAX));
    let reply = match tokio::time::timeout(HOOK_READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.ends_with('\n') => {
            let a = agent.clone();
            agent
                .hook_blocking
                .run(move || hook(&a, peer, accepted_at, &line))
                .await
                .unwrap_or_else(|e| HookReply::refused(e.to_string()))
        }
        _ => HookReply::refused("no request line within 4 KiB and 5 s"),
    };
    let line = serde_json::to_string(&reply).unwrap_or_default();
    let _ = write_within(
        &mut write,
        format!("{line}\n").as_bytes(),
        HOOK_WRITE_TIMEOUT,
    )
    .await;
}

/// The container `pid` is a process of, as the kernel and the runtime's records say
/// together (see [`crate::runtime::caller`]): the cgroup names only which containers to check.
fn caller_container(
    proc_root: &Path,
    runtime: &dyn ContainerRuntime,
    pid: i32,
    accepted_at: Option<u64>,
) -> Result<Container, String> {
    let facts = crate::runtime::caller::facts(proc_root, pid)
        .ok_or_else(|| crate::runtime::caller::CallerError::Gone(pid).to_string())?;
    // The pid is the connector's only if that process existed when it connected.
    if accepted_at.is_some_and(|t| facts.start > t + 1) {
        return Err(crate::runtime::caller::CallerError::Replaced(pid).to_string());
    }
    let candidates = crate::runtime::caller::candidate_ids(&facts.cgroup);
    let mut why = crate::runtime::caller::CallerError::NoContainer {
        pid,
        cgroup: facts.cgroup.trim().replace('\n', " "),
    }
    .to_string();
    for id in candidates {
        let Some(c) = runtime
            .resolve(std::slice::from_ref(&id))
            .ok()
            .and_then(|v| v.into_iter().find(|c| c.id == id))
        else {
            why = format!(
                "caller pid {pid}: its cgroup names container {id}, which the runtime does not know"
            );
            continue;
        };
        match crate::runtime::caller::verify(proc_root, &facts, &c.name, &c.id, c.pid) {
            Ok(()) => {
                crate::runtime::caller::still_the_same(proc_root, &facts)
                    .map_err(|e| e.to_string())?;
                return Ok(c);
            }
            Err(e) => why = e.to_string(),
        }
    }
    Err(why)
}

fn hook(agent: &Agent, peer: Option<i32>, accepted_at: Option<u64>, line: &str) -> HookReply {
    let refuse = |msg: String| {
        agent.warn_limited("hook request refused", &format!("peer {peer:?}: {msg}"));
        HookReply::refused(crate::daemon::clip(&msg, 1024))
    };
    let req: HookRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return refuse(format!("malformed hook request: {e}")),
    };
    if req.op != "pre-stop" {
        return refuse(format!("unknown hook operation {:?}", req.op));
    }
    let Some(pid) = peer else {
        return refuse("no peer credentials on the hook socket".into());
    };
    // The runtime's records, read offline: its API may be what hangs.
    let docker = DockerOptions {
        offline: true,
        ..agent.config.docker.clone()
    };
    let cri = CriOptions {
        offline: true,
        ..agent.config.cri.clone()
    };
    let runtime = match crate::runtime::connect(agent.config.runtime, &docker, &cri) {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    let runtime = runtime.as_ref();
    let daemon = runtime.daemon();
    let container = match caller_container(&agent.config.base.proc_root, runtime, pid, accepted_at)
    {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    // The caller may name its own container, a sibling in its Kubernetes pod, or (CRI) its
    // pod; with no name, Docker releases the caller's container and CRI the caller's pod.
    let asked = match (&req.container, &container.pod_uid) {
        (Some(asked), _) => Some(asked.clone()),
        (None, Some(uid)) if daemon.runtime != RuntimeKind::Docker => Some(uid.clone()),
        (None, _) => None,
    };
    let targets: Vec<Container> = match &asked {
        None => vec![container.clone()],
        Some(asked) => {
            let same_pod = |t: &Container| {
                t.id == container.id || (t.pod_uid.is_some() && t.pod_uid == container.pod_uid)
            };
            match runtime.resolve(std::slice::from_ref(asked)) {
                Ok(found) if !found.is_empty() && found.iter().all(same_pod) => found,
                _ => {
                    return refuse(format!(
                        "{asked:?} is not the caller's container ({} {}) nor in its pod: a pod may release only its own containers",
                        container.name,
                        short_id(&container.id)
                    ));
                }
            }
        }
    };
    let span = info_span!("agent", trigger = "hook pre-stop", container = %container.name);
    let _g = span.enter();
    let (releases, failed) = release_each(agent, daemon, &targets);
    HookReply {
        ok: failed.is_empty(),
        error: (!failed.is_empty())
            .then(|| crate::daemon::clip(&failed.join("; "), 1024).to_string()),
        container: Some(crate::report::containers::container_ref(&container)),
        releases,
    }
}

/// Each container as `release CONTAINER` (and `release POD`) releases it: the same request,
/// scope and plan, so what `scan POD` shows is what the hook does. The outcomes, and the
/// failures in words.
fn release_each(
    agent: &Agent,
    daemon: &Daemon,
    targets: &[Container],
) -> (Vec<ReleaseOutcome>, Vec<String>) {
    let mut releases = Vec::new();
    let mut failed = Vec::new();
    // The kept tables, unless a sweep or another release has them: then read cold.
    let index = agent
        .index
        .as_ref()
        .and_then(crate::engine::index::SharedIndex::for_release);
    for t in targets {
        let started = Instant::now();
        let released = crate::ops::release_container(
            &agent.config.base,
            daemon,
            t,
            false,
            false,
            index.as_deref(),
        );
        match released {
            Ok(rel) => {
                agent.metrics.count(&rel, started.elapsed());
                let mut doc = crate::report::release_doc(&rel);
                doc.container = Some(t.clone());
                releases.push(ReleaseOutcome::Released(doc));
            }
            Err(e) => {
                agent.warn_limited("hook release failed", &format!("{}: {e}", t.name));
                failed.push(format!("{}: {e}", t.name));
                releases.push(ReleaseOutcome::Failed(FailedDoc {
                    error: e.to_string(),
                    container: Some(t.clone()),
                }));
            }
        }
    }
    (releases, failed)
}
