//! Plumbing shared by the long-running modes (`plugin`, `agent`): their runtime, their
//! unix sockets, and the signals that stop them.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Runs `main` on a small multi-threaded runtime (blocking work goes to its own pool).
pub fn block_on(main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(main)
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
