//! `mntreap agent`: the node agent (a DaemonSet on Kubernetes nodes).
//!
//! - follows the daemon's `die` events and releases a container's foreign copies;
//! - sweeps every `--sweep-interval` seconds over the node-wide report and releases the
//!   leaked and orphaned foreign copies it lists: never dockerd's copy of a running
//!   container, never a container's own root, never a copy in use (those are counted);
//!   `--exclude` leaves chosen namespaces and processes alone;
//! - serves Prometheus metrics and `/healthz` on `--metrics-addr`;
//! - serves the preStop hook on a unix socket: the caller is identified by the socket's
//!   peer credentials (pid, then its cgroup, then its container), and only the caller's
//!   own container's copies are released.
//!
//! Every unmount is atomic and verified against what the scan saw, so a kill at any point
//! leaves each target either released or still there for the next sweep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{info, info_span, warn};

use crate::engine::release::{self, Outcome, Scope};
use crate::engine::scan::ScanRequest;
use crate::runtime::docker::{self, Docker, DockerOptions};

/// What `--exclude` names: a namespace inode, a pid, or a command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclude {
    Namespace(u64),
    Pid(i32),
    Comm(String),
}

impl std::str::FromStr for Exclude {
    type Err = String;
    fn from_str(s: &str) -> Result<Exclude, String> {
        let bad = || format!("{s:?}: expected ns:<inode>, pid:<pid> or comm:<name>");
        match s.split_once(':') {
            Some(("ns", v)) => v.parse().map(Exclude::Namespace).map_err(|_| bad()),
            Some(("pid", v)) => v.parse().map(Exclude::Pid).map_err(|_| bad()),
            Some(("comm", v)) if !v.is_empty() => Ok(Exclude::Comm(v.into())),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub sweep: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub hook_socket: Option<PathBuf>,
    pub exclude: Vec<Exclude>,
    pub events: bool,
    pub docker: DockerOptions,
    pub base: ScanRequest,
}

/// The agent's metrics (conventional Prometheus names).
struct Metrics {
    registry: Registry,
    sweeps: Counter,
    leaks: Gauge,
    in_use: Gauge,
    released: Counter,
    failed: Counter,
    sweep_seconds: Histogram,
    release_seconds: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("mntreap"),
            sweeps: Counter::default(),
            leaks: Gauge::default(),
            in_use: Gauge::default(),
            released: Counter::default(),
            failed: Counter::default(),
            sweep_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            release_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        let registry = &mut m.registry;
        registry.register("sweeps", "Sweeps completed", m.sweeps.clone());
        registry.register(
            "leaked_copies",
            "Leaked or orphaned foreign copies found by the last sweep",
            m.leaks.clone(),
        );
        registry.register(
            "in_use_copies",
            "Foreign copies left alone because processes use them as root",
            m.in_use.clone(),
        );
        registry.register("copies_released", "Copies unmounted", m.released.clone());
        registry.register("release_failures", "Unmounts that failed", m.failed.clone());
        registry.register(
            "sweep_duration_seconds",
            "Time a sweep took",
            m.sweep_seconds.clone(),
        );
        registry.register(
            "release_duration_seconds",
            "Time a release (events, hook, sweep) took",
            m.release_seconds.clone(),
        );
        m
    }

    fn count(&self, results: &[release::ActionResult], took: Duration) {
        for r in results {
            match r.outcome {
                Outcome::Unmounted | Outcome::Detached { .. } => {
                    self.released.inc();
                }
                Outcome::Failed { .. } => {
                    self.failed.inc();
                }
                _ => {}
            }
        }
        self.release_seconds.observe(took.as_secs_f64());
    }
}

struct Agent {
    config: AgentConfig,
    metrics: Metrics,
    /// One sweep at a time; SIGTERM waits for the running one.
    sweeping: tokio::sync::Mutex<()>,
    /// Hook requests served at once (the socket is world-connectable).
    hook_slots: Arc<tokio::sync::Semaphore>,
    /// Lines that hook clients can cause share this budget.
    log_budget: crate::daemon::LogBudget,
}

impl Agent {
    /// Logs a warning a client can cause, within the budget and clipped.
    fn warn_limited(&self, what: &str, detail: &str) {
        if let Some(suppressed) = self.log_budget.take() {
            warn!(
                detail = crate::daemon::clip(detail, 256),
                suppressed_since_last = suppressed,
                "{what}"
            );
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    crate::daemon::block_on(serve(config))
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let agent = Arc::new(Agent {
        config,
        metrics: Metrics::new(),
        sweeping: tokio::sync::Mutex::new(()),
        hook_slots: Arc::new(tokio::sync::Semaphore::new(16)),
        log_budget: crate::daemon::LogBudget::new(60),
    });
    if let Some(addr) = agent.config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tokio::spawn(serve_metrics(agent.clone(), listener));
    }
    if let Some(path) = &agent.config.hook_socket {
        // Pods reach it through a hostPath mount; identity comes from peer credentials.
        let listener = crate::daemon::bind_unix(path, Some(0o666))?;
        tokio::spawn(serve_hook(agent.clone(), listener));
    }
    if agent.config.events {
        let a = agent.clone();
        let options = a.config.docker.clone();
        tokio::spawn(crate::daemon::plugin::follow_die_events(
            move || options.clone(),
            move |id| {
                let span = info_span!("agent", trigger = "event die", container_id = %id);
                let _g = span.enter();
                let started = Instant::now();
                let t = crate::daemon::plugin::Trigger::Container { id, action: "die" };
                match crate::daemon::plugin::cleanup(&a.config.docker, &a.config.base, None, &t) {
                    Ok(n) => {
                        a.metrics.released.inc_by(n as u64);
                        a.metrics
                            .release_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Err(e) => warn!(error = %e, "release after die failed"),
                }
            },
        ));
    }
    if !agent.config.sweep.is_zero() {
        tokio::spawn(sweep_loop(agent.clone()));
    }
    info!(sweep_s = agent.config.sweep.as_secs(), "agent running");
    crate::daemon::shutdown_signal()?.await;
    info!("agent stopping: waiting for a running sweep");
    let _done = tokio::time::timeout(Duration::from_secs(20), agent.sweeping.lock()).await;
    if let Some(path) = &agent.config.hook_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn sweep_loop(agent: Arc<Agent>) {
    loop {
        let guard = agent.sweeping.lock().await;
        let a = agent.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || sweep_once(&a)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "sweep failed"),
            Err(e) => warn!(error = %e, "sweep panicked"),
        }
        agent.metrics.sweeps.inc();
        agent
            .metrics
            .sweep_seconds
            .observe(started.elapsed().as_secs_f64());
        drop(guard);
        tokio::time::sleep(agent.config.sweep).await;
    }
}

fn excluded(
    agent: &Agent,
    ns: &crate::engine::namespace::Namespace,
    procs: &[crate::engine::namespace::Process],
) -> bool {
    agent.config.exclude.iter().any(|e| match e {
        Exclude::Namespace(inode) => *inode == ns.inode,
        Exclude::Pid(pid) => ns.pids.contains(pid),
        Exclude::Comm(comm) => procs.iter().any(|p| &p.comm == comm),
    })
}

/// One sweep: the node-wide report, then a release of exactly its leaked and orphaned
/// foreign copies (in-use ones are counted, excluded namespaces skipped).
fn sweep_once(agent: &Agent) -> anyhow::Result<()> {
    let span = info_span!("agent", trigger = "sweep");
    let _g = span.enter();
    let docker = Docker::connect(&agent.config.docker)?;
    let containers = docker.list()?;
    let base = &agent.config.base;
    let Some(mut scan) =
        crate::report::containers::node_scan(base, &docker.daemon, &containers, &[])?
    else {
        return Ok(());
    };
    let findings = crate::report::containers::findings(&scan, &docker.daemon, &containers);
    let in_use = findings.iter().filter(|f| f.class == "in-use").count();
    let release: Vec<usize> = findings
        .iter()
        .filter(|f| f.class != "in-use")
        .map(|f| f.holder)
        .filter(|&h| {
            let n = &scan.namespaces[scan.holders[h].ns];
            !excluded(agent, &n.ns, &n.processes)
        })
        .collect();
    agent.metrics.leaks.set(release.len() as i64);
    agent.metrics.in_use.set(in_use as i64);
    if release.is_empty() {
        return Ok(());
    }
    scan.holders = release.iter().map(|&h| scan.holders[h].clone()).collect();
    // dockerd's own copies are never a sweep's business.
    let protected = docker
        .daemon
        .runtime_protection(": the runtime's own copies");
    let scope = Scope {
        everywhere: false,
        protected: Some(protected),
    };
    let started = Instant::now();
    let plans = release::plan(&scan, scope);
    let results = release::execute(&scan, &plans, &base.proc_root, false)?;
    agent.metrics.count(&results, started.elapsed());
    Ok(())
}

async fn serve_metrics(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let agent = agent.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => {
                                let mut text = String::new();
                                let ok = prometheus_client::encoding::text::encode(
                                    &mut text,
                                    &agent.metrics.registry,
                                )
                                .is_ok();
                                (if ok { 200 } else { 500 }, text)
                            }
                            "/healthz" => (200, "ok\n".to_string()),
                            _ => (404, "not found\n".to_string()),
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("Content-Type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                                .expect("valid response"),
                        )
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The hook protocol: one JSON request line, one JSON reply line.
#[derive(serde::Deserialize)]
struct HookRequest {
    op: String,
    #[serde(default)]
    container: Option<String>,
}

/// A hook request is one JSON line; anything longer or slower is refused.
const HOOK_REQUEST_MAX: u64 = 4096;
const HOOK_READ_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve_hook(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let mut backoff = crate::daemon::AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                agent.warn_limited("hook socket accept failed; backing off", &e.to_string());
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        // World-connectable: a bounded number of requests at once; past it, closed.
        let Ok(permit) = agent.hook_slots.clone().try_acquire_owned() else {
            agent.warn_limited("hook request refused: too many at once", "");
            continue;
        };
        let accepted_at = crate::runtime::caller::boot_ticks(&agent.config.base.proc_root);
        let agent = agent.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = stream.peer_cred().ok().and_then(|c| c.pid());
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            // One short line, soon: the socket is world-connectable.
            let mut reader = BufReader::new(read.take(HOOK_REQUEST_MAX));
            match tokio::time::timeout(HOOK_READ_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) if line.ends_with('\n') => {}
                _ => {
                    let _ = write
                        .write_all(
                            b"{\"ok\":false,\"error\":\"no request line within 4 KiB and 5 s\"}\n",
                        )
                        .await;
                    return;
                }
            }
            let a = agent.clone();
            let reply = tokio::task::spawn_blocking(move || hook(&a, peer, accepted_at, &line))
                .await
                .unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e.to_string()}));
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

