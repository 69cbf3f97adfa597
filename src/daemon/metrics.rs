//! The agent's Prometheus metrics and their HTTP endpoint (`/metrics`, `/healthz`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::LogBudget;
use super::serve::{Cap, accept_loop, spawn_http, write_within};
use crate::engine::release::{self, Outcome};

/// The agent's metrics (conventional Prometheus names).
pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) sweeps: Counter,
    /// Sweeps that failed or were skipped (released nothing on purpose or by error).
    pub(super) sweep_failures: Counter,
    pub(super) leaks: Gauge,
    pub(super) in_use: Gauge,
    pub(super) index_reused: Gauge,
    pub(super) index_read: Gauge,
    pub(super) index_unlisted: Gauge,
    pub(super) index_bytes: Gauge,
    pub(super) released: Counter,
    pub(super) release_tables_reused: Counter,
    pub(super) releases_confirmed: Counter,
    pub(super) failed: Counter,
    pub(super) sweep_seconds: Histogram,
    pub(super) release_seconds: Histogram,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("mntreap"),
            sweeps: Counter::default(),
            sweep_failures: Counter::default(),
            leaks: Gauge::default(),
            in_use: Gauge::default(),
            index_reused: Gauge::default(),
            index_read: Gauge::default(),
            index_unlisted: Gauge::default(),
            index_bytes: Gauge::default(),
            released: Counter::default(),
            release_tables_reused: Counter::default(),
            releases_confirmed: Counter::default(),
            failed: Counter::default(),
            sweep_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            release_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        let registry = &mut m.registry;
        registry.register("sweeps", "Sweeps completed", m.sweeps.clone());
        registry.register(
            "sweep_failures",
            "Sweeps that failed, or were skipped because the node could not be judged",
            m.sweep_failures.clone(),
        );
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
        registry.register(
            "index_namespaces_reused",
            "Namespaces whose kept mount table the last sweep reused (unchanged mounts)",
            m.index_reused.clone(),
        );
        registry.register(
            "index_namespaces_read",
            "Namespaces whose mount table the last sweep read from the kernel",
            m.index_read.clone(),
        );
        registry.register(
            "index_namespaces_unlisted",
            "Of the reused namespaces, those reused on the kernel's mount events, unlisted",
            m.index_unlisted.clone(),
        );
        registry.register(
            "index_bytes",
            "Heap taken by the mount tables kept between sweeps",
            m.index_bytes.clone(),
        );
        registry.register("copies_released", "Copies unmounted", m.released.clone());
        registry.register(
            "release_kept_tables_reused",
            "Namespaces whose kept mount table a hook release reused",
            m.release_tables_reused.clone(),
        );
        registry.register(
            "releases_confirmed",
            "Hook releases made from kept tables, confirmed by id before unmounting",
            m.releases_confirmed.clone(),
        );
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

    pub(super) fn count(&self, rel: &release::Release, took: Duration) {
        self.release_tables_reused
            .inc_by(rel.scan.index.map_or(0, |u| u.reused) as u64);
        if rel.confirmed.is_some() {
            self.releases_confirmed.inc();
        }
        for r in &rel.results {
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

/// Each request's headers, and the idle wait for the next one, within this: a held,
/// silent connection loses its slot (Prometheus reconnects at the next scrape).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/healthz` over HTTP, at most `cap` connections at once (see
/// [`crate::daemon::serve::metrics_cap`]); past it a connection is closed at once.
pub(super) async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    cap: Cap,
    log: Arc<LogBudget>,
) {
    accept_loop(listener, &log, "metrics", |stream| {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let Some(permit) = cap.admit(&log, "metrics", &peer) else {
            return;
        };
        let metrics = metrics.clone();
        spawn_http(stream, permit, Some(HEADER_TIMEOUT), move |req| {
            let metrics = metrics.clone();
            async move { Ok(respond(&metrics, req.uri().path())) }
        });
    })
    .await
}

fn respond(metrics: &Metrics, path: &str) -> hyper::Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            let ok =
                prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_ok();
            (if ok { 200 } else { 500 }, text)
        }
        "/healthz" => (200, "ok\n".to_string()),
        _ => (404, "not found\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// Connections the health socket serves at once: only the agent's own container (its
/// exec probe) and root reach it.
pub(super) const HEALTH_CONNECTIONS: usize = 4;

/// The health socket: answers `ok` to whoever connects, then closes. It is the probes'
/// endpoint because a flood of metrics or hook connections cannot reach it: it is
/// root-only and, in the DaemonSets, inside the agent's own container, where no pod's
/// volume leads (docs/kubernetes.md, the health socket).
pub(super) async fn serve_health(listener: tokio::net::UnixListener, log: Arc<LogBudget>) {
    let cap = Cap::new(HEALTH_CONNECTIONS);
    accept_loop(listener, &log, "health socket", |mut stream| {
        let Some(permit) = cap.admit(&log, "health socket", "") else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = write_within(&mut stream, b"ok\n", Duration::from_secs(2)).await;
        });
    })
    .await
}
