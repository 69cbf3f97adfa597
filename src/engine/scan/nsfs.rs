//! Mount namespaces kept alive by nsfs bind mounts (`unshare --mount=FILE`, snapd's
//! `/run/snapd/ns/<snap>.mnt`): found in the mount tables read, they name what pins a
//! namespace that has no process, and, where the kernel's list of namespaces is missing,
//! namespaces the scan could not find otherwise.

use std::os::fd::AsFd;

use super::Scan;
use crate::engine::namespace::NsPin;
use crate::engine::source;

/// The device of the nsfs superblock, which every nsfs bind mount shares.
fn nsfs_dev(scan: &Scan) -> Option<(u32, u32)> {
    let own = scan.namespaces.iter().find(|n| n.ns.own)?;
    let st = nix::sys::stat::fstat(own.ns.fd.as_fd()).ok()?;
    Some((
        nix::sys::stat::major(st.st_dev) as u32,
        nix::sys::stat::minor(st.st_dev) as u32,
    ))
}

/// Records each nsfs bind of a mount namespace as a pin of that namespace (when it has no
/// process), and one of a namespace the scan does not know as a gap: the result is then
/// incomplete, never clean.
pub(super) fn attach_bind_pins(scan: &mut Scan) {
    let Some(dev) = nsfs_dev(scan) else {
        return;
    };
    let mut binds: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    for n in &mut scan.namespaces {
        let Some(table) = n.table.as_mut() else {
            continue;
        };
        let nsfs: Vec<usize> = (0..table.mounts.len())
            .filter(|&i| table.mounts[i].dev == dev)
            .collect();
        if nsfs.is_empty() {
            continue;
        }
        source::hydrate(table, nsfs.iter().copied());
        for i in nsfs {
            let m = &table.mounts[i];
            let named = std::str::from_utf8(table.root(m))
                .ok()
                .and_then(|r| r.strip_prefix("mnt:["))
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<u64>().ok());
            if let Some(named) = named {
                binds.push((named, n.ns.inode, table.mount_point(m).to_vec()));
            }
        }
    }
    for (named, in_ns, path) in binds {
        let path = crate::engine::mountinfo::encode(&path);
        match scan.namespaces.iter_mut().find(|n| n.ns.inode == named) {
            Some(n) if n.ns.pids.is_empty() && !n.ns.own => {
                n.ns.pinned_by.push(NsPin::Bind {
                    mnt_ns: in_ns,
                    path,
                });
            }
            Some(_) => {}
            None => {
                scan.denied.push(named);
                scan.notes.push(format!(
                    "mount namespace {named} exists (an nsfs bind of it is at {path} in mount \
                     namespace {in_ns}) but could not be opened, so it was not scanned: this \
                     kernel has no list of namespaces (Linux 6.12+); open it with nsenter \
                     --mount={path} from that namespace, or unmount the bind"
                ));
            }
        }
    }
}
