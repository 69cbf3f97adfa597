//! Classification: which holders are a namespace's root, contain a process's root, or are
//! kept busy by processes (cwd, executable, open files).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::Path;

use super::{InUse, Pin, Scan};
use crate::engine::cgroups::CgroupView;
use crate::engine::namespace::{self, MountRef, Process};
use crate::engine::table::{IdMap, MountTable};

/// Reads member processes of holder namespaces and marks holders that are a namespace's
/// root, contain a process's root, or contain a process's working directory.
pub(super) fn classify(scan: &mut Scan, proc_root: &Path, threads: usize, cgroups: &CgroupView) {
    let holder_ns: HashSet<usize> = scan.holders.iter().map(|h| h.ns).collect();
    let members: Vec<(usize, i32)> = holder_ns
        .iter()
        .flat_map(|&ns| {
            scan.namespaces[ns]
                .ns
                .pids
                .iter()
                .map(move |&pid| (ns, pid))
        })
        .collect();
    let (details, unknown) = read_members(&members, proc_root, threads, cgroups);
    file_members(scan, &members, details, &unknown, cgroups, &holder_ns);
    mark_pins(scan, holder_ns);
}

/// Each member's process facts, position for position (`None`: it exited), and the pids
/// whose cgroups are unknown as the host names them.
fn read_members(
    members: &[(usize, i32)],
    proc_root: &Path,
    threads: usize,
    cgroups: &CgroupView,
) -> (Vec<Option<Process>>, Vec<i32>) {
    // A few syscalls per process, but thousands of processes on a busy node: in parallel.
    let threads = threads.clamp(1, members.len().max(1));
    let unknown = std::sync::Mutex::new(Vec::new());
    let unknown_ref = &unknown;
    let details: Vec<Option<Process>> = std::thread::scope(|scope| {
        let chunk = members.len().div_ceil(threads).max(1);
        let handles: Vec<_> = members
            .chunks(chunk)
            .map(|part| {
                let len = part.len();
                let handle = scope.spawn(move || {
                    // This thread ends with the scope: it may keep the host's cgroup view.
                    let view = cgroups.enter_on_worker();
                    part.iter()
                        .map(|&(_, pid)| {
                            let dir = namespace::ProcDir::open(proc_root, pid)?;
                            let mut p = namespace::process(&dir, pid)?;
                            p.cgroup = view
                                .as_ref()
                                .ok()
                                .and_then(|()| crate::engine::cgroups::read(&dir));
                            // Unknown cgroups: say so (the rules that read them protect).
                            if p.cgroup.is_none() {
                                unknown_ref
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(pid);
                            }
                            Some(p)
                        })
                        .collect::<Vec<_>>()
                });
                (len, handle)
            })
            .collect();
        // Position for position: a worker that panicked yields "unknown" for each of its
        // processes, so the zip below never files a process under another namespace.
        handles
            .into_iter()
            .flat_map(|(len, h)| h.join().unwrap_or_else(|_| vec![None; len]))
            .collect()
    });
    let unknown = unknown.into_inner().unwrap_or_else(|e| e.into_inner());
    (details, unknown)
}

/// Files each member under its namespace, with notes for those that exited, for unknown
/// cgroups, and for holder namespaces left with no process.
fn file_members(
    scan: &mut Scan,
    members: &[(usize, i32)],
    details: Vec<Option<Process>>,
    unknown: &[i32],
    cgroups: &CgroupView,
    holder_ns: &HashSet<usize>,
) {
    for (&(ns, pid), detail) in members.iter().zip(details) {
        let scanned = &mut scan.namespaces[ns];
        match detail {
            Some(p) => scanned.processes.push(p),
            None => scan.notes.push(format!(
                "pid {pid} of mount namespace {} exited during the scan",
                scanned.ns.inode
            )),
        }
    }
    if let Some(first) = unknown.first() {
        // Never entered here: this is the caller's thread.
        let why = cgroups
            .unknown_reason()
            .unwrap_or("exited, or their paths lie above the host's cgroup namespace root");
        let note = format!(
            "the cgroups of {} member process(es) (pid {first} among them) are unknown as the \
             host names them ({why}): a namespace of theirs that holds a pod's mounts counts \
             as that pod's and is spared",
            unknown.len()
        );
        scan.cgroups_unknown = Some(note.clone());
        scan.notes.push(note);
    }
    for &ns in holder_ns {
        let scanned = &scan.namespaces[ns];
        if scanned.processes.is_empty() && !scanned.ns.own {
            scan.notes.push(no_process_note(&scanned.ns));
        }
    }
}

