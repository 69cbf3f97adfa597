//! Safety rails on what a user may target. Every refusal says why and what to do instead,
//! and happens before anything is scanned or changed.

use std::io;
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

/// Directories under which container runtimes keep their mounts: targets here need no
/// `--any-path`.
pub const RUNTIME_ROOTS: &[&str] = &[
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/containers/storage",
    "/run/k3s/containerd",
    "/run/netns",
    "/var/run/netns",
    "/run/docker",
    "/var/run/docker",
];

/// Trees that are never a target, nor anything below them.
const SYSTEM_TREES: &[&str] = &["/proc", "/sys", "/dev", "/boot"];

/// Directories that are never a target themselves (things below them may be).
const SYSTEM_DIRS: &[&str] = &[
    "/", "/run", "/var", "/var/lib", "/var/run", "/usr", "/etc", "/home", "/tmp", "/root", "/bin",
    "/sbin", "/lib", "/lib64", "/opt", "/srv", "/mnt", "/media",
];

/// A refused target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "{0:?} is a relative path; pass the absolute mount point, e.g. /var/lib/docker/overlay2/<id>/merged"
    )]
    Relative(String),
    #[error("{0:?} contains '..'; pass the path without it")]
    DotDot(String),
    #[error(
        "refusing {0:?}: it is a system directory, and releasing it would unmount whole trees in every namespace; name the layer's own mount point instead"
    )]
    SystemDir(String),
    #[error("refusing {path:?}: it is inside {tree}, which mntreap never unmounts")]
    SystemTree { path: String, tree: String },
    #[error(
        "refusing {path:?}: it is outside the container runtimes' directories ({roots}); pass --any-path if you really mean it"
    )]
    OutsideRuntimeRoots { path: String, roots: String },
    #[error(
        "refusing {path:?}: it resolves through a symlink to {real:?}; pass {real:?}, the path the kernel shows in mountinfo"
    )]
    Symlink { path: String, real: String },
    #[error(
        "refusing {path:?}: {link:?} on the way is a symlink; mount tables show real paths, so name the real one"
    )]
    SymlinkOnTheWay { path: String, link: String },
    #[error("{0:?} is an empty path")]
    Empty(String),
    #[error(
        "{raw:?} is not a block device ({why}); --device takes /dev/X or MAJ:MIN (for a mount \
         point, use --path)"
    )]
    NotADevice { raw: String, why: String },
    #[error(
        "refusing {device}: its filesystem holds {path} here, and releasing it would unmount \
         the system's or the runtime's own files in every namespace; name the volume's device"
    )]
    DeviceHoldsSystem { device: String, path: String },
}

/// How strict the rails are.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Allow targets outside the runtime roots.
    pub any_path: bool,
    /// Extra runtime roots (a configured docker data root, for example).
    pub extra_roots: Vec<PathBuf>,
}

impl Policy {
    /// Validates and normalises one target path.
    pub fn check(&self, raw: &str) -> Result<PathBuf, PolicyError> {
        let normal = lexical(Path::new(raw), raw)?;
        // If it exists here, it must be the path the kernel uses (no symlinks on the way):
        // mountinfo shows real paths, and a symlink could point anywhere.
        if let Ok(real) = std::fs::canonicalize(&normal)
            && real != normal
        {
            return Err(PolicyError::Symlink {
                path: normal.to_string_lossy().into_owned(),
                real: real.to_string_lossy().into_owned(),
            });
        }
        self.inside_roots(&normal)?;
        Ok(normal)
    }

