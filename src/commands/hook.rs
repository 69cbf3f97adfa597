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
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    if v["ok"] == true {
        Ok(Exit::Clean)
    } else {
        Err(Failure::Usage(
            v["error"].as_str().unwrap_or("refused").to_string(),
        ))
    }
}

fn ask(socket: &Path, container: Option<&str>) -> anyhow::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = serde_json::json!({"op": "pre-stop", "container": container});
    stream.write_all(format!("{req}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply)
}
