//! Reading every namespace's mount table: `listmount(2)`/`statmount(2)` where the kernel has
//! them (6.10+ for foreign namespaces), `/proc/thread-self/mountinfo` after `setns`
//! otherwise. Both give each namespace's mounts as seen from that namespace's root, with
//! mountinfo ids, so the rest of mntreap cannot tell them apart (a test checks that).

use std::io;
use std::os::fd::AsFd;
use std::str::FromStr;

use crate::namespace::Namespace;
use crate::nsexec::NsWorker;
use crate::sys;
use crate::table::MountTable;

/// Which way mount tables are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// listmount/statmount: no text formatting, 64-bit never-reused mount ids.
    Listmount,
    /// One read of mountinfo per namespace: works on every kernel (CentOS 7's 3.10 too).
    Mountinfo,
}

/// The backend choice a user makes: a backend, or the best the kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Listmount,
    Mountinfo,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// A namespace's table could not be read (the namespace is then reported, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("mount namespace {inode}: {op}: {source}")]
    Io {
        inode: u64,
        op: &'static str,
        source: io::Error,
    },
    #[error("mount namespace {inode}: {source}")]
    Parse {
        inode: u64,
        source: crate::mountinfo::ParseError,
    },
    #[error(transparent)]
    Enter(#[from] crate::nsexec::NsError),
}

impl BackendChoice {
    /// Resolves `Auto` by probing the kernel on our own namespace.
    pub fn resolve(self, any_ns: &Namespace) -> Backend {
        match self {
            BackendChoice::Listmount => Backend::Listmount,
            BackendChoice::Mountinfo => Backend::Mountinfo,
            BackendChoice::Auto => {
                let works = sys::mntns_id(any_ns.fd.as_fd())
                    .and_then(sys::listmount_all)
                    .is_ok();
                if works {
                    Backend::Listmount
                } else {
                    Backend::Mountinfo
                }
            }
        }
    }
}

/// Mask for statmount: everything mntreap reports.
const FULL_MASK: u64 = sys::STATMOUNT_SB_BASIC
    | sys::STATMOUNT_MNT_BASIC
    | sys::STATMOUNT_MNT_ROOT
    | sys::STATMOUNT_MNT_POINT
    | sys::STATMOUNT_FS_TYPE
    | sys::STATMOUNT_SB_SOURCE;

/// Reads one namespace's table with `backend`.
pub fn read_table(
    backend: Backend,
    worker: &mut NsWorker,
    ns: &Namespace,
) -> Result<MountTable, SourceError> {
    match backend {
        Backend::Mountinfo => {
            worker.enter(ns.fd.as_fd(), ns.inode)?;
            let text = worker.read_mountinfo().map_err(|source| SourceError::Io {
                inode: ns.inode,
                op: "reading mountinfo",
                source,
            })?;
            crate::mountinfo::parse(text).map_err(|source| SourceError::Parse {
                inode: ns.inode,
                source,
            })
        }
        Backend::Listmount => read_listmount(ns),
    }
}

fn read_listmount(ns: &Namespace) -> Result<MountTable, SourceError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| SourceError::Io {
            inode: ns.inode,
            op,
            source,
        }
    };
    let ns_id = sys::mntns_id(ns.fd.as_fd()).map_err(io_err("NS_GET_MNTNS_ID"))?;
    let ids = sys::listmount_all(ns_id).map_err(io_err("listmount"))?;
    let mut table = MountTable::with_capacity(ids.len(), ids.len() * 64);
    let mut buf = sys::StatmountBuf::new();
    for id in ids {
        let sm = match sys::statmount(ns_id, id, FULL_MASK, &mut buf) {
            Ok(sm) => sm,
            // Unmounted since listmount listed it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(io_err("statmount")(e)),
        };
        let root = table.intern(sm.root.as_deref().unwrap_or_default());
        let mount_point = table.intern(sm.mount_point.as_deref().unwrap_or_default());
        let fs_type = table.intern(sm.fs_type.as_deref().unwrap_or_default());
        let source = table.intern(sm.source.as_deref().unwrap_or(b"none"));
        table.mounts.push(crate::table::Mount {
            id: u64::from(sm.mnt_id_old),
            parent_id: u64::from(sm.parent_id_old),
            unique_id: Some(sm.mnt_id),
            dev: sm.dev,
            peer_group: (sm.propagation & sys::MS_SHARED != 0 && sm.peer_group != 0)
                .then_some(sm.peer_group),
            master: (sm.master != 0).then_some(sm.master),
            root,
            mount_point,
            fs_type,
            source,
        });
    }
    Ok(table)
}
