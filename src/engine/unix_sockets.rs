//! Which processes hold the listening unix socket bound to a given file, from the kernel's
//! own answers: `sock_diag` (`UDIAG_SHOW_VFS`: the device and inode of the file each
//! listener is bound to) in the process's network namespace, and the process's descriptors.
//!
//! Nothing here reads a socket's *path* as text: `/proc/net/unix` prints abstract names
//! unescaped (a name with a newline forges lines), and the same path in another mount
//! namespace is another file. The bound file's identity is what a client connecting to
//! the path reaches.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// A file's identity as `stat` reports it: `(st_dev, st_ino)`.
pub type FileId = (u64, u64);

/// The identity of the socket file at `path` (as this process reads it).
pub fn file_id(path: &Path) -> io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// The pid in the credentials of the listening socket at `path` (`SO_PEERCRED` of a
/// connection to it: the process that called `listen`). The connect does not wait: a
/// full backlog (a stuck daemon) gives `None` at once.
pub fn listener_creator(path: &Path) -> Option<i32> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new(path).ok()?;
    socket::connect(fd.as_raw_fd(), &addr).ok()?;
    socket::getsockopt(&fd, sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// A listening unix socket as `sock_diag` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The socket's own inode (what `/proc/PID/fd/N -> socket:[inode]` shows).
    pub inode: u32,
    /// The bound file: `(device in the kernel's form, inode)`.
    pub file: Option<(u32, u32)>,
    /// The path it was bound to, as given to `bind` (`None` for abstract names).
    pub path: Option<std::path::PathBuf>,
}

/// The listening unix sockets among `inodes`, asked of the kernel one by one (an exact
/// lookup, not a dump: a dump resumes by position and can skip a socket when others close
/// meanwhile) in the network namespace of `netns_pid`, on a short-lived thread that enters
/// that namespace.
fn query_listeners(proc_root: &Path, netns_pid: i32, inodes: &[u32]) -> io::Result<Vec<Listener>> {
    let ns = std::fs::File::open(proc_root.join(format!("{netns_pid}/ns/net")))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("mntreap-sockdiag".into())
            .spawn_scoped(s, || {
                // Only this thread changes network namespace, and it ends with the query.
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
                socket.bind_auto()?;
                socket.connect(&SocketAddr::new(0, 0))?;
                let mut found = Vec::new();
                for &inode in inodes {
                    if let Some(l) = query_one(&mut socket, inode)? {
                        found.push(l);
                    }
                }
                Ok(found)
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sock_diag worker panicked")))
    })
}

/// One exact `sock_diag` lookup: the socket with this inode, if it is a listening unix
/// socket of the current network namespace.
fn query_one(socket: &mut Socket, inode: u32) -> io::Result<Option<Listener>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::LISTEN,
            inode,
            show_flags: ShowFlags::VFS | ShowFlags::NAME,
            cookie: [0xff; 8],
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let mut receive = vec![0u8; 8192];
    let size = socket.recv(&mut &mut receive[..], 0)?;
    let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&receive[..size])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r)) = message.payload else {
        // Not a unix socket of this namespace (ENOENT), or gone meanwhile.
        return Ok(None);
    };
    if r.header.state != TCP_LISTEN {
        return Ok(None);
    }
    let mut l = Listener {
        inode: r.header.inode,
        file: None,
        path: None,
    };
    for nla in &r.nlas {
        match nla {
            Nla::Vfs(vfs) => l.file = Some(vfs_fields(vfs)),
            Nla::Name(UnixDiagName::Pathname(p)) => l.path = Some(p.into()),
            _ => {}
        }
    }
    Ok(Some(l))
}

/// The TCP state number the kernel uses for listening sockets (`TCP_LISTEN`).
const TCP_LISTEN: u8 = 10;

/// `(device, inode)` of a `UNIX_DIAG_VFS` attribute, through its wire form (the crate
/// keeps the fields private): two native-endian u32, inode first.
fn vfs_fields(vfs: &netlink_packet_sock_diag::unix::nlas::Vfs) -> (u32, u32) {
    use netlink_packet_core::Emitable;
    let mut raw = [0u8; 8];
    if vfs.buffer_len() != raw.len() {
        return (0, 0);
    }
    vfs.emit(&mut raw);
    let inode = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let device = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (device, inode)
}