/// Why a holder namespace has no process, and what pins it.
fn no_process_note(ns: &crate::engine::namespace::Namespace) -> String {
    use crate::engine::namespace::{FoundVia, NsPin};
    if ns.via == FoundVia::Process {
        return format!(
            "mount namespace {} has no live process any more; mntreap holds it open until it \
             exits",
            ns.inode
        );
    }
    let pins: Vec<String> = ns
        .pinned_by
        .iter()
        .map(|p| match p {
            NsPin::Descriptor { pid, comm, fd } => {
                format!("descriptor {fd} of pid {pid} ({comm})")
            }
            NsPin::Bind { mnt_ns, path } => {
                format!("an nsfs bind at {path} in mount namespace {mnt_ns} (umount it there)")
            }
        })
        .collect();
    format!(
        "mount namespace {} has no process (found {}); it is pinned by {}: releasing its \
         copies frees the target, removing the pin frees the namespace",
        ns.inode,
        match ns.via {
            FoundVia::KernelList => "in the kernel's list of mount namespaces",
            _ => "through a process's descriptor of it",
        },
        if pins.is_empty() {
            "something out of view (a process in another pid namespace, or a mount)".to_string()
        } else {
            pins.join(", ")
        }
    )
}

/// Marks holders that are a namespace's root, some process's root, or in use by a
/// process (cwd, open files, maps).
fn mark_pins(scan: &mut Scan, holder_ns: HashSet<usize>) {
    // Per namespace: mount id -> processes whose root is in / that use that mount's subtree.
    let mut root_pins: HashMap<(usize, u64), Vec<i32>> = HashMap::new();
    let mut ns_sorted: Vec<usize> = holder_ns.into_iter().collect();
    ns_sorted.sort_unstable();
    let mut use_pins: HashMap<(usize, u64), Vec<Pin>> = HashMap::new();
    let mut ns_roots: HashSet<(usize, u64)> = HashSet::new();
    for &ns in &ns_sorted {
        let scanned = &scan.namespaces[ns];
        let Some(table) = scanned.table.as_ref() else {
            continue;
        };
        let index = table.index();
        if let Some(r) = table.root_mount(&index) {
            ns_roots.insert((ns, table.mounts[r].id));
        }
        for p in &scanned.processes {
            if let Some(root) = p.root {
                for id in containing_mounts(table, &index, root) {
                    root_pins.entry((ns, id)).or_default().push(p.pid);
                }
            }
            for &(via, used) in &p.uses {
                for id in containing_mounts(table, &index, used) {
                    use_pins
                        .entry((ns, id))
                        .or_default()
                        .push(Pin { pid: p.pid, via });
                }
            }
        }
    }
    for h in &mut scan.holders {
        let key = (h.ns, h.mount.id);
        if ns_roots.contains(&key) {
            h.in_use = Some(InUse::NamespaceRoot);
        } else if let Some(pids) = root_pins.get(&key) {
            h.in_use = Some(InUse::ProcessRoot { pids: dedup(pids) });
        }
        if let Some(pins) = use_pins.get(&key) {
            let mut pins = pins.clone();
            pins.sort_unstable();
            pins.dedup();
            h.pins = pins;
        }
    }
}

/// The mount a process refers to and all its ancestors (they all contain it). Without a
/// mount id (kernel < 5.8) every mount of the same filesystem counts: conservative.
fn containing_mounts(table: &MountTable, index: &IdMap<usize>, what: MountRef) -> Vec<u64> {
    let Some(id) = what.id else {
        return table
            .mounts
            .iter()
            .filter(|m| Some(m.dev) == what.dev)
            .map(|m| m.id)
            .collect();
    };
    let mut ids = Vec::new();
    let mut at = index.get(&id).copied();
    while let Some(i) = at {
        let m = &table.mounts[i];
        ids.push(m.id);
        at = index
            .get(&m.parent_id)
            .copied()
            .filter(|&q| q != i && ids.len() <= table.mounts.len());
    }
    ids
}

fn dedup(pids: &[i32]) -> Vec<i32> {
    let mut v = pids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