    /// Validates a path a runtime gives (its own state or root directory, a record's mount
    /// point) with the rails of [`Policy::check`]. Symlinks are looked for component by
    /// component below `seen_from`, the host's root as this process sees it (`/`, or
    /// `/proc/PID/root`), and never followed: canonicalising would resolve an absolute
    /// link in this process's root, which in a pod is not the host's.
    pub fn check_runtime_path(
        &self,
        path: &Path,
        seen_from: &Path,
    ) -> Result<PathBuf, PolicyError> {
        let shown = path.to_string_lossy();
        let normal = lexical(path, &shown)?;
        let mut at = seen_from.to_path_buf();
        let mut walked = PathBuf::from("/");
        for c in normal.components().skip(1) {
            at.push(c);
            walked.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(PolicyError::SymlinkOnTheWay {
                        path: normal.to_string_lossy().into_owned(),
                        link: walked.to_string_lossy().into_owned(),
                    });
                }
                Ok(_) => {}
                // What does not exist yet (a layer being made) has no link further down.
                Err(_) => break,
            }
        }
        self.inside_roots(&normal)?;
        Ok(normal)
    }

    /// Validates one `--device` target (`/dev/X`, or `MAJ:MIN`): a block device whose
    /// filesystem holds no system directory and no runtime root as this process sees them
    /// (a device node can be made anywhere with any number, so the number is what is
    /// checked, by asking the kernel where those directories live).
    pub fn check_device(
        &self,
        raw: &str,
        host_root: &Path,
        runtime_roots: &[PathBuf],
    ) -> Result<(u32, u32), PolicyError> {
        let not = |why: String| PolicyError::NotADevice {
            raw: raw.into(),
            why,
        };
        let dev = match parse_maj_min(raw) {
            Some(dev) => dev,
            None if raw.starts_with('/') => {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let meta = std::fs::metadata(raw).map_err(|e| not(e.to_string()))?;
                if !meta.file_type().is_block_device() {
                    return Err(not("not a block device node".into()));
                }
                let rdev = meta.rdev();
                (
                    nix::sys::stat::major(rdev) as u32,
                    nix::sys::stat::minor(rdev) as u32,
                )
            }
            None => return Err(not("neither a path nor MAJ:MIN".into())),
        };
        let shown = format!("{}:{}", dev.0, dev.1);
        if !Path::new(&format!("/sys/dev/block/{shown}")).exists() {
            return Err(not(format!("the kernel has no block device {shown}")));
        }
        let guarded = SYSTEM_DIRS
            .iter()
            .chain(SYSTEM_TREES)
            .chain(RUNTIME_ROOTS)
            .map(PathBuf::from)
            .chain(self.extra_roots.iter().cloned())
            .chain(runtime_roots.iter().cloned());
        // As the node sees them (`--host-root`: the agent's pod sees the node there),
        // symlinks resolved within the node's `/`, not this process's.
        // `--host-root` is the operator's own path: followed as given.
        let node_root = std::fs::File::open(host_root).map_err(|e| {
            not(format!(
                "the node's / at {} cannot be read: {e}",
                host_root.display()
            ))
        })?;
        for path in guarded {
            let relative = path.strip_prefix("/").unwrap_or(&path);
            let relative = if relative.as_os_str().is_empty() {
                Path::new(".")
            } else {
                relative
            };
            // EAGAIN: a rename or mount raced the walk (RESOLVE_IN_ROOT); walk again.
            let opened = (0..8)
                .map(|_| {
                    crate::engine::sys::open_path_in_root(node_root.as_fd(), relative.as_os_str())
                })
                .find(|r| !matches!(r, Err(e) if e.raw_os_error() == Some(libc::EAGAIN)))
                .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EAGAIN)))
                .and_then(|fd| nix::sys::stat::fstat(fd.as_fd()).map_err(io::Error::from));
            let meta = match opened {
                Ok(meta) => meta,
                // A guard the node does not have guards nothing.
                Err(e)
                    if path != Path::new("/")
                        && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                {
                    continue;
                }
                // Unreadable (or no openat2): what it holds is unknown, so protect.
                Err(e) => {
                    return Err(PolicyError::NotADevice {
                        raw: raw.into(),
                        why: format!(
                            "{} on the node (through {}) cannot be checked: {e}",
                            path.display(),
                            host_root.display()
                        ),
                    });
                }
            };
            let on = meta.st_dev;
            if (
                nix::sys::stat::major(on) as u32,
                nix::sys::stat::minor(on) as u32,
            ) == dev
            {
                return Err(PolicyError::DeviceHoldsSystem {
                    device: if raw == shown {
                        shown
                    } else {
                        format!("{raw} ({shown})")
                    },
                    path: path.to_string_lossy().into_owned(),
                });
            }
        }
        Ok(dev)
    }

    /// Unless `any_path`: `normal` lies in a runtime root or an extra root.
    fn inside_roots(&self, normal: &Path) -> Result<(), PolicyError> {
        if self.any_path {
            return Ok(());
        }
        let inside = RUNTIME_ROOTS
            .iter()
            .map(PathBuf::from)
            .chain(self.extra_roots.iter().cloned())
            .any(|root| normal.starts_with(&root));
        if inside {
            return Ok(());
        }
        let mut roots: Vec<String> = RUNTIME_ROOTS.iter().map(|r| r.to_string()).collect();
        for extra in &self.extra_roots {
            let extra = extra.to_string_lossy().into_owned();
            if !roots.contains(&extra) {
                roots.push(extra);
            }
        }
        let roots = roots.join(", ");
        Err(PolicyError::OutsideRuntimeRoots {
            path: normal.to_string_lossy().into_owned(),
            roots,
        })
    }
}

