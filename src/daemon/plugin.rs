//! `mntreap plugin`: a Docker authorization plugin (`docker.authz/1.0`) that releases a
//! container's leaked copies before Docker stops or removes it.
//!
//! An authz plugin sits on every API call, and a slow or absent one stalls the whole API
//! (measured on dockerd 20.10: docs/docker-plugin.md). So: it always allows and never denies; calls it does not care about are
//! answered at once from pre-serialised bytes; cleanup runs on the blocking pool with its
//! own deadline, after which the call is allowed anyway (the cleanup finishes in the
//! background); connections are served concurrently, with keep-alive. Containers are
//! resolved from the data root, so the hot path never calls back into the daemon.
//!
//! The same process runs the backstop: it follows the daemon's event stream (`die`: `docker
//! run --rm` and prune never send a DELETE) and sweeps the node periodically. Every
//! release is a JSON audit line on stdout, which the daemon copies into its log.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::{Instrument, info, info_span, warn};

use super::cleanup::{Fault, Trigger, cleanup, trigger};
use super::serve::{Cap, accept_loop, spawn_http};
use crate::engine::index::SharedIndex;
use crate::engine::scan::ScanRequest;
use crate::runtime::docker::DockerOptions;
use crate::runtime::docker::events::follow_die_events;

/// Everything the plugin is configured with (from flags, or plugin settings via env).
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub socket: PathBuf,
    /// How long a cleanup may hold an API call.
    pub deadline: Duration,
    /// Answer everything with allow and do nothing else (the benchmark's floor).
    pub noop: bool,
    /// Seconds between node sweeps; zero: no sweeping.
    pub sweep: Duration,
    /// Follow the daemon's event stream.
    pub events: bool,
    /// See [`crate::engine::index::TableIndex::max_age`]; zero: no index.
    pub index_max_age: Duration,
    pub docker: DockerOptions,
    /// Backend, threads and procfs for scans (targets filled per container).
    pub base: ScanRequest,
    /// Testing aid: make every cleanup fail, or take this long first.
    pub fault: Option<Fault>,
}

const ACTIVATE: &[u8] = br#"{"Implements":["authz"]}"#;
const ALLOW: &[u8] = br#"{"Allow":true}"#;

/// The fields of an AuthZ request the plugin reads; the rest (body, headers) is skipped.
#[derive(serde::Deserialize)]
struct AuthZRequest<'a> {
    #[serde(rename = "RequestMethod", borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "RequestUri", borrow, default)]
    uri: Option<std::borrow::Cow<'a, str>>,
}

struct State {
    config: PluginConfig,
    /// Cleanups run through this bridge, 4 at once; a call that cannot get a slot in time
    /// is allowed without one.
    blocking: super::Blocking,
    /// Bounds connections from anything but the daemon (see [`MAX_OTHER_CONNECTIONS`]).
    others: Cap,
    /// Bounds the daemon's own connections (generous: it keeps a few alive).
    daemons: Cap,
    /// dockerd, learned from the peer of a connection it made: its pid and start time (a
    /// pid that is reused later is not taken for it).
    daemon: std::sync::Mutex<Option<(i32, u64)>>,
    /// Lines that outside input can cause (bad requests, refused connections, accept
    /// errors) share this budget.
    log_budget: Arc<crate::daemon::LogBudget>,
    /// Mount tables kept between cleanups (`None`: `--index-max-age 0`).
    index: Option<SharedIndex>,
}

impl State {
    /// The Docker settings, with the daemon's pid once learned.
    fn docker_options(&self) -> DockerOptions {
        let known = *self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let proc_root = &self.config.base.proc_root;
        let pid = known
            .filter(|&(pid, start)| {
                crate::engine::namespace::start_time(proc_root, pid) == Some(start)
            })
            .map(|(pid, _)| pid);
        DockerOptions {
            daemon_pid: pid,
            ..self.config.docker.clone()
        }
    }

    /// Learns the daemon from a connection it made.
    fn learn_daemon(&self, pid: i32) {
        let Some(start) = crate::engine::namespace::start_time(&self.config.base.proc_root, pid)
        else {
            return;
        };
        let mut known = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        if *known != Some((pid, start)) {
            *known = Some((pid, start));
            info!(
                pid,
                "dockerd connected: its root, data root and socket are learned from it"
            );
        }
    }

    /// Logs a warning that a request or a client can cause, within the log budget and
    /// with the detail clipped.
    fn warn_limited(&self, what: &str, detail: &str) {
        self.log_budget.warn(what, detail);
    }
}

/// Connections from processes other than dockerd are capped well below a managed
/// plugin's descriptor limit (1024): past the cap they are closed at once, so held
/// connections can neither exhaust descriptors nor crowd out the daemon's.
const MAX_OTHER_CONNECTIONS: usize = 128;
/// dockerd keeps a handful of connections; a bound all the same.
const MAX_DAEMON_CONNECTIONS: usize = 512;
/// An AuthZ body is at most about 1 MiB of JSON (the daemon sends bodies under 1 MiB,
/// base64 encoded): anything larger is not read, and the call is allowed.
const MAX_BODY: usize = 4 << 20;
/// A connection not from dockerd must deliver each whole request within this time.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection not from dockerd must send each request's headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Warnings that outside input can cause, per minute.
const LOG_LINES_PER_MINUTE: u32 = 60;

