//! Raw system calls, and the only `unsafe` code in mntreap.
//!
//! Everything here is a thin, typed wrapper: it returns `io::Result` and leaves context
//! (which path, which pid, which namespace) to the caller's error types. Calls that nix
//! wraps safely (setns, unshare, umount2) are used through nix elsewhere; this module holds
//! what nix and libc do not offer: statx mount ids, openat2, NS_GET_MNTNS_ID, listmount(2)
//! and statmount(2) (Linux 6.8+; their ABI is defined here because the build host's headers
//! may predate them).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// `statx` mask bit for the (reusable, 32-bit) mount id shown in mountinfo (Linux 5.8+).
const STATX_MNT_ID: u32 = 0x1000;
/// `stx_attributes` bit: the path is the root of a mount (Linux 5.8+).
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;

/// listmount/statmount syscall numbers: new syscalls share one number on every architecture.
const SYS_STATMOUNT: libc::c_long = 457;
const SYS_LISTMOUNT: libc::c_long = 458;
/// `_IOR(0xb7, 0x5, __u64)`: the 64-bit id of a mount namespace behind an nsfs fd (Linux 6.9+).
const NS_GET_MNTNS_ID: libc::c_ulong = 0x8008_b705;
/// listmount: start from the namespace's root.
const LSMT_ROOT: u64 = u64::MAX;

pub(crate) const STATMOUNT_SB_BASIC: u64 = 0x1;
pub(crate) const STATMOUNT_MNT_BASIC: u64 = 0x2;
pub(crate) const STATMOUNT_MNT_ROOT: u64 = 0x8;
pub(crate) const STATMOUNT_MNT_POINT: u64 = 0x10;
pub(crate) const STATMOUNT_FS_TYPE: u64 = 0x20;
pub(crate) const STATMOUNT_SB_SOURCE: u64 = 0x200;
/// Superblock options (`upperdir=...` for overlay), Linux 6.10+.
pub(crate) const STATMOUNT_MNT_OPTS: u64 = 0x80;
/// `OVERLAYFS_SUPER_MAGIC`.
pub(crate) const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// `MS_SHARED` as reported in `statmount.mnt_propagation`.
pub(crate) const MS_SHARED: u64 = 1 << 20;

/// What `statx` says about the mount a path (or fd) lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountStat {
    /// The mountinfo mount id, when the kernel reports it (5.8+).
    pub mnt_id: Option<u64>,
    /// Whether the path is the root of its mount, when the kernel reports it (5.8+).
    pub is_mount_root: Option<bool>,
    /// Device of the filesystem (the superblock's `major:minor`).
    pub dev: (u32, u32),
    /// For a block device node: the device it is (`major:minor`).
    pub block_device: Option<(u32, u32)>,
    /// Whether the path is a directory (the file type, which no inode changes).
    pub is_dir: bool,
}

