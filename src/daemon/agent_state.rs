//! What the node agent is: its settings and the state its sweeps, events and endpoints
//! (hook, metrics, health) share. Apart from `agent`, which runs it, so the endpoints
//! depend on the state and not on the loop that starts them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::LogBudget;
use super::metrics::Metrics;
use super::serve::Cap;
use crate::engine::scan::ScanRequest;
use crate::runtime::RuntimeChoice;
use crate::runtime::cri::CriOptions;
use crate::runtime::docker::DockerOptions;

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
    /// See [`crate::engine::index::TableIndex::max_age`]; zero: no index.
    pub index_max_age: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub hook_socket: Option<PathBuf>,
    pub health_socket: Option<PathBuf>,
    pub exclude: Vec<Exclude>,
    pub events: bool,
    pub docker: DockerOptions,
    /// Which runtime the node runs; on CRI nodes sweeps are the poll (CRI has no
    /// container-exit stream kubelet's runtimes all offer).
    pub runtime: RuntimeChoice,
    pub cri: CriOptions,
    pub base: ScanRequest,
}

pub(super) struct Agent {
    pub(super) config: AgentConfig,
    pub(super) metrics: Arc<Metrics>,
    /// One sweep at a time; SIGTERM waits for the running one.
    pub(super) sweeping: tokio::sync::Mutex<()>,
    /// Mount tables kept between sweeps and releases (`None`: `--index-max-age 0`).
    pub(super) index: Option<crate::engine::index::SharedIndex>,
    /// Hook requests served at once (the socket is world-connectable).
    pub(super) hook_slots: Cap,
    /// Sweeps and event releases run through this bridge, 2 at once.
    pub(super) blocking: super::Blocking,
    /// Hook requests have a bridge of their own: a pod's preStop never waits for a sweep.
    pub(super) hook_blocking: super::Blocking,
    /// Lines that clients of any endpoint can cause share this budget.
    pub(super) log_budget: Arc<LogBudget>,
}

impl Agent {
    /// Logs a warning a client can cause, within the budget and clipped.
    pub(super) fn warn_limited(&self, what: &str, detail: &str) {
        self.log_budget.warn(what, detail);
    }
}
