//! Plumbing shared by the long-running modes (`plugin`, `agent`): their runtime, their
//! unix sockets, the signals that stop them and the log budget; how their endpoints are
//! bounded is in [`serve`].

pub mod agent;
pub mod agent_state;
pub mod cleanup;
mod hook;
mod metrics;
pub mod plugin;
pub mod serve;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The one bridge from the daemons' async tasks to blocking work (scans and releases):
/// at most `slots` jobs run at once, and the others wait for a slot, so no burst of calls
/// or events can start unbounded work.
#[derive(Clone)]
pub struct Blocking(std::sync::Arc<tokio::sync::Semaphore>);

impl Blocking {
    pub fn new(slots: usize) -> Blocking {
        Blocking(std::sync::Arc::new(tokio::sync::Semaphore::new(slots)))
    }

    /// Runs `job` on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self.0.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await?)
    }

    /// Starts `job` if a slot frees within `wait`: the handle lets the caller stop waiting
    /// while the job goes on. `None`: no slot in time, nothing started.
    pub async fn start_within<T: Send + 'static>(
        &self,
        wait: std::time::Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<T>> {
        let permit = tokio::time::timeout(wait, self.0.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        }))
    }
}

/// Runs `main` on a small multi-threaded runtime (blocking work goes to its own pool).
pub fn block_on(main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(main)
}

/// A daemon's kept mount tables (`None` when `max_age` is zero): one index for its sweeps
/// and its releases, made for releases (mount points read again) and fed by the kernel's
/// mount events where it has them.
fn kept_tables(max_age: std::time::Duration) -> Option<crate::engine::index::SharedIndex> {
    (!max_age.is_zero()).then(|| {
        crate::engine::index::SharedIndex::new(
            crate::engine::index::TableIndex::watching(max_age).for_releases(),
        )
    })
}

/// Listens on a unix socket at `path`, replacing a stale one; `mode` sets its permissions.
pub fn bind_unix(path: &Path, mode: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// A future that completes at SIGTERM or SIGINT (registered now, inside the runtime).
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    })
}

/// A budget of log lines per minute, for lines that input from outside can cause: past
/// it, lines are counted instead of written, and the count rides on the next line let
/// through. No input can then make a daemon write more than a bounded amount.
pub struct LogBudget {
    per_minute: u32,
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl LogBudget {
    pub fn new(per_minute: u32) -> LogBudget {
        LogBudget {
            per_minute,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines suppressed since the last one let through)` when a line may be written.
    pub fn take(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (window, used, suppressed) = &mut *s;
        if window.elapsed() >= std::time::Duration::from_secs(60) {
            *window = std::time::Instant::now();
            *used = 0;
        }
        if *used < self.per_minute {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }

    /// Logs a warning that outside input can cause, within the budget, its detail clipped.
    pub fn warn(&self, what: &str, detail: &str) {
        if let Some(suppressed) = self.take() {
            tracing::warn!(
                detail = clip(detail, 256),
                suppressed_since_last = suppressed,
                "{what}"
            );
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary: what outside input may put
/// into one log field.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_counts_what_it_suppresses() {
        let b = LogBudget::new(2);
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        // A new window lets lines through again, with the count.
        b.state.lock().unwrap().0 -= std::time::Duration::from_secs(61);
        assert_eq!(b.take(), Some(2));
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("abcdef", 3), "abc");
    }
}
