//! Running code inside other mount namespaces without ever leaving mntreap there.
//!
//! `setns(CLONE_NEWNS)` fails in a thread that shares its fs struct (any thread of a
//! multi-threaded process), and it changes the thread's root and cwd. So all work inside a
//! foreign namespace happens on one dedicated thread that first unshares its fs struct; the
//! thread ends when the work ends, taking its namespace and root with it. No other thread,
//! and in particular not the caller's, ever changes namespace.
//!
//! Paths into `/proc` are resolved through a descriptor of the host's procfs opened before
//! the thread moves: inside a container's namespace `/proc` belongs to another pid
//! namespace, or is not mounted at all.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::mount::MntFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// Failure to set up or enter a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot open the host's procfs at {path}: {source}")]
    OpenProc { path: PathBuf, source: nix::Error },
    #[error("cannot unshare the fs struct of the namespace worker thread: {0}")]
    UnshareFs(nix::Error),
    #[error("cannot enter mount namespace {inode}: {source}")]
    Enter { inode: u64, source: nix::Error },
    #[error("namespace worker thread panicked")]
    Panicked,
}

/// A thread that may enter mount namespaces. Lives only inside [`with_worker`].
pub struct NsWorker {
    proc_dir: OwnedFd,
    current: Option<u64>,
    read_buf: Vec<u8>,
}

/// Runs `body` on a new thread that can enter namespaces, and returns its result once the
/// thread has ended.
pub fn with_worker<R: Send>(
    proc_root: &Path,
    body: impl FnOnce(&mut NsWorker) -> R + Send,
) -> Result<R, NsError> {
    let proc_dir = open(
        proc_root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| NsError::OpenProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    // Events logged on the worker keep the caller's context (which call, which container).
    let parent = tracing::Span::current();
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("mntreap-ns".into())
            .spawn_scoped(scope, move || -> Result<R, NsError> {
                let _parent = parent.enter();
                // From here on this thread's root, cwd and namespace are its own.
                nix::sched::unshare(CloneFlags::CLONE_FS).map_err(NsError::UnshareFs)?;
                let mut worker = NsWorker {
                    proc_dir,
                    current: None,
                    read_buf: Vec::with_capacity(1 << 20),
                };
                Ok(body(&mut worker))
            })
            .expect("spawning a thread");
        handle.join().map_err(|_| NsError::Panicked)?
    })
}

/// Runs `job` for every item on `threads` worker threads (each able to enter namespaces),
/// and returns the results in the items' order.
pub fn map_with_workers<T: Sync, R: Send>(
    proc_root: &Path,
    threads: usize,
    items: &[T],
    job: impl Fn(&mut NsWorker, &T) -> R + Sync,
) -> Result<Vec<R>, NsError> {
    let threads = threads.clamp(1, items.len().max(1));
    let job = &job;
    let chunks: Vec<Result<Vec<(usize, R)>, NsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    // Interleaved, so that large and small namespaces spread evenly.
                    with_worker(proc_root, |worker| {
                        (t..items.len())
                            .step_by(threads)
                            .map(|i| (i, job(worker, &items[i])))
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(NsError::Panicked)))
            .collect()
    });
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for chunk in chunks {
        for (i, r) in chunk? {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect())
}

impl NsWorker {
    /// Enters the namespace behind `ns` (an nsfs descriptor whose inode is `inode`).
    pub fn enter(&mut self, ns: BorrowedFd<'_>, inode: u64) -> Result<(), NsError> {
        if self.current == Some(inode) {
            return Ok(());
        }
        self.current = None;
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNS)
            .map_err(|source| NsError::Enter { inode, source })?;
        self.current = Some(inode);
        Ok(())
    }

    /// The mountinfo of the namespace this thread is in, as seen from the namespace's
    /// root (so chrooted members cannot hide mounts outside their root).
    pub fn read_mountinfo(&mut self) -> io::Result<&[u8]> {
        let fd = openat(
            &self.proc_dir,
            "thread-self/mountinfo",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut file = std::fs::File::from(fd);
        self.read_buf.clear();
        file.read_to_end(&mut self.read_buf)?;
        Ok(&self.read_buf)
    }

    /// Unmounts exactly the mount whose root `target` (an `O_PATH` descriptor opened in the
    /// current namespace) refers to. Going through `/proc/thread-self/fd/N` names that
    /// mount itself, so a mount stacked on the same path after `target` was opened and
    /// checked is never the one removed.
    pub fn umount_fd(&mut self, target: BorrowedFd<'_>, flags: MntFlags) -> nix::Result<()> {
        nix::unistd::fchdir(&self.proc_dir)?;
        let link = format!("thread-self/fd/{}", target.as_raw_fd());
        nix::mount::umount2(OsStr::new(&link), flags)
    }
}
