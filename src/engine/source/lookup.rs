//! Looking a target up in the namespace a worker is in: the topmost mount at its path, and
//! whether the kernel shows that nothing is mounted below the path.

use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::engine::sys;

pub(super) struct Probe {
    pub(super) mnt_id: Option<u64>,
    /// Whether the path is its mount's root, when the kernel says (5.8+).
    mount_root: Option<bool>,
    pub(super) is_dir: bool,
}

impl Probe {
    /// Taken to be a mount root unless the kernel says it is not...
    pub(super) fn is_mount_root(&self) -> bool {
        self.mount_root != Some(false)
    }

    /// ...but known to be one only when it says so.
    pub(super) fn known_mount_root(&self) -> bool {
        self.mount_root == Some(true)
    }
}

/// Looks `path` up in the current namespace without following symlinks.
pub(super) fn probe(path: &[u8]) -> Option<(OwnedFd, Probe)> {
    use std::os::unix::ffi::OsStrExt;
    let fd = sys::open_path_no_symlinks(std::ffi::OsStr::from_bytes(path)).ok()?;
    let st = sys::statx_mount(
        Some(fd.as_fd()),
        std::ffi::OsStr::new(""),
        // The mount id and root bit come from the VFS: no round trip to a network or FUSE
        // filesystem for attributes.
        libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
    )
    .ok()?;
    Some((
        fd,
        Probe {
            mnt_id: st.mnt_id,
            mount_root: st.is_mount_root,
            is_dir: st.is_dir,
        },
    ))
}

/// Magic numbers of the filesystems whose directory listings are the kernel's dentry cache
/// itself: tmpfs (devtmpfs and shm too) and ramfs. A disk filesystem's listing is its disk
/// blocks, which whoever writes the device can empty under a mount point the cache still
/// pins (and a dead disk can keep a read waiting); a FUSE or network filesystem's is its
/// server's word; an overlay's is merged from layers that may be any of these.
const KERNEL_LISTED: [u64; 2] = [0x0102_1994, 0x8584_58f6];

/// Whether the kernel shows now that nothing is mounted at or below the path `fd` names
/// (the topmost mount there, as a lookup gives it; `is_dir` as statx says), in a filesystem
/// of magic `sb_magic`. A mount below the path sits on a dentry under it, or on the path
/// itself, stacked, where the lookup would have given that mount instead: so nothing is
/// below a path that is no directory, nor below an empty directory the kernel lists itself.
pub(super) fn nothing_mounted_below(fd: BorrowedFd<'_>, is_dir: bool, sb_magic: u64) -> bool {
    // A directory that cannot be read may have anything below it.
    !is_dir || KERNEL_LISTED.contains(&sb_magic) && dir_is_empty(fd).unwrap_or(false)
}

/// [`nothing_mounted_below`] with the mount's filesystem read from the kernel: `None`
/// when something may be mounted below the path, else whether the path is the root of
/// its mount with the mount's 64-bit id (no id: a kernel without unique ids).
pub(super) fn bare_mount(
    ns_id: u64,
    fd: BorrowedFd<'_>,
    probe: &Probe,
    buf: &mut sys::StatmountBuf,
) -> Option<Option<NonZeroU64>> {
    let unique = sys::statx_unique_mnt_id(fd).ok().flatten();
    let magic = match (probe.is_dir, unique) {
        (false, _) => 0,
        (true, Some(id)) => {
            sys::statmount(ns_id, id, sys::STATMOUNT_SB_BASIC, buf)
                .ok()?
                .sb_magic
        }
        (true, None) => return None,
    };
    nothing_mounted_below(fd, probe.is_dir, magic).then(|| {
        unique
            .and_then(NonZeroU64::new)
            .filter(|_| probe.known_mount_root())
    })
}

/// Whether the root `fd` names of a mount a scan found bare (so of a tmpfs or ramfs: a
/// mount's filesystem never changes for its id) still has nothing mounted below it: the
/// rule of [`nothing_mounted_below`], asked again right before a detach that rests on it.
pub(crate) fn still_nothing_below(fd: BorrowedFd<'_>, is_dir: bool) -> bool {
    !is_dir || dir_is_empty(fd).unwrap_or(false)
}

/// Whether the directory `dir` names (an `O_PATH` descriptor will do) has no entry but `.`
/// and `..`. Any failure is an error, never the end of the listing: `readdir_r` through
/// nix reports a failed read as the end, so an unreadable directory looked empty.
fn dir_is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    use nix::fcntl::OFlag;
    let open = |noatime: OFlag| {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | noatime;
        nix::fcntl::openat(dir, ".", flags, nix::sys::stat::Mode::empty())
    };
    // O_NOATIME: looking changes no access time; it needs ownership or CAP_FOWNER.
    let listed = match open(OFlag::O_NOATIME) {
        Err(nix::errno::Errno::EPERM) => open(OFlag::empty()),
        other => other,
    }?;
    let mut buf = [0u8; 4096];
    loop {
        let filled = sys::getdents64(listed.as_fd(), &mut buf)?;
        if filled == 0 {
            return Ok(true);
        }
        let mut records = &buf[..filled];
        // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, d_name.
        while !records.is_empty() {
            let malformed = || io::Error::from_raw_os_error(libc::EIO);
            let reclen = records
                .get(16..18)
                .map(|b| usize::from(u16::from_ne_bytes([b[0], b[1]])))
                .filter(|&len| len > 19 && len <= records.len())
                .ok_or_else(malformed)?;
            let name = records[19..reclen].split(|&b| b == 0).next();
            if !matches!(name, Some(b"." | b"..")) {
                return Ok(false);
            }
            records = &records[reclen..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mntreap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn opened(dir: &std::path::Path) -> OwnedFd {
        sys::open_path_no_symlinks(dir.as_os_str()).unwrap()
    }

    #[test]
    fn a_directory_is_empty_only_when_it_is_read_to_its_end_with_dots_alone() {
        let dir = scratch("dir-is-empty");
        assert!(dir_is_empty(opened(&dir).as_fd()).unwrap());
        // Past one getdents64 buffer of names before the first that is not a dot.
        for k in 0..200 {
            std::fs::write(dir.join(format!("{k:0>40}")), b"").unwrap();
        }
        assert!(!dir_is_empty(opened(&dir).as_fd()).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_read_is_not_taken_for_empty() {
        // A removed directory's listing fails (ENOENT): readdir_r through nix ended there
        // as if it were empty.
        let dir = scratch("dir-removed");
        let fd = opened(&dir);
        std::fs::remove_dir(&dir).unwrap();
        let read = dir_is_empty(fd.as_fd());
        assert!(read.is_err(), "{read:?}");
    }
}
