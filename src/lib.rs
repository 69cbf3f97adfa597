//! mntreap: find every mount namespace that holds a container layer's mount, and release
//! those copies there, safely.
//!
//! The pipeline is plan-then-execute: [`scan`] reads every namespace's mount table
//! ([`source`], through [`namespace`] descriptors held from scan to action) and matches
//! holders; [`release`] turns a scan into a plan and executes it inside each namespace on a
//! dedicated thread ([`nsexec`]). All raw system calls live in `sys`.

pub mod agent;
pub mod caller;
pub mod cli;
pub mod docker;
pub mod doctor;
pub mod identity;
pub mod mountinfo;
pub mod namespace;
pub mod node_report;
pub mod nsexec;
pub mod plugin;
pub mod policy;
pub mod reap;
pub mod release;
pub mod report;
pub mod scan;
pub mod serve;
pub mod source;
mod sys;
pub mod table;
pub mod unix_sockets;
