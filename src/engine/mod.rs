//! The engine: mount namespaces held by descriptor, their mount tables (listmount or
//! mountinfo), matching holders of targets, and releases planned and then executed inside
//! each namespace on a dedicated thread. It knows no container runtime.
//!
//! The pipeline is plan-then-execute: [`scan`] reads every namespace's mount table
//! ([`source`], through [`namespace`] descriptors held from scan to action) and matches
//! holders; [`release`] turns a scan into a plan and executes it inside each namespace on a
//! dedicated thread ([`nsexec`]). All raw system calls live in `sys`.

pub mod busy;
pub mod cgroups;
pub mod index;
pub mod mount_events;
pub mod mountinfo;
pub mod namespace;
pub mod nsexec;
pub mod policy;
pub mod propagation;
pub mod release;
pub mod scan;
pub mod source;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod table;
pub mod unix_sockets;
