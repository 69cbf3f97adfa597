//! Docker's own records in its data root (`containers/<id>/config.v2.json`,
//! `image/<driver>/layerdb/mounts/<id>/{mount-id,init-id}`), read through the same rails as
//! `--path`: every id that becomes a path component is checked, and a record that fails is
//! named with its file and skipped.

use std::path::Path;

use super::{Container, layer_mount, on_host};

/// A runtime record that fails the path rails (an id that is no single hex component, a
/// symlink on the way): reported with the file it came from, and the container skipped.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}; container record skipped")]
pub struct BadRecord {
    pub file: String,
    pub problem: String,
}

impl BadRecord {
    pub(super) fn new(file: &Path, problem: impl std::fmt::Display) -> BadRecord {
        BadRecord {
            file: file.display().to_string(),
            problem: problem.to_string(),
        }
    }
}

/// The subset of `config.v2.json` mntreap reads.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigV2 {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    state: StateV2,
    #[serde(default)]
    config: ConfigSection,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigSection {
    #[serde(default)]
    labels: Option<std::collections::HashMap<String, String>>,
}

/// kubelet's label naming a container's pod.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StateV2 {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    restarting: bool,
    #[serde(default)]
    dead: bool,
    #[serde(default)]
    removal_in_progress: bool,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    started_at: String,
}

/// Reads `dir/config.v2.json` (`dir` as this process sees it): `None` where there is no
/// readable config (a directory being created or removed), an error for a bad record.
pub(super) fn read_config(
    root: &Path,
    host_root: &Path,
    dir: &Path,
) -> Option<Result<Container, BadRecord>> {
    let file = dir.join("config.v2.json");
    let text = std::fs::read(&file).ok()?;
    Some(config_to_container(root, host_root, dir, &file, &text))
}

fn config_to_container(
    root: &Path,
    host_root: &Path,
    dir: &Path,
    file: &Path,
    text: &[u8],
) -> Result<Container, BadRecord> {
    let c: ConfigV2 = serde_json::from_slice(text).map_err(|e| BadRecord::new(file, e))?;
    // The id becomes a path: it must be one hex component, and the directory it lives in.
    crate::engine::policy::container_id(&c.id).map_err(|e| BadRecord::new(file, e))?;
    if dir.file_name() != Some(std::ffi::OsStr::new(&c.id)) {
        return Err(BadRecord::new(
            file,
            crate::engine::policy::RecordError::NotItsDirectory {
                what: "container id",
                value: c.id.clone(),
                dir: dir.display().to_string(),
            },
        ));
    }
    // The same status words the API derives from the same fields (container/state.go).
    let s = &c.state;
    let status = if s.removal_in_progress {
        "removing"
    } else if s.dead {
        "dead"
    } else if s.running && s.paused {
        "paused"
    } else if s.running && s.restarting {
        "restarting"
    } else if s.running {
        "running"
    } else if s.started_at.is_empty() || s.started_at.starts_with("0001-01-01") {
        "created"
    } else {
        "exited"
    };
    let pid = (s.running && s.pid > 0).then_some(s.pid as i32);
    let pod_uid = c
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_UID_LABEL).cloned());
    let mut out = container(
        root,
        host_root,
        file,
        c.id,
        c.name,
        status.into(),
        pid,
        c.driver,
    )?;
    out.pod_uid = pod_uid;
    Ok(out)
}

