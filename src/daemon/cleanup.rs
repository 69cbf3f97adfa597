//! The cleanup the plugin and the agent share: which API calls lead to a layer's
//! Put/Remove, and releasing the foreign copies of the containers they name.

use crate::engine::index::SharedIndex;
use crate::engine::scan::ScanRequest;
use crate::runtime::docker::{self, DockerOptions};
use tracing::info_span;

use std::time::Duration;

/// Testing aid: make every cleanup fail, or take this long first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault (an empty setting, as a managed plugin's declared default).
    Off,
    Fail,
    Slow(Duration),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        match s.split_once(':') {
            None if s.is_empty() || s == "off" => Ok(Fault::Off),
            None if s == "fail" => Ok(Fault::Fail),
            Some(("slow", ms)) => ms
                .parse()
                .map(|ms| Fault::Slow(Duration::from_millis(ms)))
                .map_err(|e| format!("slow:<milliseconds>: {e}")),
            _ => Err(format!("{s:?}: expected `fail` or `slow:<milliseconds>`")),
        }
    }
}

/// What an API call means for a container's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Stop, kill, restart or remove: the daemon will Put (and maybe Remove) its layer.
    Container { id: String, action: &'static str },
    /// `POST /containers/prune`: every stopped container goes.
    Prune,
}

/// Which calls lead to a layer's Put/Remove: `DELETE /containers/{id}`,
/// `POST /containers/{id}/stop|kill|restart`, `POST /containers/prune`, with or without
/// an API version prefix and a query.
pub fn trigger(method: &str, uri: &str) -> Option<Trigger> {
    let path = uri.split('?').next().unwrap_or(uri);
    let path = match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => &rest[rest.find('/')?..],
        _ => path,
    };
    let mut parts = path.strip_prefix("/containers/")?.split('/');
    let first = parts.next()?;
    let second = parts.next();
    if parts.next().is_some() || first.is_empty() {
        return None;
    }
    match (method, first, second) {
        ("POST", "prune", None) => Some(Trigger::Prune),
        ("DELETE", id, None) => Some(Trigger::Container {
            id: id.into(),
            action: "remove",
        }),
        ("POST", id, Some(action @ ("stop" | "kill" | "restart"))) => Some(Trigger::Container {
            id: id.into(),
            action: match action {
                "stop" => "stop",
                "kill" => "kill",
                _ => "restart",
            },
        }),
        _ => None,
    }
}

/// Releases the foreign copies of the trigger's containers; returns how many copies went.
/// dockerd's own copy is always kept: before a stop or removal the daemon unmounts it in
/// its Put, after a `die` it has done so already, and on a restart it mounts it again.
pub fn cleanup(
    docker_options: &DockerOptions,
    base: &ScanRequest,
    fault: Option<Fault>,
    t: &Trigger,
    index: Option<&SharedIndex>,
) -> anyhow::Result<usize> {
    match fault {
        Some(Fault::Fail) => anyhow::bail!("injected failure (MNTREAP_FAULT=fail)"),
        Some(Fault::Slow(d)) => std::thread::sleep(d),
        Some(Fault::Off) | None => {}
    }
    let offline = DockerOptions {
        offline: true,
        ..docker_options.clone()
    };
    let docker = docker::Docker::connect(&offline)?;
    let containers = match t {
        Trigger::Container { id, .. } => docker.resolve(std::slice::from_ref(id))?,
        Trigger::Prune => docker
            .list()?
            .into_iter()
            .filter(|c| !c.is_running())
            .collect(),
    };
    let mut released = 0;
    // The kept tables, unless another cleanup or a sweep has them: then read cold.
    let index = index.and_then(SharedIndex::for_release);
    for c in &containers {
        let span = info_span!("container", container = %c.name, id = %c.id);
        let _g = span.enter();
        let rel = crate::ops::release_before_stop(base, &docker.daemon, c, index.as_deref())?;
        released += rel.released();
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_the_calls_that_put_or_remove_layers() {
        let c = |id: &str, action| {
            Some(Trigger::Container {
                id: id.into(),
                action,
            })
        };
        assert_eq!(
            trigger("DELETE", "/v1.41/containers/web?force=1"),
            c("web", "remove")
        );
        assert_eq!(trigger("DELETE", "/containers/abc"), c("abc", "remove"));
        assert_eq!(
            trigger("POST", "/v1.41/containers/web/stop?t=10"),
            c("web", "stop")
        );
        assert_eq!(trigger("POST", "/containers/web/kill"), c("web", "kill"));
        assert_eq!(
            trigger("POST", "/v1.24/containers/web/restart"),
            c("web", "restart")
        );
        assert_eq!(
            trigger("POST", "/v1.41/containers/prune"),
            Some(Trigger::Prune)
        );
        assert_eq!(trigger("GET", "/v1.41/containers/json"), None);
        assert_eq!(trigger("POST", "/v1.41/containers/web/start"), None);
        assert_eq!(trigger("GET", "/containers/web/json"), None);
        assert_eq!(trigger("DELETE", "/v1.41/images/web"), None);
        assert_eq!(trigger("DELETE", "/containers/"), None);
        assert_eq!(trigger("POST", "/volumes/prune"), None);
    }

    #[test]
    fn faults_parse() {
        assert_eq!("fail".parse::<Fault>(), Ok(Fault::Fail));
        assert_eq!(
            "slow:1500".parse::<Fault>(),
            Ok(Fault::Slow(Duration::from_millis(1500)))
        );
        assert!("slow".parse::<Fault>().is_err());
        assert_eq!("".parse::<Fault>(), Ok(Fault::Off));
    }
}