/// Serves the plugin until SIGTERM or SIGINT.
pub fn run(config: PluginConfig) -> anyhow::Result<()> {
    crate::daemon::block_on(serve(config))
}

async fn serve(config: PluginConfig) -> anyhow::Result<()> {
    // Only root (dockerd) connects to an authorization plugin.
    let listener = crate::daemon::bind_unix(&config.socket, Some(0o600))?;
    info!(socket = %config.socket.display(), noop = config.noop, deadline_ms = config.deadline.as_millis() as u64, "plugin listening");
    let state = Arc::new(State {
        blocking: super::Blocking::new(4),
        others: Cap::new(MAX_OTHER_CONNECTIONS),
        daemons: Cap::new(MAX_DAEMON_CONNECTIONS),
        daemon: std::sync::Mutex::new(None),
        log_budget: Arc::new(crate::daemon::LogBudget::new(LOG_LINES_PER_MINUTE)),
        index: (!config.noop)
            .then(|| super::kept_tables(config.index_max_age))
            .flatten(),
        config,
    });
    if !state.config.noop {
        if state.config.events {
            tokio::spawn(follow_events(state.clone()));
        }
        if !state.config.sweep.is_zero() {
            tokio::spawn(sweep_periodically(state.clone()));
        }
    }
    let shutdown = crate::daemon::shutdown_signal()?;
    let log = state.log_budget.clone();
    tokio::select! {
        _ = accept_loop(listener, &log, "plugin socket", |stream| accept_connection(&state, stream)) => {}
        _ = shutdown => {}
    }
    info!("plugin stopping");
    let _ = std::fs::remove_file(&state.config.socket);
    Ok(())
}

/// Serves one accepted connection. dockerd's connections (its pid is the peer's, and the
/// kernel's `exe` link says dockerd) are always served, without a header deadline, since
/// it keeps one connection alive between calls; anything else is capped and timed.
fn accept_connection(state: &Arc<State>, stream: tokio::net::UnixStream) {
    let peer = stream.peer_cred().ok().and_then(|c| c.pid());
    let proc_root = &state.config.base.proc_root;
    let from_daemon = peer.filter(|&pid| crate::runtime::identity::is_dockerd(proc_root, pid));
    if let Some(pid) = from_daemon {
        state.learn_daemon(pid);
    }
    let pool = match from_daemon {
        Some(_) => &state.daemons,
        None => &state.others,
    };
    let peer = format!("peer pid {peer:?}, from dockerd: {}", from_daemon.is_some());
    let Some(permit) = pool.admit(&state.log_budget, "plugin socket", &peer) else {
        return;
    };
    let state = state.clone();
    let timed = from_daemon.is_none();
    spawn_http(
        stream,
        permit,
        timed.then_some(HEADER_READ_TIMEOUT),
        move |req| handle(state.clone(), req, timed),
    );
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/vnd.docker.plugins.v1+json")
        .body(Full::new(body.into()))
        .expect("a static response is valid")
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    timed: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    enum Route {
        Activate,
        Res,
        Req,
        Unknown(String),
    }
    let route = match req.uri().path() {
        "/Plugin.Activate" => Route::Activate,
        "/AuthZPlugin.AuthZRes" => Route::Res,
        "/AuthZPlugin.AuthZReq" => Route::Req,
        other => Route::Unknown(other.to_owned()),
    };
    // Always read the whole request before answering: on a kept-alive connection, an
    // unread body would be taken for the next request. A body over the limit (or, from
    // anything but dockerd, one that takes too long) ends the connection: allowed.
    let read = http_body_util::Limited::new(req.into_body(), MAX_BODY).collect();
    let read = if timed {
        match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => return Ok(allow_bad_input(&state, "request body too slow")),
        }
    } else {
        read.await
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(allow_bad_input(
                &state,
                &format!("reading the request: {e}"),
            ));
        }
    };
    match route {
        Route::Activate => Ok(reply(200, Bytes::from_static(ACTIVATE))),
        Route::Res => Ok(reply(200, Bytes::from_static(ALLOW))),
        Route::Unknown(path) => Ok(allow_bad_input(
            &state,
            &format!("unknown plugin endpoint {path}"),
        )),
        Route::Req => {
            if state.config.noop {
                return Ok(reply(200, Bytes::from_static(ALLOW)));
            }
            match authz_request(&body) {
                Err(e) => return Ok(allow_bad_input(&state, &e)),
                Ok(Some((t, call))) => cleanup_within_deadline(&state, t, call).await,
                Ok(None) => {}
            }
            Ok(reply(200, Bytes::from_static(ALLOW)))
        }
    }
}

