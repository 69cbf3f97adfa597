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
fn commands_and_daemons_reach_the_engine_through_ops() {
    // Scans, plans and releases are operations: a command or a daemon that called the
    // engine's for itself would skip the decisions made once in ops.
    let calls = [
        "engine::scan::scan(",
        "engine::release::run_on(",
        "engine::release::plan(",
        "engine::release::execute(",
        "release::run_on(",
        "release::plan(",
        "release::execute(",
        "release_containers(",
        "scan::scan(",
        "scan_indexed(",
    ];
    let mut wrong = Vec::new();
    for layer in ["commands", "daemon"] {
        for file in rust_files(&Path::new(SRC).join(layer)) {
            let code = production_code(&file);
            for call in calls {
                if code.contains(call) {
                    wrong.push(format!("{} calls {call}", file.display()));
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

/// The module a source file is (`src/engine/scan/mod.rs` -> `engine::scan`).
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(SRC).unwrap().with_extension("");
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if segs
        .last()
        .is_some_and(|s| s == "mod" || s == "lib" || s == "main")
    {
        segs.pop();
    }
    segs
}

/// Production code of a file: what precedes its `#[cfg(test)]` module, comments dropped.
fn production_code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file names through `crate::` or `super::` paths (brace groups expanded),
/// each resolved to the longest prefix that is a module of the tree.
fn imports(file: &Path, modules: &std::collections::BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let here = module_of(file);
    let code = production_code(file);
    let resolve = |path: Vec<String>| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|k| path[..k].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(found) = code[at..].find(root) {
            let start = at + found;
            at = start + root.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut base = if root == "crate::" {
                Vec::new()
            } else {
                here[..here.len().saturating_sub(1)].to_vec()
            };
            let rest = &code[at..];
            let path_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut segs: Vec<String> = rest[..path_len]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            while segs.first().is_some_and(|s| s == "super") {
                base.pop();
                segs.remove(0);
            }
            let mut groups = vec![segs];
            if rest[path_len..].starts_with('{') {
                let close = rest[path_len..].find('}').unwrap_or(0);
                let prefix = groups.pop().unwrap();
                for item in rest[path_len + 1..path_len + close].split(',') {
                    let mut p = prefix.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .filter(|s| !s.is_empty() && *s != "self")
                            .map(|s| s.split_whitespace().next().unwrap_or("").to_string()),
                    );
                    groups.push(p);
                }
            }
            for segs in groups {
                let mut full = base.clone();
                full.extend(segs);
                out.extend(resolve(full));
            }
        }
    }
    out
}

#[test]
fn no_import_cycles_between_files() {
    use std::collections::{BTreeMap, BTreeSet};
    let files = rust_files(Path::new(SRC));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    // A parent module and its children are one unit (declarations, `use super::*`);
    // cycles among siblings and cousins are what the rule forbids.
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = files
        .iter()
        .map(|f| {
            let from = module_of(f);
            let to = imports(f, &modules)
                .into_iter()
                .filter(|t| !related(t, &from))
                .collect();
            (from, to)
        })
        .collect();
    let mut cycles = Vec::new();
    for (start, next) in &edges {
        // Depth-first from each module: a path back to it is a cycle.
        let mut stack: Vec<(Vec<String>, Vec<Vec<String>>)> = next
            .iter()
            .map(|n| (n.clone(), vec![start.clone(), n.clone()]))
            .collect();
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            if &at == start {
                cycles.push(
                    path.iter()
                        .map(|m| m.join("/"))
                        .collect::<Vec<_>>()
                        .join(" -> "),
                );
                break;
            }
            if !seen.insert(at.clone()) {
                continue;
            }
            for n in edges.get(&at).into_iter().flatten() {
                let mut p = path.clone();
                p.push(n.clone());
                stack.push((n.clone(), p));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// Functions of production code over `MAX_FN_LINES` lines, as `file:fn (lines)`.
fn long_functions(file: &Path) -> Vec<String> {
    const MAX_FN_LINES: usize = 100;
    let code = production_code(file);
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let name = [
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "fn ",
            "async fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p))
        .or_else(|| {
            trimmed
                .split_once(" fn ")
                .filter(|(v, _)| v.starts_with("pub"))
                .map(|(_, n)| n)
        })
        .map(|rest| rest.split(['(', '<']).next().unwrap_or("").to_string());
        let Some(name) = name else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, mut end) = (0i32, false, i);
        for (j, line) in lines.iter().enumerate().skip(i) {
            // Braces inside string and char literals do not count.
            let mut in_str = false;
            let mut prev = ' ';
            for c in line.chars() {
                match c {
                    '"' if prev != '\\' => in_str = !in_str,
                    '{' if !in_str && prev != '\'' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' if !in_str && prev != '\'' => depth -= 1,
                    _ => {}
                }
                prev = c;
            }
            end = j;
            if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                break;
            }
        }
        let n = end - i + 1;
        if n > MAX_FN_LINES {
            long.push(format!("{}:{name} ({n} lines)", file.display()));
        }
        i = end + 1;
    }
    long
}

#[test]
fn no_function_is_over_100_lines() {
    let long: Vec<String> = rust_files(Path::new(SRC))
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .flat_map(|f| long_functions(f))
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
}

#[test]
fn every_printed_document_is_in_the_json_docs_and_every_doc_is_linked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    // The documents the tests accept as output (tests/common/mod.rs, assert_documented).
    let common = read("tests/common/mod.rs");
    let printed: Vec<&str> = common
        .split("attempt::<")
        .skip(1)
        .filter_map(|rest| rest.split('>').next())
        .collect();
    assert!(
        printed.len() >= 9 && printed.contains(&"ScanDoc"),
        "{printed:?}"
    );
    let schema = read("src/report/doc.rs");
    let docs = read("docs/json.md");
    for name in &printed {
        assert!(
            schema.contains(&format!("pub struct {name} ")),
            "{name}: not a type of doc.rs"
        );
        assert!(docs.contains(name), "{name}: not in docs/json.md");
    }
    // Every topic doc is linked from the README, and every relative link in them resolves.
    let readme = read("README.md");
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("docs/{name}")),
            "README links no docs/{name}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split([')', '#']).next().unwrap_or("");
            if target.is_empty() || target.contains("://") {
                continue;
            }
            assert!(
                path.parent().unwrap().join(target).exists(),
                "docs/{name} links {target}, which does not exist"
            );
        }
    }
}

