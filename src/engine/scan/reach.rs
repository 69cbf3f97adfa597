//! Which holders a path reaches in their namespace.
//!
//! listmount lists every mount of a namespace, also those another mount covers: systemd
//! 252 (Debian 12) builds a sandboxed service's root as a recursive bind and moves it onto
//! `/`, over the namespace's first tree, and propagation goes on landing copies in both;
//! a mount over a parent directory hides what was propagated below it. `setns` roots a
//! thread at the top of the stack on `/`, as the service itself is rooted, and no path
//! reaches a covered copy from there: nothing can unmount it (the execution would find
//! another mount at its path). One that receives propagation (systemd's do) goes when the
//! mount it was copied from goes.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Scan;
use crate::engine::nsexec;
use crate::engine::sys;
use crate::engine::table::IdMap;

/// Drops the holders whose mount point, looked up in their namespace as the execution
/// looks it up, leads to a mount that is neither the holder nor stacked on it; one note
/// per namespace. A holder whose lookup fails otherwise stays: the execution checks it
/// again and says what it found.
pub(super) fn drop_covered(scan: &mut Scan, proc_root: &Path, threads: usize) {
    let mut namespaces: Vec<usize> = scan.holders.iter().map(|h| h.ns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    if namespaces.is_empty() {
        return;
    }
    let shared: &Scan = scan;
    let Ok(covered) = nsexec::map_with_workers(proc_root, threads, &namespaces, |worker, &ns| {
        let n = &shared.namespaces[ns];
        if worker.enter(n.ns.fd.as_fd(), n.ns.inode).is_err() {
            return Vec::new();
        }
        let Some(table) = n.table.as_ref() else {
            return Vec::new();
        };
        let index = table.index();
        let parent_of = |id: u64| index.get(&id).map(|&i| table.mounts[i].parent_id);
        shared
            .holders
            .iter()
            .enumerate()
            .filter(|(_, h)| h.ns == ns)
            .filter(|(_, h)| {
                let found = match sys::open_path_no_symlinks(OsStr::from_bytes(&h.mount_point)) {
                    Ok(fd) => {
                        sys::statx_mount(Some(fd.as_fd()), OsStr::new(""), libc::AT_EMPTY_PATH)
                            .ok()
                            .and_then(|st| st.mnt_id)
                    }
                    // The path does not exist in what covers it.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return true,
                    Err(_) => None,
                };
                found.is_some_and(|id| !stacked_on(&parent_of, id, h.mount.id, &index))
            })
            .map(|(i, _)| i)
            .collect::<Vec<usize>>()
    }) else {
        return;
    };
    let mut drop = vec![false; scan.holders.len()];
    for i in covered.iter().flatten() {
        drop[*i] = true;
    }
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for (h, _) in scan.holders.iter().zip(&drop).filter(|(_, d)| **d) {
        match counts.iter_mut().find(|(ns, _)| *ns == h.ns) {
            Some((_, n)) => *n += 1,
            None => counts.push((h.ns, 1)),
        }
    }
    let mut keep = drop.iter().map(|d| !d);
    scan.holders.retain(|_| keep.next().unwrap_or(true));
    for (ns, n) in counts {
        scan.detail_notes.push(format!(
            "{n} cop{} in mount namespace {} not reachable by any path there: another mount \
             covers {} (such as a sandboxed service's root, which systemd moves onto /); not \
             listed, as with the mountinfo backend; if they receive propagation (systemd's \
             do), they go when the mount they were copied from goes",
            if n == 1 { "y" } else { "ies" },
            scan.namespaces[ns].ns.inode,
            if n == 1 { "it" } else { "them" },
        ));
    }
}

/// Whether mount `found` (the topmost at a holder's mount point) is mount `holder` or one
/// stacked on it: then the execution, which goes upper mounts first, reaches the holder.
fn stacked_on(
    parent_of: &impl Fn(u64) -> Option<u64>,
    found: u64,
    holder: u64,
    index: &IdMap<usize>,
) -> bool {
    let mut at = found;
    // Bounded by the table size, in case of a (corrupt) cycle.
    for _ in 0..=index.len() {
        if at == holder {
            return true;
        }
        match parent_of(at) {
            Some(p) if p != at => at = p,
            _ => return false,
        }
    }
    false
}