/// Whether `path` may be a directory whose mounts other namespaces carry by accident (a
/// runtime's or kubelet's root): absolute, no `..`, and neither a system directory nor
/// inside a system tree.
pub fn is_copy_root(path: &Path) -> bool {
    lexical(path, &path.to_string_lossy()).is_ok()
}

/// `MAJ:MIN`, both decimal, if `raw` is that.
pub fn parse_maj_min(raw: &str) -> Option<(u32, u32)> {
    let (major, minor) = raw.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The checks that need no file system: absolute, no `..`, not a system directory nor
/// inside a system tree. Returns the path normalised (`//` and `.` dropped); `raw` is how
/// errors show it.
fn lexical(path: &Path, raw: &str) -> Result<PathBuf, PolicyError> {
    if path.as_os_str().is_empty() {
        return Err(PolicyError::Empty(raw.into()));
    }
    if !path.is_absolute() {
        return Err(PolicyError::Relative(raw.into()));
    }
    let mut normal = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(PolicyError::DotDot(raw.into())),
            Component::Normal(s) => normal.push(s),
            Component::Prefix(_) => return Err(PolicyError::Relative(raw.into())),
        }
    }
    let shown = normal.to_string_lossy().into_owned();
    if let Some(tree) = SYSTEM_TREES.iter().find(|t| normal.starts_with(t)) {
        return Err(PolicyError::SystemTree {
            path: shown,
            tree: (*tree).into(),
        });
    }
    if SYSTEM_DIRS.iter().any(|d| normal == Path::new(d)) {
        return Err(PolicyError::SystemDir(shown));
    }
    Ok(normal)
}

/// Why a name read from a runtime's records may not become a path component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("{what} {value:?} is not {expected}")]
    Malformed {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{what} {value:?} is not the directory it was read from ({dir:?})")]
    NotItsDirectory {
        what: &'static str,
        value: String,
        dir: String,
    },
}

/// A pod UID as kubelet writes it in its directory names: hex digits and dashes (static
/// pods use a hex hash), nothing that walks a path.
pub fn is_pod_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A runtime's 64-hex-digit id (Docker's container and layer ids).
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a container id read from a record: 64 hex digits.
pub fn container_id(value: &str) -> Result<&str, RecordError> {
    if is_hex_id(value) {
        Ok(value)
    } else {
        Err(RecordError::Malformed {
            what: "container id",
            value: value.into(),
            expected: "64 hex digits",
        })
    }
}