/// The container `pid` is a process of, as the kernel and the runtime's records say
/// together (see [`crate::runtime::caller`]): the cgroup names only which containers to check.
fn caller_container(
    proc_root: &Path,
    docker: &Docker,
    pid: i32,
    accepted_at: Option<u64>,
) -> Result<docker::Container, String> {
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
        let Some(c) = docker
            .resolve(std::slice::from_ref(&id))
            .ok()
            .and_then(|v| v.into_iter().next())
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

fn hook(
    agent: &Agent,
    peer: Option<i32>,
    accepted_at: Option<u64>,
    line: &str,
) -> serde_json::Value {
    let refuse = |msg: String| {
        agent.warn_limited("hook request refused", &format!("peer {peer:?}: {msg}"));
        serde_json::json!({"ok": false, "error": crate::daemon::clip(&msg, 1024)})
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
    let offline = DockerOptions {
        offline: true,
        ..agent.config.docker.clone()
    };
    let docker = match Docker::connect(&offline) {
        Ok(d) => d,
        Err(e) => return refuse(e.to_string()),
    };
    let container = match caller_container(&agent.config.base.proc_root, &docker, pid, accepted_at)
    {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    // The caller may name its own container or a sibling in the same Kubernetes pod.
    let container = match &req.container {
        None => container,
        Some(asked) => {
            let target = docker
                .resolve(std::slice::from_ref(asked))
                .ok()
                .and_then(|c| c.into_iter().next());
            let same_pod =
                |t: &docker::Container| t.pod_uid.is_some() && t.pod_uid == container.pod_uid;
            match target {
                Some(t) if t.id == container.id || same_pod(&t) => t,
                _ => {
                    return refuse(format!(
                        "container {asked:?} is not the caller's ({} {}) nor in its pod: a pod may release only its own containers",
                        container.name,
                        crate::runtime::docker::short_id(&container.id)
                    ));
                }
            }
        }
    };
    let span = info_span!("agent", trigger = "hook pre-stop", container = %container.name);
    let _g = span.enter();
    let started = Instant::now();
    let req = docker::container_request(&agent.config.base, &docker.daemon, &container);
    let scope = docker::release_scope(&docker.daemon, &container, false);
    match release::run(&req, scope, false) {
        Ok(rel) => {
            agent.metrics.count(&rel.results, started.elapsed());
            let mut doc = crate::report::release_json(&rel);
            doc["ok"] = serde_json::json!(true);
            doc["container"] = serde_json::json!({"id": container.id, "name": container.name});
            doc
        }
        Err(e) => refuse(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_parse() {
        assert_eq!("ns:4026531840".parse(), Ok(Exclude::Namespace(4026531840)));
        assert_eq!("pid:42".parse(), Ok(Exclude::Pid(42)));
        assert_eq!("comm:nginx".parse(), Ok(Exclude::Comm("nginx".into())));
        assert!("nginx".parse::<Exclude>().is_err());
        assert!("pid:x".parse::<Exclude>().is_err());
    }
}
