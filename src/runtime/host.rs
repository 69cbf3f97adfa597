//! Seeing the host's files from here: through `/`, or through a process's
//! `/proc/PID/root` (the managed plugin, a pod), with symlinks resolved inside that root.

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

#[cfg(test)]
mod tests {
    use super::*;

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
