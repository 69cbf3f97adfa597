//! Seeing the host from here: its files through `/`, or through a process's
//! `/proc/PID/root` (the managed plugin, a pod), with symlinks resolved inside that root;
//! its namespaces, and which processes run the host's own executables.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A host path as this process can read it, through `host_root` (`/`, or a process's
/// `/proc/PID/root`). Symlinks on the way are resolved inside `host_root`: the kernel
/// would resolve an absolute one (`/var/run -> /run`) in *this* process's root, which in a
/// plugin or a pod is not the host's.
pub fn on_host(host_root: &Path, path: &Path) -> PathBuf {
    if host_root == Path::new("/") {
        return path.to_path_buf();
    }
    host_root.join(resolve_in_root(host_root, path))
}

/// `path` with every symlink resolved as if `root` were `/`, relative to `root` (no
/// leading `/`); a component that does not exist ends the resolution, the rest is kept.
fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut done = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&c);
        match std::fs::read_link(root.join(&next)) {
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                pending.extend(
                    target
                        .components()
                        .filter_map(|t| match t {
                            Component::Normal(s) => Some(s.to_os_string()),
                            Component::ParentDir => Some("..".into()),
                            _ => None,
                        })
                        .rev(),
                );
            }
            _ => done = next,
        }
    }
    done
}

/// Path components that only a container's files live under (overlay `merged` and
/// `diff`, a bundle's `rootfs`, containerd's `snapshots`).
const CONTAINER_DIRS: &[&str] = &["merged", "diff", "rootfs", "snapshots"];

/// The host as this process finds it: the user and mount namespaces of the process whose
/// root `--host-root` is (mntreap's own for `/`, pid N's for `/proc/N/root`), so that a
/// process *named* like a runtime daemon is taken for one only when it is the host's.
#[derive(Debug, Clone)]
pub struct HostView {
    root: PathBuf,
    proc_root: PathBuf,
    /// The host's user namespace (mntreap's own when the host root says no process).
    user_ns: Option<u64>,
    /// The host's mount namespace; `None` when the host root names no process (or its
    /// namespace is unreadable).
    mnt_ns: Option<u64>,
    /// Where containers' files live besides the runtime roots (a moved data root).
    container_roots: Vec<PathBuf>,
}

fn ns_inode(proc_root: &Path, who: &str, kind: &str) -> Option<u64> {
    std::fs::metadata(proc_root.join(who).join("ns").join(kind))
        .ok()
        .map(|m| m.ino())
}

impl HostView {
    pub fn new(proc_root: &Path, host_root: &Path) -> HostView {
        let who = if host_root == Path::new("/") {
            Some("self".to_string())
        } else {
            host_root.strip_prefix(proc_root).ok().and_then(|rest| {
                let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
                match parts.as_slice() {
                    [pid, "root"] if pid.parse::<u32>().is_ok() => Some(pid.to_string()),
                    _ => None,
                }
            })
        };
        let ns = |kind: &str| who.as_deref().and_then(|w| ns_inode(proc_root, w, kind));
        HostView {
            root: host_root.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            user_ns: ns("user").or_else(|| ns_inode(proc_root, "self", "user")),
            mnt_ns: ns("mnt"),
            container_roots: Vec::new(),
        }
    }

    /// Also counts executables under `roots` as containers' (a data root elsewhere).
    pub fn with_container_roots(mut self, roots: &[PathBuf]) -> HostView {
        self.container_roots.extend(roots.iter().cloned());
        self
    }

    /// Whether `pid` is in the host's mount namespace; `None` when that is not known.
    pub fn in_host_mount_ns(&self, pid: i32) -> Option<bool> {
        let host = self.mnt_ns?;
        Some(ns_inode(&self.proc_root, &pid.to_string(), "mnt") == Some(host))
    }

