//! Why a filesystem or a block device is busy: every reason the kernel gives `EBUSY` for
//! an unmount, a `losetup -d`, an `rbd unmap` or a `cryptsetup close`, across every mount
//! namespace (those with no process too): its mounts and their copies, processes whose
//! working directory, root, executable, open files or memory maps are on it, loop devices
//! backed by a file on it, swap on it, device-mapper or md devices stacked on it, and a
//! superblock alive with no mount at all. Facts only, read from the kernel; what to do
//! about each is the caller's to say.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::engine::namespace::{FoundVia, NsPin};
use crate::engine::scan::{ScanError, ScanRequest};
use crate::engine::{source, sys};

/// A device number, `major:minor`.
pub type Dev = (u32, u32);

/// What is asked about: a filesystem, by the device its superblock has.
#[derive(Debug, Clone)]
pub struct BusyTarget {
    pub dev: Dev,
    /// The block device's kernel name (`loop3`, `dm-0`, `rbd0`) when the target is one.
    pub block: Option<String>,
}

impl BusyTarget {
    /// The filesystem on device `dev`, with its block device's name when it is one
    /// (`/sys/dev/block/MAJ:MIN`).
    pub fn of_dev(dev: Dev) -> BusyTarget {
        let block = fs::read_link(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
            .ok()
            .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()));
        BusyTarget { dev, block }
    }
}

/// One reason the target is busy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reason {
    /// A mount of the filesystem, in some mount namespace.
    Mount {
        mnt_ns: u64,
        own_namespace: bool,
        mount_id: u64,
        mount_point: String,
        /// Members of the namespace (none: see `ns_via` and `pinned_by`).
        pids: Vec<i32>,
        ns_via: FoundVia,
        pinned_by: Vec<NsPin>,
    },
    /// A process uses a file on it.
    Process {
        pid: i32,
        comm: String,
        mnt_ns: Option<u64>,
        via: ProcessUse,
        /// The file, as the process names it (open files and maps).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fd: Option<u32>,
    },
    /// A loop device is backed by a file on it.
    Loop {
        device: String,
        backing_file: String,
    },
    /// Swap on it (a swap file on the filesystem, or the device itself).
    Swap { path: String },
    /// A device stacked on the block device (device-mapper: LUKS, LVM; md).
    Holder { device: String },
    /// The superblock is alive with no mount anywhere: lazily detached (`umount -l`) while
    /// something still holds it, or mounted where no namespace in view reaches.
    NoMount { evidence: String },
}

/// How a process keeps a filesystem busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessUse {
    Cwd,
    Root,
    Exe,
    OpenFile,
    Mmap,
    /// It holds the block device itself open (a raw block volume, a VM's disk, `dd`): the
    /// device stays busy whatever is mounted.
    OpenDevice,
}

/// Every reason each of `targets` is busy (position for position), with the scan's notes.
/// The namespaces and the processes are read once for all of them: both grow with the node.
pub fn reasons(
    base: &ScanRequest,
    targets: &[BusyTarget],
) -> Result<(Vec<Vec<Reason>>, Vec<String>), ScanError> {
    let devs: Vec<Dev> = targets.iter().map(|t| t.dev).collect();
    let mut notes = Vec::new();
    let mut out = mounts(base, &devs, &mut notes)?;
    let mounted: Vec<bool> = out.iter().map(|r| !r.is_empty()).collect();
    for (i, r) in processes(&base.proc_root, &devs) {
        out[i].push(r);
    }
    for (i, target) in targets.iter().enumerate() {
        out[i].extend(loops(target.dev));
        out[i].extend(swaps(target));
        if let Some(block) = &target.block {
            out[i].extend(holders(block));
            if !mounted[i] {
                out[i].extend(superblock_without_mount(block));
            }
        }
    }
    Ok((out, notes))
}

/// Every mount of each filesystem in every mount namespace, by the position of its device.
fn mounts(
    base: &ScanRequest,
    devs: &[Dev],
    notes: &mut Vec<String>,
) -> Result<Vec<Vec<Reason>>, ScanError> {
    let request = ScanRequest {
        targets: Vec::new(),
        devices: Vec::new(),
        paths_only: false,
        ..base.clone()
    };
    let mut denied = Vec::new();
    let host_view = crate::engine::namespace::pid_namespace_blindness(&base.proc_root).is_none();
    let mut namespaces =
        crate::engine::scan::read_namespaces(&request, None, host_view, notes, &mut denied)?;
    let mut out = vec![Vec::new(); devs.len()];
    for n in &mut namespaces {
        let Some(table) = n.table.as_mut() else {
            continue;
        };
        let on: Vec<usize> = (0..table.mounts.len())
            .filter(|&i| devs.contains(&table.mounts[i].dev))
            .collect();
        source::hydrate(table, on.iter().copied());
        for i in on {
            let m = &table.mounts[i];
            let Some(t) = devs.iter().position(|d| *d == m.dev) else {
                continue;
            };
            if table.mount_point(m).is_empty() {
                continue;
            }
            out[t].push(Reason::Mount {
                mnt_ns: n.ns.inode,
                own_namespace: n.ns.own,
                mount_id: m.id,
                mount_point: crate::engine::mountinfo::encode(table.mount_point(m)),
                pids: n.ns.pids.clone(),
                ns_via: n.ns.via,
                pinned_by: n.ns.pinned_by.clone(),
            });
        }
    }
    Ok(out)
}

fn dev_of(st_dev: u64) -> Dev {
    (
        nix::sys::stat::major(st_dev) as u32,
        nix::sys::stat::minor(st_dev) as u32,
    )
}

