//! `mntreap agent`: the node agent (a DaemonSet on Kubernetes nodes).
//!
//! - follows the daemon's `die` events and releases a container's foreign copies;
//! - sweeps every `--sweep-interval` seconds over the node-wide report and releases the
//!   leaked and orphaned foreign copies it lists: never dockerd's copy of a running
//!   container, never a container's own root, never a copy in use (those are counted);
//!   `--exclude` leaves chosen namespaces and processes alone;
//! - serves Prometheus metrics and `/healthz` on `--metrics-addr`, and `ok` on the
//!   root-only `--health-socket`, which the probes (`mntreap probe`) use;
//! - serves the preStop hook on a unix socket: the caller is identified by the socket's
//!   peer credentials (pid, then its cgroup, then its container), and only the caller's
//!   own container's copies are released.
//!
//! Every unmount is atomic and verified against what the scan saw, so a kill at any point
//! leaves each target either released or still there for the next sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use super::LogBudget;
use super::agent_state::{Agent, AgentConfig, Exclude};
use super::metrics::Metrics;
use super::serve::{Cap, metrics_cap, raise_nofile};
use crate::engine::index::SharedIndex;
use crate::ops::sweep::Swept;
use crate::runtime::RuntimeChoice;

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    crate::daemon::block_on(serve(config))
}

/// Hook requests served at once.
const HOOK_CONNECTIONS: usize = 16;

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    // Every endpoint is capped below the limit, so the rest is the sweeps' reserve.
    let limit = match raise_nofile() {
        Ok(n) => {
            info!(
                soft_was = n.soft_was,
                soft = n.soft,
                hard = n.hard,
                "descriptor limit (RLIMIT_NOFILE): soft raised to hard"
            );
            n.soft
        }
        Err(e) => {
            warn!(error = %e, "cannot raise the descriptor limit (RLIMIT_NOFILE)");
            1024
        }
    };
    let metrics_connections = metrics_cap(limit);
    info!(
        metrics_connections,
        hook_connections = HOOK_CONNECTIONS,
        health_connections = super::metrics::HEALTH_CONNECTIONS,
        "connection caps"
    );
    let index = super::kept_tables(config.index_max_age);
    let agent = Arc::new(Agent {
        index,
        config,
        metrics: Arc::new(Metrics::new()),
        sweeping: tokio::sync::Mutex::new(()),
        hook_slots: Cap::new(HOOK_CONNECTIONS),
        blocking: super::Blocking::new(2),
        hook_blocking: super::Blocking::new(4),
        log_budget: Arc::new(LogBudget::new(60)),
    });
    if let Some(addr) = agent.config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tokio::spawn(super::metrics::serve(
            agent.metrics.clone(),
            listener,
            Cap::new(metrics_connections),
            agent.log_budget.clone(),
        ));
    }
    if let Some(path) = &agent.config.health_socket {
        // Root only: the probes run as root in the agent's own container.
        let listener = crate::daemon::bind_unix(path, Some(0o600))?;
        tokio::spawn(super::metrics::serve_health(
            listener,
            agent.log_budget.clone(),
        ));
    }
    if let Some(path) = &agent.config.hook_socket {
        // Pods reach it through a hostPath mount; identity comes from peer credentials.
        let listener = crate::daemon::bind_unix(path, Some(0o666))?;
        tokio::spawn(super::hook::serve(agent.clone(), listener));
    }
    // Docker's event stream; a CRI node is polled by the sweeps.
    let cri_node =
        agent.config.runtime == RuntimeChoice::Cri || agent.config.cri.endpoint.is_some();
    if agent.config.events && !cri_node {
        tokio::spawn(follow_events(agent.clone()));
    }
    if !agent.config.sweep.is_zero() {
        tokio::spawn(sweep_loop(agent.clone()));
    }
    info!(sweep_s = agent.config.sweep.as_secs(), "agent running");
    crate::daemon::shutdown_signal()?.await;
    info!("agent stopping: waiting for a running sweep");
    let _done = tokio::time::timeout(Duration::from_secs(20), agent.sweeping.lock()).await;
    for path in [&agent.config.hook_socket, &agent.config.health_socket]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `die` events: that container's foreign copies go, one event at a time.
