//! Shared by the benchmark binaries.

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Moves the benchmark into a private mount namespace of its own (root needed), so that
/// every mount it makes disappears with it and nothing propagates to the host.
pub fn enter_private_mount_namespace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates mount namespaces: run it as root"
    );
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("making / private");
}
