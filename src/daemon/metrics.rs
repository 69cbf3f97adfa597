//! The agent's Prometheus metrics and their HTTP endpoint (`/metrics`, `/healthz`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::agent::Agent;
use crate::engine::release::{self, Outcome};

/// The agent's metrics (conventional Prometheus names).
pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) sweeps: Counter,
    pub(super) leaks: Gauge,
    pub(super) in_use: Gauge,
    pub(super) released: Counter,
    pub(super) failed: Counter,
    pub(super) sweep_seconds: Histogram,
    pub(super) release_seconds: Histogram,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
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

    pub(super) fn count(&self, results: &[release::ActionResult], took: Duration) {
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

pub(super) async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
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
