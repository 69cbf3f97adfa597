//! Where a CRI runtime keeps its files, as the established daemon says (its flags, its
//! config file) and through the path rails: every target is derived from these.

use std::path::{Path, PathBuf};

use super::{CriError, Layout};
use crate::runtime::identity;
use crate::runtime::model::Identity;
use crate::runtime::model::RuntimeKind;

/// Where the established daemon keeps its state: containerd's `--state`/`--root` flags,
/// else its config file's top-level `state`/`root` (read through its own root), else the
/// defaults. CRI-O keeps its layers under `/var/lib/containers/storage`. Each directory
/// comes with where it was read, for [`check_layout`]'s errors.
pub(super) fn layout_of(
    kind: RuntimeKind,
    ident: &Identity,
    proc_root: &Path,
    kubelet_root: &Path,
) -> (Layout, Vec<(&'static str, String)>) {
    let mut layout = Layout {
        state: PathBuf::from("/run/containerd"),
        root: PathBuf::from("/var/lib/containerd"),
        namespace: "k8s.io".into(),
        kubelet_root: kubelet_root.to_path_buf(),
        storage_root: PathBuf::from("/var/lib/containers/storage"),
        storage_run_root: PathBuf::from("/run/containers/storage"),
    };
    let mut origins = vec![("kubelet root", "--kubelet-root".to_string())];
    let Some(pid) = ident
        .pid
        .filter(|_| ident.unsure.is_none() && kind == RuntimeKind::Containerd)
    else {
        return (layout, origins);
    };
    let args = identity::cmdline(proc_root, pid);
    let config = identity::flag_value(&args, "--config", Some("-c"))
        .unwrap_or_else(|| "/etc/containerd/config.toml".into());
    let daemon_root = proc_root.join(pid.to_string()).join("root");
    let text = std::fs::read_to_string(crate::runtime::host::on_host(
        &daemon_root,
        Path::new(&config),
    ))
    .unwrap_or_default();
    for (key, what, slot) in [
        ("state", "state directory", &mut layout.state),
        ("root", "root directory", &mut layout.root),
    ] {
        // Whatever it says goes through the rails (a relative or empty flag too: containerd
        // would not mean the default by it).
        let said = identity::flag_value(&args, &format!("--{key}"), None)
            .map(|v| (v, format!("its --{key}")))
            .or_else(|| top_level_string(&text, key).map(|v| (v, format!("{key} in {config}"))));
        if let Some((v, origin)) = said {
            *slot = PathBuf::from(v);
            origins.push((what, origin));
        }
    }
    (layout, origins)
}

/// The runtime's and kubelet's directories through the same path rails as an operator's
/// paths (no `/`, `/run`, `/var`, system directory, `/proc`, `..`, symlink): every target
/// is derived from them, so one that fails refuses the whole runtime.
pub(super) fn check_layout(
    layout: &Layout,
    origins: &[(&'static str, String)],
    who: &str,
    host_root: &Path,
) -> Result<(), CriError> {
    let rails = crate::engine::policy::Policy {
        any_path: true,
        extra_roots: Vec::new(),
    };
    for (what, path) in [
        ("state directory", &layout.state),
        ("root directory", &layout.root),
        ("kubelet root", &layout.kubelet_root),
        ("storage root", &layout.storage_root),
        ("storage run root", &layout.storage_run_root),
    ] {
        if let Err(e) = rails.check_runtime_path(path, host_root) {
            let origin = origins
                .iter()
                .find(|(w, _)| *w == what)
                .map_or_else(|| "the default".to_string(), |(_, o)| o.clone());
            let who = if what == "kubelet root" {
                "mntreap"
            } else {
                who
            };
            return Err(CriError::BadLayout {
                who: who.to_string(),
                what,
                value: path.display().to_string(),
                origin,
                problem: e.to_string(),
            });
        }
    }
    Ok(())
}

/// A top-level `key = "value"` of a TOML file (before its first table).
fn top_level_string(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            let inner = &v[1..];
            if k.trim() != key {
                return None;
            }
            Some(inner[..inner.find(quote)?].to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cri::DEFAULT_KUBELET_ROOT;

    #[test]
    fn a_layout_the_rails_refuse_names_the_daemon_and_the_value() {
        // A /proc with one containerd whose root holds its config file.
        let dir = std::env::temp_dir().join(format!("mntreap-cri-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (proc_root, root) = (dir.join("proc"), dir.join("root"));
        std::fs::create_dir_all(proc_root.join("42")).unwrap();
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        std::os::unix::fs::symlink(&root, proc_root.join("42/root")).unwrap();
        let ident = Identity {
            pid: Some(42),
            ..Identity::default()
        };
        let kubelet = Path::new(DEFAULT_KUBELET_ROOT);
        let refused = |args: &str, config: &str| {
            std::fs::write(proc_root.join("42/cmdline"), args.replace(' ', "\0")).unwrap();
            std::fs::write(root.join("etc/containerd/config.toml"), config).unwrap();
            let (layout, origins) = layout_of(RuntimeKind::Containerd, &ident, &proc_root, kubelet);
            check_layout(&layout, &origins, "containerd pid 42", Path::new("/")).err()
        };
        let Some(CriError::BadLayout {
            who, value, origin, ..
        }) = refused("containerd --state /", "")
        else {
            panic!("--state / must be refused");
        };
        assert_eq!((who.as_str(), value.as_str()), ("containerd pid 42", "/"));
        assert_eq!(origin, "its --state");
        for (args, config, bad) in [
            ("containerd --root=/var", "", "/var"),
            ("containerd", "state = \"/\"\n", "/"),
            ("containerd", "root = \"/etc\"\n", "/etc"),
            ("containerd --state run", "", "run"),
            (
                "containerd --root /var/lib/../../proc",
                "",
                "/var/lib/../../proc",
            ),
        ] {
            match refused(args, config) {
                Some(CriError::BadLayout { value, .. }) => assert_eq!(value, bad, "{args}"),
                other => panic!("{args} {config:?}: {other:?}"),
            }
        }
        let msg = refused("containerd", "state = \"/\"\n")
            .unwrap()
            .to_string();
        assert!(
            msg.contains("containerd pid 42")
                && msg.contains("\"/\"")
                && msg.contains("config.toml"),
            "{msg}"
        );
        // The node's own settings, and a moved root, pass.
        assert!(refused("containerd --root /data/containerd", "").is_none());
        // kubelet's root is the operator's: named as such.
        let (layout, origins) = layout_of(
            RuntimeKind::CriO,
            &Identity::default(),
            &proc_root,
            Path::new("/"),
        );
        let err = check_layout(&layout, &origins, "crio pid 7", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("--kubelet-root"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn containerd_settings_from_its_config() {
        let text = "version = 2\nroot = \"/data/containerd\" # moved\nstate = '/run/c2'\n[plugins]\nstate = \"/x\"\n";
        assert_eq!(
            top_level_string(text, "root").as_deref(),
            Some("/data/containerd")
        );
        assert_eq!(top_level_string(text, "state").as_deref(), Some("/run/c2"));
        assert_eq!(top_level_string("[a]\nroot = \"/x\"", "root"), None);
    }
}