/// Checks a storage driver's layer id read from a record (`mount-id`, `init-id`): 64 hex
/// digits, optionally `-init`, so that it is one path component and nothing else.
pub fn layer_id(value: &str) -> Result<&str, RecordError> {
    let bare = value.strip_suffix("-init").unwrap_or(value);
    if is_hex_id(bare) {
        Ok(value)
    } else {
        Err(RecordError::Malformed {
            what: "layer id",
            value: value.into(),
            expected: "64 hex digits, optionally with -init",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_single_hex_components() {
        let id = "a".repeat(64);
        assert!(container_id(&id).is_ok());
        assert!(layer_id(&format!("{id}-init")).is_ok());
        for bad in [
            "",
            "/etc",
            "../../../../etc",
            "abc",
            &format!("{id}/x"),
            &format!("/{}", &id[1..]),
            &format!("{}é", &id[..62]),
            &format!("{id}-initx"),
        ] {
            assert!(container_id(bad).is_err(), "{bad:?}");
            assert!(layer_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_dangerous_and_relative_paths() {
        let p = Policy::default();
        assert_eq!(
            p.check("merged"),
            Err(PolicyError::Relative("merged".into()))
        );
        assert_eq!(p.check("/"), Err(PolicyError::SystemDir("/".into())));
        assert_eq!(p.check("/run/"), Err(PolicyError::SystemDir("/run".into())));
        assert!(matches!(
            p.check("/proc/1/root"),
            Err(PolicyError::SystemTree { .. })
        ));
        assert!(matches!(
            p.check("/sys"),
            Err(PolicyError::SystemTree { .. })
        ));
        assert!(matches!(
            p.check("/var/lib/docker/../x"),
            Err(PolicyError::DotDot(_))
        ));
        assert!(matches!(
            p.check("/srv/data/x"),
            Err(PolicyError::OutsideRuntimeRoots { .. })
        ));
    }

    #[test]
    fn runtime_paths_pass_the_same_rails_with_symlinks_looked_for_in_the_host_root() {
        let host = std::env::temp_dir().join(format!("mntreap-rails-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(host.join("var/lib/containerd/real")).unwrap();
        // An absolute link: followed here it would leave the host root.
        std::os::unix::fs::symlink("/", host.join("var/lib/containerd/link")).unwrap();
        let any = Policy {
            any_path: true,
            ..Default::default()
        };
        let check = |p: &str| any.check_runtime_path(Path::new(p), &host);
        for bad in ["/", "/run", "/var", "/tmp", "/etc", "/var/lib"] {
            assert_eq!(check(bad), Err(PolicyError::SystemDir(bad.into())), "{bad}");
        }
        for bad in ["/proc/1/root", "/sys/fs", "/dev/shm"] {
            assert!(
                matches!(check(bad), Err(PolicyError::SystemTree { .. })),
                "{bad}"
            );
        }
        assert!(matches!(check("state"), Err(PolicyError::Relative(_))));
        assert!(matches!(
            check("/var/lib/containerd/../../etc"),
            Err(PolicyError::DotDot(_))
        ));
        assert_eq!(
            check("/var/lib/containerd/link/etc"),
            Err(PolicyError::SymlinkOnTheWay {
                path: "/var/lib/containerd/link/etc".into(),
                link: "/var/lib/containerd/link".into(),
            })
        );
        // Real directories, and ones that do not exist yet, pass; `//` and `.` go.
        assert_eq!(
            check("/var/lib/containerd//real/./x").unwrap(),
            PathBuf::from("/var/lib/containerd/real/x")
        );
        assert!(check("/data/containerd").is_ok());
        // A record's path must also lie in the runtime's roots.
        let records = Policy {
            any_path: false,
            extra_roots: vec!["/data/containerd".into()],
        };
        assert!(
            records
                .check_runtime_path(Path::new("/data/containerd/x"), &host)
                .is_ok()
        );
        assert!(matches!(
            records.check_runtime_path(Path::new("/srv/x"), &host),
            Err(PolicyError::OutsideRuntimeRoots { .. })
        ));
        let _ = std::fs::remove_dir_all(&host);
    }

    #[test]
    fn accepts_runtime_paths_and_normalises() {
        let p = Policy::default();
        assert_eq!(
            p.check("/var/lib/docker//overlay2/./abc/merged").unwrap(),
            PathBuf::from("/var/lib/docker/overlay2/abc/merged")
        );
        // `/var/lib/dockerfoo` is not inside `/var/lib/docker`.
        assert!(p.check("/var/lib/dockerfoo/x").is_err());
        let any = Policy {
            any_path: true,
            ..Default::default()
        };
        assert!(any.check("/srv/data/x").is_ok());
        assert!(any.check("/tmp").is_err());
    }
}
