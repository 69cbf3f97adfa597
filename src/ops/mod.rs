//! Operations: one path from a request to an outcome. Commands and daemons are the
//! transports (parse, call one operation, render or reply); the decisions are made here,
//! once, so that what `scan` shows is what `release` does.
//!
//! A holder's decision is the release plan's step for it: the same request, the same scope
//! (the runtime's namespaces, the container's own, its pod's containers, the namespaces
//! kubelet's cgroups place in its pod) and the same [`crate::engine::release::plan`] that
//! `release` executes. `scan` runs that plan as a dry run and shows it.

pub mod device;
pub mod node;
pub mod sweep;
pub mod why;

use std::collections::HashMap;

use self::node::Finding;
use crate::engine::index::TableIndex;
use crate::engine::release::{Outcome, Release, Scope};
use crate::engine::scan::{Scan, ScanError, ScanRequest};
use crate::report::doc::Class;
use crate::report::doc::HolderAction;
use crate::runtime::ContainerRuntime;
use crate::runtime::model::{Container, Daemon};
use crate::runtime::scope::{container_request, release_containers, release_scope};

/// One container's release, as `release CONTAINER` makes it: its own request and scope,
/// scanned, planned and (unless `dry_run`) executed and re-checked. A daemon passes its
/// `index` (see [`release_containers`]); a one-shot command reads every table.
pub fn release_container(
    base: &ScanRequest,
    daemon: &Daemon,
    c: &Container,
    everywhere: bool,
    dry_run: bool,
    index: Option<&TableIndex>,
) -> Result<Release, ScanError> {
    let req = container_request(base, daemon, c);
    let scope = release_scope(daemon, c, everywhere);
    release_containers(&req, std::slice::from_ref(c), scope, dry_run, index)
}

/// A scan of `req`'s targets (what `scan` shows and `release --path` starts from).
pub fn scan(req: &ScanRequest) -> Result<Scan, ScanError> {
    crate::engine::scan::scan(req)
}

/// A container's release just before the runtime stops or removes it (the plugin, the
/// agent's events): as `release CONTAINER`, with the runtime's namespaces spared too (the
/// daemon unmounts its own copy in its Put).
pub fn release_before_stop(
    base: &ScanRequest,
    daemon: &Daemon,
    c: &Container,
    index: Option<&TableIndex>,
) -> Result<Release, ScanError> {
    let req = container_request(base, daemon, c);
    let mut scope = release_scope(daemon, c, false);
    if let Some(list) = scope.protected.as_mut() {
        for (ns, why) in daemon.runtime_protection(": the daemon unmounts its own copy") {
            if !list.iter().any(|(i, _)| *i == ns) {
                list.push((ns, why));
            }
        }
    }
    release_containers(&req, std::slice::from_ref(c), scope, false, index)
}

/// `release --path`: the paths' own scan, released in a path release's scope (mntreap's
/// own namespace spared unless `everywhere`).
pub fn release_paths(
    scan: Scan,
    req: &ScanRequest,
    everywhere: bool,
    dry_run: bool,
) -> Result<Release, ScanError> {
    let scope = Scope {
        everywhere,
        protected: None,
        workloads: Vec::new(),
        copy_roots: Vec::new(),
    };
    crate::engine::release::run_on(scan, req, scope, dry_run)
}

/// One container's reap: its release, then its forced removal.
#[derive(Debug)]
pub struct Reaped {
    pub container: Container,
    pub release: Result<Release, ScanError>,
    pub removal: Removal,
}

/// What became of a reaped container's removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The release failed: its copies may still hold it, and removal would fail.
    NotAttempted,
    /// `--dry-run`.
    WouldRemove,
    Removed,
    /// In the runtime's own words.
    Failed(String),
}

impl Removal {
    pub fn removed_or_would(&self) -> bool {
        matches!(self, Removal::Removed | Removal::WouldRemove)
    }
}

/// `reap`: each container's copies released as `release CONTAINER` releases them (it is not
/// running, so the runtime's own copy too), then its forced removal. A pod's containers go
/// before its sandbox: removing the sandbox removes them too.
pub fn reap(
    base: &ScanRequest,
    runtime: &dyn ContainerRuntime,
    mut containers: Vec<Container>,
    dry_run: bool,
) -> Vec<Reaped> {
    containers.sort_by_key(|c| c.sandbox);
    containers
        .into_iter()
        .map(|c| {
            let release = release_container(base, runtime.daemon(), &c, false, dry_run, None);
            let removal = match (&release, dry_run) {
                (Err(_), _) => Removal::NotAttempted,
                (Ok(_), true) => Removal::WouldRemove,
                (Ok(_), false) => match runtime.remove_forced(&c) {
                    Ok(()) => Removal::Removed,
                    Err(err) => Removal::Failed(err),
                },
            };
            Reaped {
                container: c,
                release,
                removal,
            }
        })
        .collect()
}