/// The metric names the agent exports: each `register("name", .., m.field.clone())` of
/// src/daemon/metrics.rs under the `mntreap` prefix, with the suffixes OpenMetrics gives
/// counters (`_total`) and histograms (`_bucket`, `_sum`, `_count`), by the field's type.
fn exported_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(SRC).join("daemon/metrics.rs")).unwrap();
    let kind_of = |field: &str| {
        text.lines()
            .find_map(|l| {
                let l = l.trim().strip_prefix("pub(super) ")?;
                let (name, ty) = l.split_once(": ")?;
                (name == field).then(|| ty.trim_end_matches(',').to_string())
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("registry.register(") {
        let call = &text[i..text[i..].find(");").map_or(text.len(), |e| i + e)];
        let name = call.split('"').nth(1).unwrap();
        let field = call
            .rsplit("m.")
            .next()
            .and_then(|f| f.split('.').next())
            .unwrap_or_default();
        let base = format!("mntreap_{name}");
        match kind_of(field).as_str() {
            "Counter" => out.push(format!("{base}_total")),
            "Histogram" => out.extend(["bucket", "sum", "count"].map(|s| format!("{base}_{s}"))),
            _ => out.push(base),
        }
    }
    out
}

#[test]
fn the_alerting_rules_parse_name_only_exported_metrics_and_have_runbooks() {
    use yaml_rust2::YamlLoader;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/prometheus/mntreap-alerts.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("groups[0].rules");
    assert!(rules.len() >= 4);
    let exported = exported_metrics();
    assert!(
        exported.contains(&"mntreap_sweeps_total".to_string()),
        "{exported:?}"
    );
    let runbooks = std::fs::read_to_string(root.join("docs/kubernetes.md")).unwrap();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("alert");
        let expr = rule["expr"].as_str().expect("expr");
        for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if word.starts_with("mntreap_") {
                assert!(
                    exported.iter().any(|m| m == word),
                    "{alert}: {word} is not exported"
                );
            }
        }
        let severity = rule["labels"]["severity"].as_str().expect("severity");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{alert}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key].as_str().is_some(),
                "{alert}: no {key}"
            );
        }
        let anchor = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .rsplit('#')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: runbook anchor");
        assert!(
            runbooks.contains(&format!("### {alert}")),
            "{alert}: no runbook heading in docs/kubernetes.md"
        );
    }
}

#[test]
fn the_node_problem_detector_config_runs_a_command_mntreap_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("deploy/node-problem-detector/mntreap-monitor.json"))
            .unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["plugin"], "custom");
    let max = config["pluginConfig"]["max_output_length"]
        .as_u64()
        .unwrap();
    assert!(max >= 80, "the plugin's lines are up to 80 characters");
    let condition = config["conditions"][0]["type"].as_str().unwrap();
    for rule in config["rules"].as_array().unwrap() {
        assert_eq!(rule["condition"], condition);
        let args: Vec<&str> = rule["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let argv = std::iter::once("mntreap").chain(args.iter().copied());
        mntreap::cli::command()
            .try_get_matches_from(argv)
            .unwrap_or_else(|e| panic!("mntreap does not take {args:?}: {e}"));
    }
}
