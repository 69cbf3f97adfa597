//! The CRI API in a build without the `cri` feature (no protobuf bindings, no `protoc`):
//! no client can exist, so a CRI runtime is always read offline, from its task bundles,
//! and the report says why.

use std::path::Path;
use std::time::Duration;

use super::entry::Entry;
use crate::runtime::Overrun;

/// Why a list failed (as with the API).
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the API build constructs them; here no list can run"
)]
pub(super) enum ListFailure {
    Call(String),
    Overrun(Overrun),
}

/// A connected CRI client: none in this build.
pub(super) enum Client {}

impl Client {
    pub(super) fn connect(socket: &Path, _timeout: Duration) -> Result<Client, String> {
        Err(format!(
            "this mntreap was built without the `cri` feature, so it cannot ask the CRI \
             runtime at {} (rebuild with the default features)",
            socket.display()
        ))
    }

    pub(super) fn version(&self) -> &str {
        match *self {}
    }

    pub(super) fn entries(&self, _overall: Duration) -> Result<Vec<Entry>, ListFailure> {
        match *self {}
    }

    pub(super) fn remove(&self, _id: &str, _sandbox: bool) -> Result<(), String> {
        match *self {}
    }
}