/// What would happen to each holder, by `(mount namespace inode, mount id)`.
#[derive(Debug, Default)]
pub struct Decisions {
    by_holder: HashMap<(u64, u64), (HolderAction, String)>,
    /// Releases that could not even plan: why.
    failed: Vec<String>,
}

impl Decisions {
    /// The decisions of `release CONTAINER...` for `containers`: each one's release,
    /// planned as a dry run. A copy that any of them unmounts is unmounted by the release
    /// of all of them.
    pub fn for_containers(base: &ScanRequest, daemon: &Daemon, containers: &[Container]) -> Self {
        let mut d = Decisions::default();
        for c in containers {
            match release_container(base, daemon, c, false, true, None) {
                Ok(rel) => d.add(&rel, &format!("the release of {}", c.name)),
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "no plan");
                    d.failed
                        .push(format!("the release of {} could not plan: {e}", c.name));
                }
            }
        }
        d
    }

    /// The decisions of `release --path` over this very scan.
    pub fn for_paths(scan: &Scan) -> Self {
        let scope = Scope {
            everywhere: false,
            protected: None,
            workloads: Vec::new(),
            copy_roots: Vec::new(),
        };
        let plans = crate::engine::release::plan(scan, scope);
        let mut d = Decisions::default();
        for p in &plans {
            for a in &p.actions {
                let h = &scan.holders[a.holder];
                let (action, reason) = step_words(&a.step, "release --path");
                d.merge((scan.namespaces[h.ns].ns.inode, h.mount.id), action, reason);
            }
        }
        d
    }

    /// The decisions of `release --path` for a request of its own (scanned and planned as
    /// a dry run), when the paths come with containers.
    pub fn for_path_request(req: &ScanRequest) -> Result<Self, ScanError> {
        Ok(Decisions::for_paths(&crate::engine::scan::scan(req)?))
    }

    /// Adds `other`'s decisions; an unmount or a detach wins over a keep.
    pub fn extend(&mut self, other: Decisions) {
        for (key, (action, reason)) in other.by_holder {
            self.merge(key, action, reason);
        }
        self.failed.extend(other.failed);
    }

    /// The decisions of one release (planned as a dry run, or executed).
    pub fn of_release(rel: &Release, who: &str) -> Self {
        let mut d = Decisions::default();
        d.add(rel, who);
        d
    }

    fn add(&mut self, rel: &Release, who: &str) {
        for r in &rel.results {
            let h = &rel.scan.holders[r.holder];
            let key = (rel.scan.namespaces[h.ns].ns.inode, h.mount.id);
            let (action, reason) = match &r.outcome {
                Outcome::WouldUnmount | Outcome::Unmounted => (
                    HolderAction::Unmount,
                    format!("{who} unmounts it: no rule keeps it"),
                ),
                Outcome::WouldDetach { pins } | Outcome::Detached { pins } => (
                    HolderAction::Detach,
                    format!("{who} detaches it; {}", pinned_by(pins)),
                ),
                Outcome::Kept { reason } => (HolderAction::Keep, reason.clone()),
                Outcome::Gone | Outcome::Failed { .. } => continue,
            };
            self.merge(key, action, reason);
        }
    }

    fn merge(&mut self, key: (u64, u64), action: HolderAction, reason: String) {
        match self.by_holder.get(&key) {
            Some((HolderAction::Unmount | HolderAction::Detach, _)) => {}
            _ => {
                self.by_holder.insert(key, (action, reason));
            }
        }
    }

    /// The decision for a holder of `scan`; a holder that no release reaches is kept.
    pub fn of(&self, scan: &Scan, holder: usize) -> (HolderAction, String) {
        let h = &scan.holders[holder];
        self.by_holder
            .get(&(scan.namespaces[h.ns].ns.inode, h.mount.id))
            .cloned()
            .unwrap_or_else(|| {
                let why = match self.failed.first() {
                    Some(failed) => failed.clone(),
                    None => "no release of the named containers reaches it (it matched only \
                             with all their targets scanned together)"
                        .into(),
                };
                (HolderAction::Keep, why)
            })
    }

    /// Whether any holder would be unmounted or detached.
    pub fn releases_any(&self) -> bool {
        self.by_holder
            .values()
            .any(|(a, _)| *a != HolderAction::Keep)
    }
}

