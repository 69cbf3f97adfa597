//! The Engine API on the daemon's unix socket (bollard): negotiation, `/info`, inspect,
//! forced removal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::records::{BadRecord, container};
use super::{Container, Docker, POD_UID_LABEL};

/// The shared runtime for blocking API calls ([`crate::runtime::blocking_runtime`]).
pub(super) fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    crate::runtime::blocking_runtime()
}

/// An Engine API client on a unix socket. It starts at an old API version (18.06 speaks
/// 1.38); `negotiate_version` then picks the daemon's.
pub fn engine_client(
    socket: &Path,
    timeout: Duration,
) -> Result<bollard::Docker, bollard::errors::Error> {
    let version = bollard::ClientVersion {
        major_version: 1,
        minor_version: 38,
    };
    bollard::Docker::connect_with_unix(
        &socket.to_string_lossy(),
        timeout.as_secs().max(1),
        &version,
    )
}

impl Docker {
    pub(super) fn api(
        socket: &Path,
        timeout: Duration,
    ) -> Result<(bollard::Docker, bollard::models::SystemInfo), String> {
        let rt = runtime()?;
        let client = engine_client(socket, timeout).map_err(|e| e.to_string())?;
        // Whichever deadline fires first (ours, or the client's own), say the same thing.
        let why = |e: bollard::errors::Error| match e {
            bollard::errors::Error::RequestTimeoutError => format!("no answer within {timeout:?}"),
            other => other.to_string(),
        };
        let (client, info) = rt.block_on(async {
            let client = tokio::time::timeout(timeout, client.negotiate_version())
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(why)?;
            let info = tokio::time::timeout(timeout, client.info())
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(why)?;
            Ok::<_, String>((client, info))
        })?;
        Ok((client, info))
    }

    pub(super) fn container_from_inspect(
        &self,
        c: bollard::models::ContainerInspectResponse,
    ) -> Result<Container, BadRecord> {
        let id = c.id.unwrap_or_default();
        let record = PathBuf::from(format!(
            "dockerd at {}: GET /containers/{id}/json",
            self.daemon.socket.display()
        ));
        let state = c.state.unwrap_or_default();
        let status = state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        let driver = c.driver.unwrap_or_default();
        let pid = state.pid.filter(|&p| p > 0).map(|p| p as i32);
        let pod_uid = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(POD_UID_LABEL).cloned());
        let mut out = container(
            &self.daemon.root,
            &self.daemon.host_root,
            &record,
            id,
            c.name.unwrap_or_default(),
            status,
            pid,
            driver,
        )?;
        out.pod_uid = pod_uid;
        Ok(out)
    }

    /// `DELETE /containers/{id}?force=1`: the daemon's own error text when it fails.
    pub fn remove_forced(&self, id: &str) -> Result<(), String> {
        let Some(client) = &self.client else {
            return Err(format!(
                "dockerd does not answer at {} ({}); the container cannot be removed now",
                self.daemon.socket.display(),
                self.daemon
                    .offline_reason
                    .as_deref()
                    .unwrap_or("not connected")
            ));
        };
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
            .force(true)
            .build();
        // Removal can take a while (the daemon's own unmount retries): a longer deadline.
        let deadline = self.timeout.max(Duration::from_secs(30));
        let rt = runtime()?;
        match rt.block_on(async {
            tokio::time::timeout(deadline, client.remove_container(id, Some(options))).await
        }) {
            Err(_) => Err(format!("no answer within {deadline:?}")),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { message, .. })) => {
                Err(message)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(())) => Ok(()),
        }
    }
}
