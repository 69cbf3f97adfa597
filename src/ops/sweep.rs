//! The agent's sweep as one operation: the node-wide classification, judged twice (by the
//! runtime's list before and after the scan), then a release of exactly its leaked and
//! orphaned foreign copies outside the excluded namespaces, the runtime's own spared.

use crate::engine::index::{IndexUse, TableIndex};
use crate::engine::release::Release;
use crate::engine::scan::{ScanError, ScanRequest, ScannedNamespace};
use crate::report::doc::Class;
use crate::runtime::ContainerRuntime;

/// What a sweep did.
#[derive(Debug)]
pub enum Swept {
    /// Nothing released, and why (an unsure runtime, a partial view, no runtime root).
    Skipped { what: &'static str, why: String },
    /// The findings it acted on; `release` is `None` when none was to be released, else
    /// the release (or why it failed) and how long it took.
    Done {
        leaked: usize,
        in_use: usize,
        cgroups_unknown: Option<String>,
        release: Option<(Result<Box<Release>, ScanError>, std::time::Duration)>,
        /// How the finding scan used the index (`None`: no index, or it was set aside).
        index: Option<IndexUse>,
    },
}

/// One sweep over `runtime`'s node. With `index`, namespaces whose mounts have not changed
/// since the last sweep are not read again; when that finds something to release, the
/// sweep is made again from tables read now, and that one is what is released from.
pub fn sweep(
    base: &ScanRequest,
    runtime: &dyn ContainerRuntime,
    excluded: &dyn Fn(&ScannedNamespace) -> bool,
    index: Option<&TableIndex>,
) -> anyhow::Result<Swept> {
    let daemon = runtime.daemon();
    if let Some(index) = index {
        // It scans again before it acts: kept mount points are good enough to find with.
        index.lend_fresh_mount_points(false);
    }
    // A runtime whose identity is unsure may list anything: release nothing, say why.
    if let Some(why) = daemon.unsure_note() {
        return Ok(Swept::Skipped {
            what: "sweep skipped",
            why,
        });
    }
    let containers = runtime.list()?;
    let Some(mut scan) =
        super::node::node_scan(base, daemon, &containers, &runtime.roots(), index)?
    else {
        return Ok(Swept::Skipped {
            what: "sweep found no runtime directory",
            why: format!(
                "none of the runtime's directories exists as seen through {}",
                daemon.host_root.display()
            ),
        });
    };
    // A sweep that cannot see the whole node releases nothing: an unmount under a shared
    // parent could propagate into a namespace it does not see.
    if let Some(blind) = scan.blind.clone() {
        if let Some(index) = index {
            index.keep(scan.take_tables());
        }
        return Ok(Swept::Skipped {
            what: "sweep skipped: it sees only part of the node",
            why: blind,
        });
    }
    let before = super::node::findings(&scan, daemon, &containers, &runtime.owner_of(&containers));
    // The same scan judged by a list taken after it: a container that started meanwhile
    // (a restart, a pod's new container) has its namespace and its pod's mounts there, and
    // an owner listed again is not gone. Only what both lists call a finding is released.
    let findings = if before.is_empty() {
        before
    } else {
        let again = runtime.list()?;
        let after: std::collections::HashSet<(usize, Class)> =
            super::node::findings(&scan, daemon, &again, &runtime.owner_of(&again))
                .into_iter()
                .map(|g| (g.holder, g.class))
                .collect();
        before
            .into_iter()
            .filter(|f| after.contains(&(f.holder, f.class)))
            .collect()
    };
    let in_use = findings.iter().filter(|f| f.class == Class::InUse).count();
    let (selected, scope) = super::sweep_selection(&scan, daemon, &findings, excluded);
    let cgroups_unknown = scan.cgroups_unknown.clone();
    let leaked = selected.len();
    if selected.is_empty() {
        let used = scan.index;
        if let Some(index) = index {
            index.keep(scan.take_tables());
        }
        return Ok(Swept::Done {
            leaked,
            in_use,
            cgroups_unknown,
            release: None,
            index: used,
        });
    }
    // The unmounts change these tables; and what to release is decided from tables read now.
    if let Some(index) = index {
        index.clear();
    }
    if let Some(first) = scan.index.filter(|_| scan.from_index()) {
        drop(scan);
        return sweep_again(base, runtime, excluded, first);
    }
    super::narrow(&mut scan, &selected);
    // The one release path: plan, execute, then re-check what is left, as every release.
    let started = std::time::Instant::now();
    let release = crate::engine::release::run_on(scan, base, scope, false).map(Box::new);
    Ok(Swept::Done {
        leaked,
        in_use,
        cgroups_unknown,
        release: Some((release, started.elapsed())),
        index: None,
    })
}

/// The sweep made again from tables read now, after kept ones found something: its gauges
/// say what the finding pass reused (`first`); the second pass read everything.
fn sweep_again(
    base: &ScanRequest,
    runtime: &dyn ContainerRuntime,
    excluded: &dyn Fn(&ScannedNamespace) -> bool,
    first: IndexUse,
) -> anyhow::Result<Swept> {
    let mut swept = sweep(base, runtime, excluded, None)?;
    if let Swept::Done { index, .. } = &mut swept {
        *index = Some(first);
    }
    Ok(swept)
}