/// `st_dev` in the kernel's internal form (`MKDEV`: major << 20 | minor), as sock_diag
/// reports a superblock's device.
fn kernel_dev(st_dev: u64) -> u32 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    ((major << 20) | (minor & 0xf_ffff)) as u32
}

/// The socket inodes among `pid`'s descriptors (`/proc/PID/fd/N -> socket:[inode]`).
pub fn socket_inodes(proc_root: &Path, pid: i32) -> HashSet<u32> {
    let Ok(fds) = std::fs::read_dir(proc_root.join(format!("{pid}/fd"))) else {
        return HashSet::new();
    };
    fds.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        link.to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Of `candidates`, those that hold a listening socket bound to `file`. A socket belongs to
/// the network namespace of whoever created it (systemd under socket activation), so each
/// candidate's sockets are looked up in its own namespace and in those of `also_in` (the
/// socket's peer, pid 1). An error only when the kernel could not be asked at all.
pub fn holders_of(
    proc_root: &Path,
    candidates: &[i32],
    also_in: &[i32],
    file: FileId,
) -> io::Result<Vec<i32>> {
    let wanted = (kernel_dev(file.0), file.1 as u32);
    let netns_of = |pid: i32| {
        std::fs::metadata(proc_root.join(format!("{pid}/ns/net")))
            .ok()
            .map(|m| m.ino())
    };
    let mut holders = Vec::new();
    let mut asked = false;
    let mut last_error = None;
    for &pid in candidates {
        let inodes: Vec<u32> = socket_inodes(proc_root, pid).into_iter().collect();
        if inodes.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        for netns_pid in std::iter::once(pid).chain(also_in.iter().copied()) {
            if !netns_of(netns_pid).is_some_and(|ns| seen.insert(ns)) {
                continue;
            }
            match query_listeners(proc_root, netns_pid, &inodes) {
                Ok(listeners) => {
                    asked = true;
                    if listeners.iter().any(|l| l.file == Some(wanted)) {
                        holders.push(pid);
                        break;
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    match (asked, last_error) {
        (false, Some(e)) => Err(e),
        _ => {
            holders.sort_unstable();
            Ok(holders)
        }
    }
}

/// The paths of the listening sockets `pid` holds (abstract names left out), as the
/// kernel recorded them at `bind`.
pub fn listening_paths(proc_root: &Path, pid: i32) -> Vec<std::path::PathBuf> {
    let inodes: Vec<u32> = socket_inodes(proc_root, pid).into_iter().collect();
    let mut paths: Vec<std::path::PathBuf> = [pid, 1]
        .iter()
        .flat_map(|&ns| query_listeners(proc_root, ns, &inodes).unwrap_or_default())
        .filter_map(|l| l.path)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_round_trips_stat_encoding() {
        // st_dev 0x0803 (8:3, sda3) is MKDEV(8, 3).
        assert_eq!(kernel_dev(0x0803), (8 << 20) | 3);
        // Large minors (anonymous devices such as 0:1234).
        let st = nix::sys::stat::makedev(0, 1234);
        assert_eq!(kernel_dev(st), 1234);
    }

    #[test]
    fn this_process_holds_its_listener_until_it_closes_it() {
        let dir = std::env::temp_dir().join(format!("mntreap-uds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let other_path = dir.join("other.sock");
        let _other = std::os::unix::net::UnixListener::bind(&other_path).unwrap();
        let me = std::process::id() as i32;
        let id = file_id(&path).unwrap();
        assert_eq!(
            holders_of(Path::new("/proc"), &[me], &[], id).unwrap(),
            vec![me]
        );
        assert!(listening_paths(Path::new("/proc"), me).contains(&path));
        // Closed: the file stays, but nobody listens on it any more.
        drop(listener);
        assert!(
            holders_of(Path::new("/proc"), &[me], &[], id)
                .unwrap()
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