fn step_words(step: &crate::engine::release::Step, actor: &str) -> (HolderAction, String) {
    use crate::engine::release::Step;
    match step {
        Step::Unmount => (
            HolderAction::Unmount,
            format!("{actor} unmounts it: no rule keeps it"),
        ),
        Step::Detach { pins } => (
            HolderAction::Detach,
            format!("{actor} detaches it; {}", pinned_by(pins)),
        ),
        Step::Keep { reason } => (HolderAction::Keep, reason.clone()),
    }
}

fn pinned_by(pins: &[crate::engine::scan::Pin]) -> String {
    let pids: Vec<String> = pins.iter().map(|p| p.pid.to_string()).collect();
    format!(
        "its filesystem stays alive while pid {} use it",
        pids.join(", ")
    )
}

/// What a sweep releases of a node report: the holders of its leaked and orphaned findings
/// (never the in-use ones, never an `excluded` namespace), and the scope it releases them
/// in (the runtime's own copies spared).
pub fn sweep_selection(
    scan: &Scan,
    daemon: &Daemon,
    findings: &[Finding],
    excluded: &dyn Fn(&crate::engine::scan::ScannedNamespace) -> bool,
) -> (Vec<usize>, Scope) {
    let holders = findings
        .iter()
        .filter(|f| f.class != Class::InUse)
        .map(|f| f.holder)
        .filter(|&h| !excluded(&scan.namespaces[scan.holders[h].ns]))
        .collect();
    let scope = Scope {
        everywhere: false,
        protected: Some(daemon.runtime_protection(": the runtime's own copies")),
        workloads: Vec::new(),
        copy_roots: Vec::new(),
    };
    (holders, scope)
}

/// Keeps only the `selected` holders of `scan` (what a sweep acts on).
pub fn narrow(scan: &mut Scan, selected: &[usize]) {
    scan.holders = selected.iter().map(|&h| scan.holders[h].clone()).collect();
}

/// Per finding, what a sweep of this node report would do with its holder: the sweep's
/// own selection and scope, planned as a dry run over the same scan.
pub fn sweep_decisions(
    scan: &mut Scan,
    daemon: &Daemon,
    findings: &[Finding],
) -> Vec<(HolderAction, String)> {
    let skipped = match (daemon.unsure(), &scan.blind) {
        (Some(why), _) => Some(format!("the runtime's identity is unsure ({why})")),
        (None, Some(blind)) => Some(blind.clone()),
        (None, None) => None,
    };
    if let Some(why) = skipped {
        let reason = format!("{why}: a sweep releases nothing");
        return findings
            .iter()
            .map(|_| (HolderAction::Keep, reason.clone()))
            .collect();
    }
    let (selected, scope) = sweep_selection(scan, daemon, findings, &|_| false);
    let all = scan.holders.clone();
    narrow(scan, &selected);
    let plans = crate::engine::release::plan(scan, scope);
    scan.holders = all;
    let mut by_holder: HashMap<usize, (HolderAction, String)> = HashMap::new();
    for p in &plans {
        for a in &p.actions {
            let sweep = "a sweep (the agent's --exclude and --runtime-root aside, with the \
                         containers listed once)";
            by_holder.insert(selected[a.holder], step_words(&a.step, sweep));
        }
    }
    findings
        .iter()
        .map(|f| {
            by_holder.remove(&f.holder).unwrap_or_else(|| {
                (
                    HolderAction::Keep,
                    "processes use it as their root (in use): never unmounted".into(),
                )
            })
        })
        .collect()
}