async fn follow_events(agent: Arc<Agent>) {
    let (dead, mut died) = tokio::sync::mpsc::channel::<String>(64);
    let options = agent.config.docker.clone();
    tokio::spawn(crate::runtime::docker::events::follow_die_events(
        move || options.clone(),
        dead,
    ));
    while let Some(id) = died.recv().await {
        let a = agent.clone();
        let job = agent.blocking.run(move || {
            let span = info_span!("agent", trigger = "event die", container_id = %id);
            let _g = span.enter();
            let started = Instant::now();
            let t = crate::daemon::cleanup::Trigger::Container { id, action: "die" };
            let cleaned = crate::daemon::cleanup::cleanup(
                &a.config.docker,
                &a.config.base,
                None,
                &t,
                a.index.as_ref(),
            );
            match cleaned {
                Ok(n) => {
                    a.metrics.released.inc_by(n as u64);
                    a.metrics
                        .release_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(e) => warn!(error = %e, "release after die failed"),
            }
        });
        if let Err(e) = job.await {
            warn!(error = %e, "release after die did not run");
        }
    }
}

async fn sweep_loop(agent: Arc<Agent>) {
    loop {
        let guard = agent.sweeping.lock().await;
        let a = agent.clone();
        let started = Instant::now();
        match agent.blocking.run(move || sweep_once(&a)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                agent.metrics.sweep_failures.inc();
                warn!(error = %e, "sweep failed");
            }
            Err(e) => {
                agent.metrics.sweep_failures.inc();
                warn!(error = %e, "sweep did not run");
            }
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

/// One sweep ([`crate::ops::sweep::sweep`]), with its metrics and its log lines.
fn sweep_once(agent: &Agent) -> anyhow::Result<()> {
    let span = info_span!("agent", trigger = "sweep");
    let _g = span.enter();
    let runtime = crate::runtime::connect(
        agent.config.runtime,
        &agent.config.docker,
        &agent.config.cri,
    )?;
    // Waits for the release that has the index, if one does; none waits for a sweep.
    let index = agent.index.as_ref().map(SharedIndex::for_sweep);
    let swept = crate::ops::sweep::sweep(
        &agent.config.base,
        runtime.as_ref(),
        &|n| excluded(agent, &n.ns, &n.processes),
        index.as_deref(),
    )?;
    if let Some(index) = &index {
        agent.metrics.index_bytes.set(index.heap_bytes() as i64);
    }
    let (leaked, in_use, cgroups_unknown, release) = match swept {
        Swept::Skipped { what, why } => {
            agent.metrics.sweep_failures.inc();
            agent.warn_limited(what, &why);
            return Ok(());
        }
        Swept::Done {
            leaked,
            in_use,
            cgroups_unknown,
            release,
            index,
        } => {
            // A sweep that read tables from the kernel (some namespace changed, a release's
            // cold pass, or no index at all) freed their reading's buffers: give them back,
            // so that the agent's resident size follows its index, not its largest sweep.
            if release.is_some() || index.is_none_or(|u| u.read > 0) {
                crate::engine::sys::trim_heap();
            }
            let used = index.unwrap_or_default();
            agent.metrics.index_reused.set(used.reused as i64);
            agent.metrics.index_read.set(used.read as i64);
            agent.metrics.index_unlisted.set(used.unlisted as i64);
            (leaked, in_use, cgroups_unknown, release)
        }
    };
    if let Some(note) = &cgroups_unknown {
        agent.warn_limited("sweep spares namespaces whose cgroups are unknown", note);
    }
    agent.metrics.leaks.set(leaked as i64);
    agent.metrics.in_use.set(in_use as i64);
    let Some((rel, took)) = release else {
        return Ok(());
    };
    let rel = rel?;
    agent.metrics.count(&rel, took);
    let remaining = rel.remaining().len();
    if remaining > 0 || !rel.notes.is_empty() {
        info!(
            released = rel.released(),
            remaining,
            notes = ?rel.notes,
            "sweep left copies in place"
        );
    }
    Ok(())
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