fn cstring(path: &OsStr) -> io::Result<CString> {
    CString::new(path.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `statx(2)` of `path` from `dirfd` (the working directory when none), asking for `mask`.
fn statx(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mask: u32,
) -> io::Result<libc::statx> {
    let raw_dirfd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call, `buf` is a
    // writable statx buffer of the size the kernel expects, and `raw_dirfd` is either
    // AT_FDCWD or a descriptor borrowed for the duration of the call.
    let rc = unsafe { libc::statx(raw_dirfd, path.as_ptr(), flags, mask, buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx returned 0, so the kernel filled the buffer (and it was zeroed before).
    Ok(unsafe { buf.assume_init() })
}

/// `statx(dirfd, path, flags, STATX_MNT_ID)`; `path` may be empty with `AT_EMPTY_PATH`.
pub(crate) fn statx_mount(
    dirfd: Option<BorrowedFd<'_>>,
    path: &OsStr,
    flags: libc::c_int,
) -> io::Result<MountStat> {
    let stx = statx(
        dirfd,
        &cstring(path)?,
        flags,
        STATX_MNT_ID | libc::STATX_TYPE,
    )?;
    let mnt_id = (stx.stx_mask & STATX_MNT_ID != 0).then_some(stx.stx_mnt_id);
    let is_mount_root = (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT != 0)
        .then_some(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0);
    Ok(MountStat {
        mnt_id,
        is_mount_root,
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        block_device: (u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFBLK)
            .then_some((stx.stx_rdev_major, stx.stx_rdev_minor)),
        is_dir: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    })
}

/// Opens `path` as an `O_PATH` descriptor without following any symlink on the way
/// (`openat2` with `RESOLVE_NO_SYMLINKS`), so a path that a namespace has redirected
/// through a symlink is never mistaken for the mount point we scanned. On kernels
/// without openat2 (< 5.6) only the last component is protected (`O_NOFOLLOW`).
pub(crate) fn open_path_no_symlinks(path: &OsStr) -> io::Result<OwnedFd> {
    let c_path = cstring(path)?;
    // No O_DIRECTORY: mount points can be files (a pod's netns file, a bind of one file).
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let mut how: libc::open_how = unsafe_zeroed_open_how();
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c_path` and `how` are valid for the call; the size passed is `how`'s size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // SAFETY: `c_path` is valid for the call; the flags are plain open flags.
        unsafe { libc::open(c_path.as_ptr(), flags) as libc::c_long }
    } else {
        fd
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens `path` (absolute or relative) as an `O_PATH` descriptor resolved *inside* `root`
/// (`openat2` with `RESOLVE_IN_ROOT`): `..` and absolute symlinks stay within it, as they
/// would for a process chrooted there. `--host-root /host` in a pod: the node's own
/// `/var/lib/docker -> /data/docker` leads to the node's `/data/docker`, not the pod's.
/// Kernels without openat2 (< 5.6) get `ENOSYS`, for the caller to refuse on.
pub(crate) fn open_path_in_root(root: BorrowedFd<'_>, path: &OsStr) -> io::Result<OwnedFd> {
    let c_path = cstring(path)?;
    let mut how: libc::open_how = unsafe_zeroed_open_how();
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `root` is a live descriptor, `c_path` and `how` are valid for the call; the
    // size passed is `how`'s size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn unsafe_zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is a plain C struct of integers; all-zero is its documented default.
    unsafe { std::mem::zeroed() }
}

/// The 64-bit id of the mount namespace behind an nsfs descriptor (`NS_GET_MNTNS_ID`).
pub(crate) fn mntns_id(ns_fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: NS_GET_MNTNS_ID writes one u64 through the pointer, which points to `id`.
    let rc = unsafe { libc::ioctl(ns_fd.as_raw_fd(), NS_GET_MNTNS_ID, &mut id as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// The kernel's clock ticks per second (`USER_HZ`), the unit of `/proc/PID/stat` times.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// `_IO(0xb7, 0x1)`: a descriptor of the user namespace that owns the namespace behind an
/// nsfs fd (Linux 4.9+).
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The inode of the user namespace owning the namespace behind `ns_fd`: whoever mounts in
/// that namespace needs `CAP_SYS_ADMIN` there, so it says who can have planted its mounts.
pub(crate) fn owner_userns_inode(ns_fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns_fd.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = std::fs::File::from(owned).metadata()?;
    Ok(std::os::unix::fs::MetadataExt::ino(&meta))
}

/// `struct mnt_ns_info` (`MNT_NS_INFO_SIZE_VER0`, Linux 6.12+).
#[repr(C)]
#[derive(Default)]
struct MntNsInfo {
    size: u32,
    nr_mounts: u32,
    mnt_ns_id: u64,
}

/// `_IOR(0xb7, 11, struct mnt_ns_info)` and `_IOR(0xb7, 12, ...)`: the next and previous
/// mount namespace in the kernel's list, by id, among those the caller has CAP_SYS_ADMIN
/// over (Linux 6.12+).
const NS_MNT_GET_NEXT: libc::c_ulong = 0x8010_b70b;
const NS_MNT_GET_PREV: libc::c_ulong = 0x8010_b70c;

/// Which way [`mntns_neighbour`] walks the kernel's list of mount namespaces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Walk {
    Next,
    Previous,
}

/// The mount namespace after (or before) the one behind `ns_fd` in the kernel's list, as a
/// new nsfs descriptor with its 64-bit id; `Ok(None)` at the end of the list. Every live
/// mount namespace is in that list, with processes or not (kept by an nsfs bind or a
/// descriptor). `ENOTTY`/`EINVAL` on kernels before 6.12.
pub(crate) fn mntns_neighbour(
    ns_fd: BorrowedFd<'_>,
    walk: Walk,
) -> io::Result<Option<(OwnedFd, u64)>> {
    let mut info = MntNsInfo {
        size: std::mem::size_of::<MntNsInfo>() as u32,
        ..MntNsInfo::default()
    };
    let request = match walk {
        Walk::Next => NS_MNT_GET_NEXT,
        Walk::Previous => NS_MNT_GET_PREV,
    };
    // SAFETY: the request writes at most `info.size` bytes into `info`, a live
    // `struct mnt_ns_info` of exactly that size, and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns_fd.as_raw_fd(), request, &mut info as *mut MntNsInfo) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some((owned, info.mnt_ns_id)))
}

/// A duplicate of descriptor `fd` of process `pid` (`pidfd_open` + `pidfd_getfd`, Linux
/// 5.6+): no `open` of whatever `/proc/PID/fd/N` points to by then (a FIFO, a file on a
/// user's FUSE mount, which could block), and the pid is pinned by the pidfd.
pub(crate) fn fd_of_process(pid: i32, fd: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `pidfd` as a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags, and returns a new
    // descriptor (close-on-exec) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as libc::c_int) })
}

/// `_IO(0xb7, 0x3)`: the `CLONE_NEW*` type of the namespace behind an nsfs fd.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `fd` is a mount namespace (an nsfs descriptor of type `CLONE_NEWNS`).
pub(crate) fn is_mount_namespace(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type or -1 (ENOTTY on a
    // descriptor that is not nsfs).
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNS
}

/// `struct loop_info64` (linux/loop.h): what `LOOP_GET_STATUS64` reports of a loop device.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// The device (`dev_t`) of the filesystem holding the backing file of the loop device at
/// `node`, as the kernel recorded it when the file was attached (`lo_device`).
pub(crate) fn loop_backing_dev(node: &std::path::Path) -> io::Result<u64> {
    let file = std::fs::File::open(node)?;
    let mut info = std::mem::MaybeUninit::<LoopInfo64>::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` through the pointer, which
    // points to a zeroed buffer of exactly that layout; `file` stays open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned 0, so the kernel filled the buffer (zeroed before).
    let info = unsafe { info.assume_init() };
    Ok(info.lo_device)
}

/// `struct mnt_id_req`, version 1 (with `mnt_ns_id`, Linux 6.10+).
#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    param: u64,
    mnt_ns_id: u64,
}

/// `statx` mask bit for the 64-bit, never-reused mount id (Linux 6.8+).
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// `getdents64(2)` into `buf`: the bytes of `linux_dirent64` records it filled (0 at the
/// end of the directory). A failed read is an error, never the end.
pub(crate) fn getdents64(dir: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which outlives the
    // call; `dir` is borrowed for the duration of the call.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The 64-bit unique id of the mount an fd is on (`statx(STATX_MNT_ID_UNIQUE)`).
pub(crate) fn statx_unique_mnt_id(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let stx = statx(Some(fd), c"", libc::AT_EMPTY_PATH, STATX_MNT_ID_UNIQUE)?;
    Ok((stx.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id))
}

/// Lists the unique (64-bit) ids of every mount in namespace `ns_id`, in ascending order.
pub(crate) fn listmount_all(ns_id: u64) -> io::Result<Vec<u64>> {
    listmount(ns_id, LSMT_ROOT)
}

/// Lists the unique ids of every mount below mount `mnt_id` (itself excluded).
pub(crate) fn listmount_below(ns_id: u64, mnt_id: u64) -> io::Result<Vec<u64>> {
    listmount(ns_id, mnt_id)
}

fn listmount(ns_id: u64, parent: u64) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = Vec::with_capacity(4096);
    let mut last = 0u64;
    loop {
        let req = MntIdReq {
            size: std::mem::size_of::<MntIdReq>() as u32,
            spare: 0,
            mnt_id: parent,
            param: last,
            mnt_ns_id: ns_id,
        };
        let room = ids.capacity() - ids.len();
        // SAFETY: the kernel writes at most `room` u64 values into the spare capacity
        // starting at `ids.as_mut_ptr().add(ids.len())`, which is allocated and unused.
        let n = unsafe {
            libc::syscall(
                SYS_LISTMOUNT,
                &req as *const MntIdReq,
                ids.as_mut_ptr().add(ids.len()),
                room,
                0u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised exactly `n` (<= room) elements after the old length.
        unsafe { ids.set_len(ids.len() + n) };
        if n < room {
            return Ok(ids);
        }
        // Full buffer: continue after the last id we got.
        last = *ids.last().expect("n == room > 0");
        ids.reserve(ids.capacity());
    }
}

/// Fixed part of `struct statmount` (the kernel's is 512 bytes; strings follow it).
#[repr(C)]
#[derive(Clone, Copy)]
struct StatmountHeader {
    size: u32,
    mnt_opts: u32,
    mask: u64,
    sb_dev_major: u32,
    sb_dev_minor: u32,
    sb_magic: u64,
    sb_flags: u32,
    fs_type: u32,
    mnt_id: u64,
    mnt_parent_id: u64,
    mnt_id_old: u32,
    mnt_parent_id_old: u32,
    mnt_attr: u64,
    mnt_propagation: u64,
    mnt_peer_group: u64,
    mnt_master: u64,
    propagate_from: u64,
    mnt_root: u32,
    mnt_point: u32,
    mnt_ns_id: u64,
    fs_subtype: u32,
    sb_source: u32,
}
const STATMOUNT_FIXED_SIZE: usize = 512;

/// One mount as `statmount(2)` describes it; strings are present when requested.
#[derive(Debug, Clone, Default)]
pub(crate) struct Statmount {
    pub mnt_id: u64,
    pub parent_id: u64,
    pub mnt_id_old: u32,
    pub parent_id_old: u32,
    pub dev: (u32, u32),
    pub sb_magic: u64,
    pub propagation: u64,
    pub peer_group: u64,
    pub master: u64,
    pub root: Option<Vec<u8>>,
    pub mount_point: Option<Vec<u8>>,
    pub fs_type: Option<Vec<u8>>,
    pub source: Option<Vec<u8>>,
    pub options: Option<Vec<u8>>,
}

/// Reusable buffer for [`statmount`]: one allocation serves a whole namespace.
pub(crate) struct StatmountBuf(Vec<u64>);

impl StatmountBuf {
    pub(crate) fn new() -> Self {
        // u64 elements keep the header 8-byte aligned; 4 KiB + header fits most strings.
        StatmountBuf(vec![0u64; (STATMOUNT_FIXED_SIZE + 4096) / 8])
    }
}

/// `statmount(2)` of mount `mnt_id` in namespace `ns_id`, asking for `mask`.
pub(crate) fn statmount(
    ns_id: u64,
    mnt_id: u64,
    mask: u64,
    buf: &mut StatmountBuf,
) -> io::Result<Statmount> {
    loop {
        let req = MntIdReq {
            size: std::mem::size_of::<MntIdReq>() as u32,
            spare: 0,
            mnt_id,
            param: mask,
            mnt_ns_id: ns_id,
        };
        let bytes = buf.0.len() * 8;
        // SAFETY: the kernel writes at most `bytes` bytes into `buf`, which is that large.
        let rc = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.0.as_mut_ptr(),
                bytes,
                0u32,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EOVERFLOW) && bytes < (1 << 20) {
                let grown = buf.0.len() * 4;
                buf.0.resize(grown, 0);
                continue;
            }
            return Err(err);
        }
        // SAFETY: the buffer is 8-byte aligned, at least STATMOUNT_FIXED_SIZE bytes long and
        // the kernel filled the fixed part; StatmountHeader is a prefix of that layout made
        // of plain integers.
        let header = unsafe { *(buf.0.as_ptr() as *const StatmountHeader) };
        // SAFETY: a u64 slice may be viewed as bytes; the length is the slice's byte size.
        let raw: &[u8] = unsafe { std::slice::from_raw_parts(buf.0.as_ptr() as *const u8, bytes) };
        let strings = &raw[STATMOUNT_FIXED_SIZE..(header.size as usize).min(bytes)];
        let string = |flag: u64, offset: u32| -> Option<Vec<u8>> {
            if header.mask & flag == 0 {
                return None;
            }
            let tail = strings.get(offset as usize..)?;
            let s = CStr::from_bytes_until_nul(tail).ok()?;
            Some(s.to_bytes().to_vec())
        };
        return Ok(Statmount {
            mnt_id: header.mnt_id,
            parent_id: header.mnt_parent_id,
            mnt_id_old: header.mnt_id_old,
            parent_id_old: header.mnt_parent_id_old,
            dev: (header.sb_dev_major, header.sb_dev_minor),
            sb_magic: header.sb_magic,
            propagation: header.mnt_propagation,
            peer_group: header.mnt_peer_group,
            master: header.mnt_master,
            root: string(STATMOUNT_MNT_ROOT, header.mnt_root),
            mount_point: string(STATMOUNT_MNT_POINT, header.mnt_point),
            fs_type: string(STATMOUNT_FS_TYPE, header.fs_type),
            source: string(STATMOUNT_SB_SOURCE, header.sb_source),
            options: string(STATMOUNT_MNT_OPTS, header.mnt_opts),
        });
    }
}

/// `fanotify_init` flag: report mount attach and detach events (Linux 6.15+).
const FAN_REPORT_MNT: libc::c_uint = 0x0000_4000;
/// `fanotify_mark` flag: the object marked is a mount namespace (an nsfs file).
const FAN_MARK_MNTNS: libc::c_uint = 0x0000_0110;
/// A mount was attached in (or moved within) a marked namespace.
pub(crate) const FAN_MNT_ATTACH: u64 = 0x0100_0000;
/// A mount was detached from (or moved within) a marked namespace.
pub(crate) const FAN_MNT_DETACH: u64 = 0x0200_0000;
/// The info record that carries the unique id of the mount an event is about.
pub(crate) const FAN_EVENT_INFO_TYPE_MNT: u8 = 7;

/// A new fanotify group that reports mount events, non-blocking (Linux 6.15+; needs
/// CAP_SYS_ADMIN).
pub(crate) fn mount_events_group() -> io::Result<OwnedFd> {
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | FAN_REPORT_MNT;
    // SAFETY: fanotify_init takes two integer flag words and returns a new descriptor or -1.
    let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fanotify_init returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks the mount namespace behind `ns_fd` in `group`: its attaches and detaches are
/// reported from now on, until the namespace goes.
pub(crate) fn watch_mount_namespace(
    group: BorrowedFd<'_>,
    ns_fd: BorrowedFd<'_>,
) -> io::Result<()> {
    // SAFETY: both descriptors are borrowed, so open for the call; a null pathname makes
    // the kernel mark the object `ns_fd` refers to, and nothing else is passed by pointer.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | FAN_MARK_MNTNS,
            FAN_MNT_ATTACH | FAN_MNT_DETACH,
            ns_fd.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the free memory of the heap back to the kernel. glibc keeps what a large piece
/// of work freed (an agent's first sweep reads every table), so a long-running process
/// would stay at that peak; musl returns freed memory by itself, so this is glibc only.
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only releases glibc's own free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
