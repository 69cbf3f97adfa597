//! `mntreap hook pre-stop`: the client a pod runs from its preStop hook. It asks the node
//! agent over its socket; the agent identifies the caller from the kernel, not from this
//! request.

use std::io::{BufRead, Write};
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
