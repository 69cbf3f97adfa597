//! The agent's clients: `mntreap hook pre-stop`, which a pod runs from its preStop hook (it
//! asks the node agent over its socket; the agent identifies the caller from the kernel, not
//! from this request), and `mntreap probe`, which the DaemonSets' probes run.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::{Exit, Failure, print};

/// Asks the agent to release the caller's container (or a sibling in its pod).
pub fn pre_stop(socket: &Path, container: Option<&str>) -> Result<Exit, Failure> {
    let reply = ask(socket, container).map_err(Failure::Runtime)?;
    print(&reply);
    // Only the verdict: an agent of another version may say more than this client knows.
    #[derive(serde::Deserialize)]
    struct Verdict {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    }
    match serde_json::from_str::<Verdict>(&reply) {
        Ok(v) if v.ok => Ok(Exit::Clean),
        Ok(v) => Err(Failure::Usage(v.error.unwrap_or_else(|| "refused".into()))),
        Err(e) => Err(Failure::Usage(format!(
            "the agent's reply is not a hook reply: {e}"
        ))),
    }
}

fn ask(socket: &Path, container: Option<&str>) -> anyhow::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = serde_json::to_string(&crate::report::doc::HookRequest {
        op: "pre-stop".into(),
        container: container.map(String::from),
    })?;
    stream.write_all(format!("{req}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply)
}

/// Why `mntreap probe` found the agent unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the agent's health socket {}: {source}", socket.display())]
    Unreachable {
        socket: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the agent's health socket {} did not answer: {source}", socket.display())]
    NoAnswer {
        socket: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the agent's health socket {} answered {answer:?}, not ok", socket.display())]
    Unhealthy {
        socket: std::path::PathBuf,
        answer: String,
    },
}

/// Asks the agent's health socket (the DaemonSets' liveness and readiness probe): `ok`
/// within `timeout` is healthy (exit 0); anything else is exit 2, saying why.
pub fn probe(socket: &Path, timeout: Duration) -> Result<Exit, Failure> {
    let ask = || -> Result<(), ProbeError> {
        let io = |source| ProbeError::NoAnswer {
            socket: socket.to_path_buf(),
            source,
        };
        let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
            ProbeError::Unreachable {
                socket: socket.to_path_buf(),
                source,
            }
        })?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let mut answer = String::new();
        std::io::BufReader::new(stream.take(64))
            .read_line(&mut answer)
            .map_err(io)?;
        if answer.trim_end() != "ok" {
            return Err(ProbeError::Unhealthy {
                socket: socket.to_path_buf(),
                answer,
            });
        }
        Ok(())
    };
    ask().map_err(|e| Failure::Usage(e.to_string()))?;
    print("ok\n");
    Ok(Exit::Clean)
}
