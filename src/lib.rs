//! mntreap: find every mount namespace that holds a container layer's mount, and release
//! those copies there, safely.
//!
//! Layers import one way, each a folder:
//! [`cli`] (arguments, logging) → [`commands`] (scan, release, reap, doctor, the node
//! report, the hook client) → [`daemon`] (the plugin and the agent) → [`ops`] (one path
//! from a request to an outcome: the decisions `scan` shows and `release` takes) →
//! [`report`] (JSON and text) → [`runtime`] (Docker: resolution, records, identity; which container a caller is)
//! → [`engine`] (namespaces, mount tables, matching, plan-then-execute releases; all raw
//! system calls, and the only `unsafe`, in `engine::sys`). The engine knows no runtime.
#![deny(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod daemon;
pub mod engine;
pub mod ops;
pub mod report;
pub mod runtime;
