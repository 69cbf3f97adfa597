//! Container runtimes: from containers to the mounts that belong to them, from the
//! runtime's own records validated, and which process is the runtime.

pub mod caller;
pub mod docker;