/// What an AuthZ request body asks mntreap to do: a trigger and the call it came from (for
/// logs, clipped), nothing, or why the body is malformed. Never panics, whatever the bytes.
pub fn authz_request(body: &[u8]) -> Result<Option<(Trigger, String)>, String> {
    let parsed: AuthZRequest =
        serde_json::from_slice(body).map_err(|e| format!("malformed AuthZ request: {e}"))?;
    let (Some(method), Some(uri)) = (parsed.method, parsed.uri) else {
        return Err("malformed AuthZ request: no RequestMethod or RequestUri".into());
    };
    Ok(trigger(&method, &uri).map(|t| {
        let call = format!(
            "{} {}",
            crate::daemon::clip(&method, 16),
            crate::daemon::clip(&uri, 256)
        );
        (t, call)
    }))
}

/// Bad input is logged (within the log budget) and allowed: an authorization plugin that
/// denies fails the user's API call, and mntreap's promise is never to.
fn allow_bad_input(state: &State, msg: &str) -> Response<Full<Bytes>> {
    state.warn_limited("bad plugin request; allowed", msg);
    reply(200, Bytes::from_static(ALLOW))
}

/// Runs the cleanup for `t`, waiting at most the deadline (permit included).
async fn cleanup_within_deadline(state: &Arc<State>, t: Trigger, call: String) {
    let deadline = state.config.deadline;
    let started = tokio::time::Instant::now();
    let worker_state = state.clone();
    let span = info_span!("plugin", call = %call);
    let job = state.blocking.start_within(deadline, move || {
        let _g = span.enter();
        cleanup(
            &worker_state.docker_options(),
            &worker_state.config.base,
            worker_state.config.fault,
            &t,
            worker_state.index.as_ref(),
        )
    });
    let Some(job) = job.await else {
        state.warn_limited(
            "no cleanup slot within the deadline; allowed without cleanup",
            &call,
        );
        return;
    };
    let left = deadline.saturating_sub(started.elapsed());
    // Every line here can be caused by any API client: all within the budget, clipped.
    match tokio::time::timeout(left, job).await {
        Ok(Ok(Ok(0))) => {}
        Ok(Ok(Ok(n))) => state.warn_limited("cleanup released copies", &format!("{call}: {n}")),
        Ok(Ok(Err(e))) => {
            state.warn_limited("cleanup failed; call allowed", &format!("{call}: {e}"))
        }
        Ok(Err(e)) => state.warn_limited("cleanup panicked; call allowed", &format!("{call}: {e}")),
        Err(_) => state.warn_limited(
            "cleanup exceeded its deadline; call allowed, cleanup goes on in the background",
            &call,
        ),
    }
}

/// Backstop: `die` events lead to the same cleanup (for `run --rm`, prune, restarts).
async fn follow_events(state: Arc<State>) {
    let (dead, mut died) = tokio::sync::mpsc::channel::<String>(64);
    let options = state.clone();
    tokio::spawn(follow_die_events(move || options.docker_options(), dead));
    while let Some(id) = died.recv().await {
        let worker = state.clone();
        let job = state.blocking.run(move || {
            let t = Trigger::Container {
                id: id.clone(),
                action: "die",
            };
            let span = info_span!("plugin", call = "event die", container_id = %id);
            let _g = span.enter();
            cleanup(
                &worker.docker_options(),
                &worker.config.base,
                worker.config.fault,
                &t,
                worker.index.as_ref(),
            )
        });
        match job.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "backstop cleanup failed"),
            Err(e) => warn!(error = %e, "backstop cleanup did not run"),
        }
    }
}

/// Backstop: every few seconds, release foreign copies of stopped containers' mounts.
async fn sweep_periodically(state: Arc<State>) {
    loop {
        tokio::time::sleep(state.config.sweep).await;
        let worker = state.clone();
        let job = state
            .blocking
            .run(move || {
                let span = info_span!("plugin", call = "sweep");
                let _g = span.enter();
                cleanup(
                    &worker.docker_options(),
                    &worker.config.base,
                    worker.config.fault,
                    // A "stopped" container may be starting right now: dockerd's copy is its own.
                    &Trigger::Prune,
                    worker.index.as_ref(),
                )
            })
            .instrument(info_span!("sweep"));
        match job.await {
            Ok(Ok(n)) if n > 0 => info!(released = n, "sweep released copies"),
            Ok(Err(e)) => warn!(error = %e, "sweep failed"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the body, parsing never panics, and a trigger names a container by one
        /// non-empty path segment (it is resolved, never joined into a path).
        #[test]
        fn authz_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = authz_request(&body);
        }

        #[test]
        fn authz_requests_pick_one_segment(method in "(GET|POST|DELETE|PUT|[A-Z]{0,8})", uri in "(/v1\\.[0-9]{1,2})?/[a-z]{0,12}/[^?]{0,40}(\\?.{0,20})?") {
            let body = serde_json::json!({"RequestMethod": method, "RequestUri": uri}).to_string();
            match authz_request(body.as_bytes()) {
                Ok(Some((Trigger::Container { id, .. }, call))) => {
                    proptest::prop_assert!(!id.is_empty() && !id.contains('/') && !id.contains('?'));
                    proptest::prop_assert!(call.len() <= 16 + 1 + 256);
                }
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(false, "valid JSON refused: {e}"),
            }
        }
    }
}
