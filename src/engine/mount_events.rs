//! The kernel's word that a namespace's mounts changed: fanotify mount events
//! (`FAN_MARK_MNTNS`, Linux 6.15+) for the namespaces whose tables the index keeps, so that
//! an unchanged namespace costs no `listmount` at all.
//!
//! An event names a mount by its unique id, not the namespace it happened in: a detach or
//! a move names a mount a kept table holds, an attach one that no table knows yet. Events
//! do not report propagation changes (`--make-private`), which the index's age bounds.
//! A group that reports mounts hands out no file descriptors (events are about mounts,
//! not files), so reading one leaves nothing to close.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::engine::sys;

/// One mount event, or the word that some were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountEvent {
    /// A mount was attached (made here, or propagated here).
    Attached(u64),
    /// A mount was detached.
    Detached(u64),
    /// A mount moved within its namespace (both bits set).
    Moved(u64),
    /// Events were lost (the queue overflowed, or one could not be read): anything may
    /// have changed.
    Lost,
}

/// A fanotify group that reports the mount events of the namespaces marked in it.
#[derive(Debug)]
pub struct MountEvents {
    group: OwnedFd,
}

/// `struct fanotify_event_metadata`: 24 bytes, then the event's info records.
const METADATA_LEN: usize = 24;
/// `struct fanotify_event_info_mnt`: a 4-byte header, padding, the 64-bit mount id.
const MNT_INFO_LEN: usize = 16;

impl MountEvents {
    /// A new group; fails on kernels before 6.15 (EINVAL) or without CAP_SYS_ADMIN.
    pub fn new() -> io::Result<Self> {
        Ok(MountEvents {
            group: sys::mount_events_group()?,
        })
    }

    /// Reports the mounts of the namespace behind `ns_fd` from now on. Mark a namespace
    /// before reading its table, so that no change after the read goes unreported.
    pub fn watch(&self, ns_fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::watch_mount_namespace(self.group.as_fd(), ns_fd)
    }

    /// Every event queued since the last call; a read that fails says [`MountEvent::Lost`].
    pub fn drain(&self) -> Vec<MountEvent> {
        let mut events = Vec::new();
        // Drained before every table reused unlisted: usually empty, so no heap buffer.
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(self.group.as_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => break,
                Ok(n) => parse(&buf[..n], &mut events),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    events.push(MountEvent::Lost);
                    break;
                }
            }
        }
        events
    }
}

/// Decodes the events in `buf` (what one `read` of the group gave). Anything it cannot
/// decode is [`MountEvent::Lost`]: a misread event must make the index read again, never
/// keep a table.
pub fn parse(buf: &[u8], out: &mut Vec<MountEvent>) {
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]) as usize;
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < METADATA_LEN {
            out.push(MountEvent::Lost);
            return;
        }
        let event_len = u32_at(rest, 0) as usize;
        let metadata_len = u16_at(rest, 6);
        if event_len < METADATA_LEN || event_len > rest.len() || metadata_len > event_len {
            out.push(MountEvent::Lost);
            return;
        }
        let (event, next) = rest.split_at(event_len);
        rest = next;
        let mask = u64_at(event, 8);
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(MountEvent::Lost);
            continue;
        }
        let mut mnt_id = None;
        let mut records = &event[metadata_len.max(METADATA_LEN)..];
        while records.len() >= 4 {
            let len = u16_at(records, 2);
            if len < 4 || len > records.len() {
                break;
            }
            if records[0] == sys::FAN_EVENT_INFO_TYPE_MNT && len >= MNT_INFO_LEN {
                mnt_id = Some(u64_at(records, 8));
            }
            records = &records[len..];
        }
        let attach = mask & sys::FAN_MNT_ATTACH != 0;
        let detach = mask & sys::FAN_MNT_DETACH != 0;
        out.push(match (mnt_id, attach, detach) {
            (Some(id), true, true) => MountEvent::Moved(id),
            (Some(id), true, false) => MountEvent::Attached(id),
            (Some(id), false, true) => MountEvent::Detached(id),
            _ => MountEvent::Lost,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u64, mnt_id: Option<u64>) -> Vec<u8> {
        let mut e = Vec::new();
        let len = METADATA_LEN + if mnt_id.is_some() { MNT_INFO_LEN } else { 0 };
        e.extend_from_slice(&(len as u32).to_ne_bytes());
        e.extend_from_slice(&[3, 0]);
        e.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&(-1i32).to_ne_bytes());
        e.extend_from_slice(&0i32.to_ne_bytes());
        if let Some(id) = mnt_id {
            e.extend_from_slice(&[sys::FAN_EVENT_INFO_TYPE_MNT, 0]);
            e.extend_from_slice(&(MNT_INFO_LEN as u16).to_ne_bytes());
            e.extend_from_slice(&[0; 4]);
            e.extend_from_slice(&id.to_ne_bytes());
        }
        e
    }

    #[test]
    fn decodes_each_kind_and_calls_anything_else_lost() {
        let mut buf = event(sys::FAN_MNT_ATTACH, Some(0x1_0000_0007));
        buf.extend(event(sys::FAN_MNT_DETACH, Some(9)));
        buf.extend(event(sys::FAN_MNT_ATTACH | sys::FAN_MNT_DETACH, Some(10)));
        buf.extend(event(libc::FAN_Q_OVERFLOW, None));
        buf.extend(event(sys::FAN_MNT_ATTACH, None));
        let mut out = Vec::new();
        parse(&buf, &mut out);
        assert_eq!(
            out,
            [
                MountEvent::Attached(0x1_0000_0007),
                MountEvent::Detached(9),
                MountEvent::Moved(10),
                MountEvent::Lost,
                MountEvent::Lost,
            ]
        );
    }

    #[test]
    fn a_truncated_or_crafted_length_is_lost_not_read_past() {
        let whole = event(sys::FAN_MNT_DETACH, Some(9));
        for cut in [1, METADATA_LEN - 1, whole.len() - 1] {
            let mut out = Vec::new();
            parse(&whole[..cut], &mut out);
            assert_eq!(out, [MountEvent::Lost], "cut at {cut}");
        }
        let mut zero = whole.clone();
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        parse(&zero, &mut out);
        assert_eq!(out, [MountEvent::Lost]);
        // An info record claiming more than the event holds is ignored: no id, so lost.
        let mut long = whole;
        long[METADATA_LEN + 2..METADATA_LEN + 4].copy_from_slice(&200u16.to_ne_bytes());
        let mut out = Vec::new();
        parse(&long, &mut out);
        assert_eq!(out, [MountEvent::Lost]);
    }
}