/// Whether a release kept copies only because kubelet's cgroups of their namespace are
/// unknown: not known to be clean, so it exits as `scan` does (1).
pub fn kept_as_unknown(rel: &Release) -> bool {
    let unknown = crate::runtime::scope::PodCgroup::Unknown.reason();
    rel.results
        .iter()
        .any(|r| matches!(&r.outcome, Outcome::Kept { reason } if *reason == unknown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::namespace::Process;
    use crate::engine::scan::InUse;
    use crate::engine::scan::fixture::{Ns, scan_of};
    use crate::report::containers::ContainerView;
    use crate::report::doc::Role;
    use crate::runtime::scope::with_pod_cgroups;

    fn member(pid: i32, cgroup: Option<&str>) -> Process {
        Process {
            pid,
            comm: "p".into(),
            root: None,
            uses: Vec::new(),
            cgroup: cgroup.map(String::from),
        }
    }

    #[test]
    fn the_role_a_scan_shows_agrees_with_the_action_its_release_takes_rule_by_rule() {
        // Container A (running, in pod 1234-abcd) and its layer, held in: the runtime's
        // namespace (5); a service (6); a namespace kubelet's cgroups place in A's pod (7);
        // one whose process works inside the copy (8); one whose process has its root
        // in the copy (9); one whose member's cgroups are unknown (10).
        const LAYER: &str = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                             2 1 0:50 / /d/overlay2/L1/merged rw - overlay overlay rw\n";
        let mut scan = scan_of(
            &["/d/overlay2/L1/merged"],
            &[5],
            &[5, 6, 7, 8, 9, 10].map(|n| Ns(n, false, true, LAYER)),
        );
        let pod = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/cri-containerd-x.scope\n";
        let cgroups = [
            Some("0::/system.slice/docker.service\n"),
            Some("0::/system.slice/nginx.service\n"),
            Some(pod),
            Some("0::/system.slice/sshd.service\n"),
            Some("0::/system.slice/chroot.service\n"),
            None,
        ];
        for (i, cgroup) in cgroups.iter().enumerate() {
            scan.namespaces[i].processes = vec![member(100 + i as i32, *cgroup)];
        }
        let at = |scan: &Scan, ns: u64| {
            scan.holders
                .iter()
                .position(|h| scan.namespaces[h.ns].ns.inode == ns)
                .unwrap()
        };
        let pinned = at(&scan, 8);
        scan.holders[pinned].pins = vec![crate::engine::scan::Pin {
            pid: 103,
            via: crate::engine::namespace::PinVia::Cwd,
        }];
        let rooted = at(&scan, 9);
        scan.holders[rooted].in_use = Some(InUse::ProcessRoot { pids: vec![104] });

        let mut a = crate::runtime::docker::tests::c(&"a".repeat(64), "a");
        a.mount_id = Some("L1".into());
        a.paths = vec!["/d/overlay2/L1/merged".into()];
        a.pod_uid = Some("1234-abcd".into());
        let daemon = Daemon {
            mnt_ns: Some(5),
            pid: Some(42),
            ..crate::report::containers::tests::daemon(5)
        };
        let containers = [a];
        // What `scan` shows (the view's roles) and what `release` does (its scope and
        // plan, executed as a dry run), from the same facts.
        let view = ContainerView::new(&scan, &daemon, &containers);
        let roles: Vec<Role> = (0..scan.holders.len()).map(|i| view.role(i)).collect();
        let scope = with_pod_cgroups(
            &scan,
            &containers,
            crate::runtime::scope::release_scope(&daemon, &containers[0], false),
        );
        let plans = crate::engine::release::plan(&scan, scope.clone());
        let results =
            crate::engine::release::execute(&scan, &plans, "/proc".as_ref(), true).unwrap();
        let rel = Release {
            scan,
            plans,
            results,
            still_mounted: None,
            notes: Vec::new(),
            dry_run: true,
            scope,
            confirmed: None,
        };
        let mut decisions = Decisions::default();
        decisions.add(&rel, "the release of a");
        let got: Vec<(u64, Role, HolderAction)> = (0..rel.scan.holders.len())
            .map(|i| {
                (
                    rel.scan.namespaces[rel.scan.holders[i].ns].ns.inode,
                    roles[i],
                    decisions.of(&rel.scan, i).0,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (5, Role::Runtime, HolderAction::Keep),
                (6, Role::Leaked, HolderAction::Unmount),
                (7, Role::Container, HolderAction::Keep),
                (8, Role::Pinned, HolderAction::Detach),
                (9, Role::InUse, HolderAction::Keep),
                // Unknown cgroups: it may be the pod's; kept, and said so.
                (10, Role::Unknown, HolderAction::Keep),
            ]
        );
        // A stopped container: its copy in the runtime's namespace goes too, and scan says
        // so (role runtime, action unmount: a finding, exit 1).
        let mut stopped = containers[0].clone();
        stopped.state = "exited".into();
        let scope = crate::runtime::scope::release_scope(&daemon, &stopped, false);
        let plans = crate::engine::release::plan(&rel.scan, scope);
        let runtime_step = plans
            .iter()
            .flat_map(|p| p.actions.iter())
            .find(|a| rel.scan.namespaces[rel.scan.holders[a.holder].ns].ns.inode == 5)
            .map(|a| step_words(&a.step, "the release of a").0);
        assert_eq!(runtime_step, Some(HolderAction::Unmount));
        assert!(decisions.releases_any());
        // Every kept holder says why, and a role the view calls the pod's own is never
        // unmounted.
        for (i, (_, role, action)) in got.iter().enumerate() {
            let (_, reason) = decisions.of(&rel.scan, i);
            assert!(!reason.is_empty());
            if matches!(role, Role::Container | Role::Runtime) {
                assert_eq!(*action, HolderAction::Keep, "{reason}");
            }
        }
    }
}