    /// Whether `pid` runs one of the host's own executables in the host's user namespace:
    /// the file the kernel's `exe` names is the file at that path in the host's root (same
    /// device and inode: a container's `/usr/bin/containerd` is its image's, and `exe`
    /// shows it relative to the container's root), and that path is under no container
    /// root. An executable replaced since it started (` (deleted)`, an upgrade) counts when
    /// it lived on the device of the host's directory at that path.
    pub fn runs_host_binary(&self, pid: i32) -> bool {
        let base = self.proc_root.join(pid.to_string());
        if ns_inode(&self.proc_root, &pid.to_string(), "user") != self.user_ns {
            return false;
        }
        let (Ok(link), Ok(exe)) = (
            std::fs::read_link(base.join("exe")),
            std::fs::metadata(base.join("exe")),
        ) else {
            return false;
        };
        let text = link.to_string_lossy();
        let (path, deleted) = match text.strip_suffix(" (deleted)") {
            Some(p) => (PathBuf::from(p), true),
            None => (link.clone(), false),
        };
        if self.under_container_root(&path) {
            return false;
        }
        let seen = |p: &Path| std::fs::metadata(on_host(&self.root, p)).ok();
        if deleted {
            path.parent()
                .and_then(seen)
                .is_some_and(|d| d.dev() == exe.dev())
        } else {
            seen(&path).is_some_and(|m| (m.dev(), m.ino()) == (exe.dev(), exe.ino()))
        }
    }

    fn under_container_root(&self, path: &Path) -> bool {
        crate::engine::policy::RUNTIME_ROOTS
            .iter()
            .map(Path::new)
            .chain(self.container_roots.iter().map(PathBuf::as_path))
            .any(|r| path.starts_with(r))
            || path
                .iter()
                .any(|c| CONTAINER_DIRS.iter().any(|d| c == std::ffi::OsStr::new(d)))
    }
}

/// Reads a small record file (at most 4 MiB): a crafted huge file is refused, not read.
pub fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(4 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() >= 4 << 20 {
        return Err(format!("{}: larger than 4 MiB", path.display()));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hosts_own_executables_in_its_namespaces_count() {
        let me = std::process::id() as i32;
        let proc_root = Path::new("/proc");
        let host = HostView::new(proc_root, Path::new("/"));
        assert!(
            host.runs_host_binary(me),
            "this test's own binary is the host's"
        );
        assert_eq!(host.in_host_mount_ns(me), Some(true));
        // pid N's root names pid N's namespaces; any other root names none.
        let via_pid = HostView::new(proc_root, &proc_root.join(format!("{me}/root")));
        assert_eq!(via_pid.in_host_mount_ns(me), Some(true));
        assert_eq!(
            HostView::new(proc_root, Path::new("/host")).in_host_mount_ns(me),
            None
        );
        // The same executable copied under a container root (a bundle's rootfs): not the
        // host's, whatever its name.
        let dir = std::env::temp_dir().join(format!("mntreap-hostview-{me}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let exe = dir.join("rootfs/containerd");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .as_deref()
            != Some(&exe)
        {
            assert!(std::time::Instant::now() < deadline, "the copy never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!host.runs_host_binary(pid));
        // Moved out of the container root it is the host's; under a data root given as
        // a container root it is not.
        let outside = dir.join("containerd");
        std::fs::copy("/bin/sleep", &outside).unwrap();
        let mut other = std::process::Command::new(&outside)
            .arg("30")
            .spawn()
            .unwrap();
        let opid = other.id() as i32;
        while std::fs::read_link(format!("/proc/{opid}/exe"))
            .ok()
            .as_deref()
            != Some(&outside)
        {
            assert!(std::time::Instant::now() < deadline, "the copy never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(host.runs_host_binary(opid));
        assert!(
            !host
                .clone()
                .with_container_roots(std::slice::from_ref(&dir))
                .runs_host_binary(opid)
        );
        for c in [&mut child, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_paths_resolve_symlinks_inside_the_host_root() {
        let root = std::env::temp_dir().join(format!("mntreap-hostroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("run/sub")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../run/sub", root.join("var/rel")).unwrap();
        let on = |p: &str| on_host(&root, Path::new(p));
        assert_eq!(on("/var/run/docker.sock"), root.join("run/docker.sock"));
        assert_eq!(on("/var/rel/x"), root.join("run/sub/x"));
        assert_eq!(on("/var/lib/docker"), root.join("var/lib/docker"));
        // An absolute link never leaves the root.
        std::os::unix::fs::symlink("/../../../etc", root.join("escape")).unwrap();
        assert_eq!(on("/escape/passwd"), root.join("etc/passwd"));
        assert_eq!(
            on_host(Path::new("/"), Path::new("/var/run")),
            PathBuf::from("/var/run")
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