/// A storage driver's name: one plain path component (it names a directory).
fn valid_driver(driver: &str) -> bool {
    !driver.is_empty()
        && driver
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Builds a container from a record (`record` names where it came from). Every id that
/// becomes a path component passes the same rails as `--path`: one hex component, no
/// symlink on the way below the data root.
#[allow(clippy::too_many_arguments)]
pub(super) fn container(
    root: &Path,
    host_root: &Path,
    record: &Path,
    id: String,
    name: String,
    state: String,
    pid: Option<i32>,
    driver: String,
) -> Result<Container, BadRecord> {
    crate::engine::policy::container_id(&id).map_err(|e| BadRecord::new(record, e))?;
    if !valid_driver(&driver) {
        return Err(BadRecord::new(
            record,
            format!("storage driver {driver:?} is not a plain name"),
        ));
    }
    let layerdb = root
        .join("image")
        .join(&driver)
        .join("layerdb/mounts")
        .join(&id);
    let read_id = |f: &str| -> Result<Option<String>, BadRecord> {
        let file = layerdb.join(f);
        let Ok(text) = std::fs::read_to_string(on_host(host_root, &file)) else {
            return Ok(None);
        };
        let value = text.trim();
        if value.is_empty() {
            return Ok(None);
        }
        crate::engine::policy::layer_id(value).map_err(|e| BadRecord::new(&file, e))?;
        Ok(Some(value.to_string()))
    };
    let mount_id = read_id("mount-id")?;
    let init_id = read_id("init-id")?;
    let mut paths = Vec::new();
    for layer in mount_id.iter().chain(init_id.iter()) {
        if let Some(p) = layer_mount(root, &driver, layer) {
            paths.push(p);
        }
    }
    paths.extend(super::layout::snapshot_mount(root, &driver, &id));
    let upperdir = mount_id
        .as_ref()
        .filter(|_| matches!(driver.as_str(), "overlay2" | "overlay"))
        .map(|m| root.join(&driver).join(m).join("diff"));
    let cdir = root.join("containers").join(&id);
    paths.push(cdir.join("mounts/shm"));
    paths.push(cdir.join("shm"));
    paths.push(cdir.join("mounts/secrets"));
    // Every path through the operator's rails, inside the data root: no system directory,
    // and no symlink on the way (the paths are checked as written, not resolved).
    let rails = crate::engine::policy::Policy {
        any_path: false,
        extra_roots: vec![root.to_path_buf()],
    };
    for p in paths.iter().chain(upperdir.iter()) {
        rails
            .check_runtime_path(p, host_root)
            .map_err(|e| BadRecord::new(record, e))?;
    }
    Ok(Container {
        id,
        name: name.trim_start_matches('/').to_string(),
        state,
        pid,
        driver,
        mount_id,
        init_id,
        paths,
        upperdir,
        pod_uid: None,
        pod: None,
        sandbox: false,
        pod_pids: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Whatever a data root holds (ids, drivers, mount ids, JSON), a record either is
        /// refused or yields only paths inside the data root, with no `..` and no
        /// absolute component, and hex ids.
        #[test]
        fn data_root_records_stay_inside_the_root(
            id in "(/|\\.\\./|[0-9a-f]{64}|[0-9a-f]{0,70}|[ -~]{0,70})",
            use_dir_as_id in proptest::bool::ANY,
            driver in "(overlay2|devicemapper|aufs|\\.\\.|/etc|[ -~]{0,12})",
            mount_id in "([0-9a-f]{64}(-init)?|/[ -~]{0,20}|\\.\\./[ -~]{0,10}|[ -~]{0,70})",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let base = std::env::temp_dir().join(format!(
                "mntreap-prop-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let root = base.join("root");
            let dir_name = "d".repeat(64);
            let dir = root.join("containers").join(&dir_name);
            std::fs::create_dir_all(&dir).unwrap();
            let id = if use_dir_as_id { dir_name.clone() } else { id };
            if let Some(layerdb) = Some(root.join("image").join(&driver).join("layerdb/mounts").join(&id))
                .filter(|_| valid_driver(&driver) && crate::engine::policy::is_hex_id(&id))
            {
                std::fs::create_dir_all(&layerdb).unwrap();
                std::fs::write(layerdb.join("mount-id"), &mount_id).unwrap();
            }
            let text = serde_json::json!({"ID": id, "Name": "/n", "Driver": driver}).to_string();
            let file = dir.join("config.v2.json");
            for bytes in [text.as_bytes(), raw.as_slice()] {
                if let Ok(c) = config_to_container(&root, Path::new("/"), &dir, &file, bytes) {
                    proptest::prop_assert!(crate::engine::policy::is_hex_id(&c.id));
                    for p in c.paths.iter().chain(c.upperdir.iter()) {
                        proptest::prop_assert!(p.starts_with(&root), "{p:?}");
                        proptest::prop_assert!(
                            p.strip_prefix(&root).unwrap().components().all(|c| matches!(c, std::path::Component::Normal(_))),
                            "{p:?}"
                        );
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&base);
        }
    }
}
