//! The tree's shape, checked: layers import one way (cli -> commands -> daemon -> ops ->
//! report -> runtime -> engine), the engine knows no runtime, `unsafe` lives only in engine/sys.rs,
//! and no source file grows past ~600 lines.

use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Each layer, and the layers it must never import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "engine",
        &["runtime", "report", "ops", "daemon", "commands", "cli"],
    ),
    ("runtime", &["report", "ops", "daemon", "commands", "cli"]),
    ("report", &["ops", "daemon", "commands", "cli"]),
    ("ops", &["daemon", "commands", "cli"]),
    ("daemon", &["commands", "cli"]),
    ("commands", &["cli"]),
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn layers_import_one_way() {
    let mut wrong = Vec::new();
    for (layer, never) in FORBIDDEN {
        for file in rust_files(&Path::new(SRC).join(layer)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for upper in *never {
                if text.contains(&format!("crate::{upper}")) {
                    wrong.push(format!("{} imports crate::{upper}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn unsafe_only_in_the_engines_syscall_module() {
    let sys = Path::new(SRC).join("engine/sys.rs");
    let mut wrong = Vec::new();
    for file in rust_files(Path::new(SRC)) {
        let text = std::fs::read_to_string(&file).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // `unsafe {`, `unsafe fn`, `unsafe impl`; the lints (`unsafe_code`) do not match.
        if file != sys && code.contains("unsafe ") {
            wrong.push(file.display().to_string());
        }
    }
    assert!(wrong.is_empty(), "unsafe outside engine/sys.rs: {wrong:?}");
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
}

#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<String> = rust_files(Path::new(SRC))
        .into_iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            (n > 600).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{long:?}");
}