/// statx flags for files other processes chose: the attributes the kernel has, without
/// asking a FUSE daemon or an NFS server (a dead one would stall `why` for good).
const NO_SYNC: libc::c_int = libc::AT_STATX_DONT_SYNC;

/// Processes whose cwd, root, executable, open files or maps are on one of the
/// filesystems, each with the position of its device.
fn processes(proc_root: &Path, devs: &[Dev]) -> Vec<(usize, Reason)> {
    let at = |dev: Dev| devs.iter().position(|d| *d == dev);
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    let mut out = Vec::new();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let comm = fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        let mnt_ns = crate::engine::namespace::mnt_ns_inode(proc_root, pid);
        let reason = |via, path: Option<String>, fd: Option<u32>| Reason::Process {
            pid,
            comm: comm.clone(),
            mnt_ns,
            via,
            path,
            fd,
        };
        for (name, via) in [
            ("cwd", ProcessUse::Cwd),
            ("root", ProcessUse::Root),
            ("exe", ProcessUse::Exe),
        ] {
            if let Some(t) = sys::statx_mount(None, dir.join(name).as_os_str(), NO_SYNC)
                .ok()
                .and_then(|s| at(s.dev))
            {
                out.push((t, reason(via, None, None)));
            }
        }
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            for e in fds.flatten() {
                let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(m) = sys::statx_mount(None, e.path().as_os_str(), NO_SYNC) else {
                    continue;
                };
                let on = at(m.dev).map(|t| (t, ProcessUse::OpenFile));
                let device = m
                    .block_device
                    .and_then(at)
                    .map(|t| (t, ProcessUse::OpenDevice));
                for (t, via) in on.into_iter().chain(device) {
                    let path = fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().into_owned())
                        .ok();
                    out.push((t, reason(via, path, Some(fd))));
                }
            }
        }
        let maps = fs::read_to_string(dir.join("maps")).unwrap_or_default();
        for (t, &dev) in devs.iter().enumerate() {
            let mut mapped: Vec<String> = maps.lines().filter_map(|l| map_on(l, dev)).collect();
            mapped.dedup();
            out.extend(
                mapped
                    .into_iter()
                    .map(|p| (t, reason(ProcessUse::Mmap, Some(p), None))),
            );
        }
    }
    out
}

/// The path of a `/proc/PID/maps` line whose file is on `dev` (`maj:min` in hex).
fn map_on(line: &str, dev: Dev) -> Option<String> {
    let mut fields = line.split_whitespace();
    let device = fields.nth(3)?;
    let inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    let (major, minor) = device.split_once(':')?;
    let on = u32::from_str_radix(major, 16).ok()? == dev.0
        && u32::from_str_radix(minor, 16).ok()? == dev.1
        && inode != "0";
    on.then_some(path)
}

/// Loop devices whose backing file is on the filesystem, as the kernel records the file
/// (its device, not its path: the path is as its setter named it, in its namespace).
fn loops(dev: Dev) -> Vec<Reason> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let node = PathBuf::from(format!("/dev/{name}"));
        // Without a device node here the backing file's device is unknown: its path is as
        // its setter named it, in its namespace, and nothing to resolve in ours.
        let on = sys::loop_backing_dev(&node).is_ok_and(|backing_dev| dev_of(backing_dev) == dev);
        if on {
            out.push(Reason::Loop {
                device: node.display().to_string(),
                backing_file: backing.trim_end().to_string(),
            });
        }
    }
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

/// Swap files on the filesystem, or swap on the block device itself (`/proc/swaps`).
fn swaps(target: &BusyTarget) -> Vec<Reason> {
    let text = fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let path = crate::engine::mountinfo::decode(l.split_whitespace().next()?.as_bytes());
            let path = String::from_utf8_lossy(&path).into_owned();
            let meta = fs::metadata(&path).ok()?;
            let on = if meta.file_type().is_block_device() {
                dev_of(meta.rdev()) == target.dev
            } else {
                dev_of(meta.dev()) == target.dev
            };
            on.then_some(Reason::Swap { path })
        })
        .collect()
}

/// Devices stacked on the block device (`/sys/class/block/NAME/holders`).
fn holders(block: &str) -> Vec<Reason> {
    let Ok(entries) = fs::read_dir(format!("/sys/class/block/{block}/holders")) else {
        return Vec::new();
    };
    let mut out: Vec<Reason> = entries
        .flatten()
        .map(|e| Reason::Holder {
            device: e.file_name().to_string_lossy().into_owned(),
        })
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

/// A filesystem's per-superblock sysfs directory (`/sys/fs/ext4/loop3`, xfs, f2fs, ...)
/// with no mount of it anywhere: the superblock outlives its last mount.
fn superblock_without_mount(block: &str) -> Vec<Reason> {
    let Ok(entries) = fs::read_dir("/sys/fs") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join(block))
        .filter(|p| p.is_dir())
        .map(|p| Reason::NoMount {
            evidence: format!(
                "{} exists, but no mount namespace in view mounts the device",
                p.display()
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_match_by_device_and_skip_anonymous_ones() {
        let line = "7f2c0000-7f2c1000 r--p 00000000 07:03 1234   /mnt/data/lib me.so";
        assert_eq!(map_on(line, (7, 3)).as_deref(), Some("/mnt/data/lib me.so"));
        assert_eq!(map_on(line, (7, 4)), None);
        // Hex fields: fd:01 is 253:1.
        let dm = "55d0-55d1 r-xp 00000000 fd:01 99 /usr/bin/x";
        assert_eq!(map_on(dm, (253, 1)).as_deref(), Some("/usr/bin/x"));
        assert_eq!(
            map_on("7ffd-7ffe rw-p 00000000 00:00 0 [stack]", (0, 0)),
            None
        );
    }
}
