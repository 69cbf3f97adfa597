//! Benchmark on a synthetic busy node: mntreap against the tools operators use today, side by
//! side in one run, with ratios.
//!
//! `cargo bench --bench node -- [--namespaces N] [--mounts M] [--procs P] [--runs R]
//! [--shape tmpfs|binds]` (defaults 300 x 2000 x 3, 3 runs, tmpfs; medians). Needs root.
//! `--shape binds` makes every layer a bind of one filesystem, the shape of a Kubernetes
//! node (every container's `/etc/hosts`, `resolv.conf` and emptyDirs are binds of the
//! node's filesystems): then every mount shares the targets' device. Everything lives in a private
//! mount namespace of the benchmark's own and in processes it started, which it kills by pid.
//!
//! Rows:
//! - scan: `grep -l ID /proc/[0-9]*/mountinfo` (the find-busy-mnt approach), one read of
//!   mountinfo per namespace (the floor of the text path), and `mntreap scan` with each
//!   backend (`--paths-only` also of a layer with a file in it, below which every
//!   namespace is listed: the layers of this node are empty);
//! - release of one layer in every namespace: a `umount -N /proc/PID/ns/mnt -l PATH` loop
//!   (util-linux) against `mntreap release` with each backend;
//! - index: the same scans in process, cold and warm, with the listing index and (6.15+)
//!   the agent's, which trusts mount events ([`warm`]); and a release of one layer from the
//!   agent's index, its plan confirmed by id (also of layers with a file in them, below
//!   every copy of which the confirmation lists);
//! - agent: the real agent process sweeping the unchanged node every second against a
//!   private dockerd ([`agent`]): CPU per sweep and resident memory.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "node/agent.rs"]
mod agent;
mod common;
#[path = "node/warm.rs"]
mod warm;

use nix::mount::{MsFlags, mount};

const BIN: &str = env!("CARGO_BIN_EXE_mntreap");

struct Config {
    namespaces: usize,
    mounts: usize,
    procs: usize,
    runs: usize,
    /// Every layer a bind of a directory of the benchmark's one tmpfs.
    binds: bool,
}

fn parse_args() -> Config {
    let mut c = Config {
        namespaces: 300,
        mounts: 2000,
        procs: 3,
        runs: 3,
        binds: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--namespaces" => c.namespaces = value().expect("--namespaces N"),
            "--mounts" => c.mounts = value().expect("--mounts N"),
            "--procs" => c.procs = value().expect("--procs N"),
            "--runs" => c.runs = value().expect("--runs N"),
            "--shape" => {
                c.binds = match args.get(i + 1).map(String::as_str) {
                    Some("binds") => true,
                    Some("tmpfs") => false,
                    other => panic!("--shape tmpfs|binds, not {other:?}"),
                }
            }
            // cargo bench passes --bench; ignore what we do not know.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    c
}

/// Holder processes, each the leader of its own process group (it forks its extra
/// members): killed group by group when the benchmark ends, or panics.
struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Removes the benchmark's directory on the host when the benchmark ends (the tmpfs on it
/// lives in the benchmark's private namespace and goes with it).
struct DirGuard(String);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn main() {
    let cfg = parse_args();
    common::enter_private_mount_namespace();
    let dir = format!("/tmp/mntreap-bench-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    let _dir_guard = DirGuard(dir.clone());
    mount(
        Some("bench"),
        dir.as_str(),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();

    eprintln!(
        "building the node: {} namespaces x {} layer mounts x {} processes ...",
        cfg.namespaces, cfg.mounts, cfg.procs
    );
    let layer = |i: usize| format!("{dir}/overlay2/{i:064x}/merged");
    for i in 0..cfg.mounts {
        let path = layer(i);
        std::fs::create_dir_all(&path).unwrap();
        if cfg.binds {
            let source = format!("{dir}/src/{i}");
            std::fs::create_dir_all(&source).unwrap();
            mount(
                Some(source.as_str()),
                path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            continue;
        }
        mount(
            Some("layer"),
            path.as_str(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
    }
    let mut holders = Holders(Vec::new());
    let extra = "sleep 3600 & ".repeat(cfg.procs.saturating_sub(1));
    let script = format!("{extra}exec sleep 3600");
    for _ in 0..cfg.namespaces {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("unshare");
        holders.0.push(child);
    }
    // Wait until every holder is in its own namespace with all its processes.
    let own = std::fs::metadata("/proc/self/ns/mnt").unwrap();
    let own_ino = std::os::unix::fs::MetadataExt::ino(&own);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let sleeping = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
                    && std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) != own_ino)
            })
            .count();
        if sleeping >= cfg.namespaces * cfg.procs {
            break;
        }
        assert!(Instant::now() < deadline, "holders did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<i32> = holders.0.iter().map(|c| c.id() as i32).collect();

    // Each run targets another layer (release is destructive); the host copy is unmounted
    // first, as dockerd's Put does, so every holder is a leak.
    let targets: Vec<usize> = (0..cfg.runs * 5).map(|r| cfg.mounts / 2 + r).collect();
    for &t in &targets {
        nix::mount::umount2(layer(t).as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let id_of = |i: usize| format!("{i:064x}");

    let mut grep = Vec::new();
    let mut once = Vec::new();
    let mut scan_lm = Vec::new();
    let mut scan_mi = Vec::new();
    let mut scan_po = Vec::new();
    let mut scan_po_full = Vec::new();
    let mut scan_mi1 = Vec::new();
    let mut umount_loop = Vec::new();
    let mut release = Vec::new();
    let mut release_po = Vec::new();
    let mut release_mi = Vec::new();
    for run in 0..cfg.runs {
        let t = targets[run];
        let (d, out) = time(|| {
            run_ok(Command::new("sh").args([
                "-c",
                &format!("grep -l {} /proc/[0-9]*/mountinfo", id_of(t)),
            ]))
        });
        let found = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        assert!(found >= cfg.namespaces * cfg.procs, "grep found {found}");
        grep.push(d);

        let (d, bytes) = time(|| {
            pids.iter()
                .map(|p| std::fs::read(format!("/proc/{p}/mountinfo")).unwrap().len())
                .sum::<usize>()
        });
        assert!(bytes > 0);
        once.push(d);

        for (backend, extra, into) in [
            ("listmount", None, &mut scan_lm),
            ("mountinfo", None, &mut scan_mi),
            ("mountinfo", Some("--threads=1"), &mut scan_mi1),
            ("listmount", Some("--paths-only"), &mut scan_po),
        ] {
            let (d, out) = time(|| {
                run_ok(
                    Command::new(BIN)
                        .args(["scan", "--any-path", "--json", "--path", &layer(t)])
                        .args(extra)
                        .env("MNTREAP_BACKEND", backend),
                )
            });
            let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let n = doc["holders"].as_array().unwrap().len();
            assert_eq!(n, cfg.namespaces, "{backend} scan found {n} holders");
            into.push(d);
        }

        // --paths-only of a layer with a file in it (as a container's rootfs is never empty):
        // the lookup cannot rule out a mount below it, so each namespace is listed below it.
        let full = layer(targets[5 * cfg.runs - 1] + 2 * cfg.runs + 2 + run);
        std::fs::write(format!("{full}/file"), b"").unwrap();
        nix::mount::umount2(full.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        let (d, out) = time(|| {
            run_ok(
                Command::new(BIN)
                    .args([
                        "scan",
                        "--any-path",
                        "--json",
                        "--paths-only",
                        "--path",
                        &full,
                    ])
                    .env("MNTREAP_BACKEND", "listmount"),
            )
        });
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["holders"].as_array().unwrap().len(), cfg.namespaces);
        scan_po_full.push(d);

        // Release: util-linux loop on one target, mntreap on another.
        let loop_target = layer(targets[cfg.runs + run]);
        let (d, _) = time(|| {
            for p in &pids {
                run_ok(Command::new("umount").args([
                    "-N",
                    &format!("/proc/{p}/ns/mnt"),
                    "-l",
                    &loop_target,
                ]));
            }
        });
        umount_loop.push(d);
        for (k, extra, backend, into) in [
            (2, None, "listmount", &mut release),
            (3, Some("--paths-only"), "listmount", &mut release_po),
            (4, None, "mountinfo", &mut release_mi),
        ] {
            let rel_target = layer(targets[k * cfg.runs + run]);
            let (d, out) = time(|| {
                run_ok(
                    Command::new(BIN)
                        .args(["release", "--any-path", "--json", "--path", &rel_target])
                        .args(extra)
                        .env("MNTREAP_BACKEND", backend)
                        .env("RUST_LOG", "warn"),
                )
            });
            let all: serde_json::Value = serde_json::from_slice(&out).unwrap();
            // `release --json` is a ReleasesDoc: a path release is its one entry.
            let doc = &all["releases"][0];
            let released = doc["namespaces"].as_array().unwrap().len();
            assert_eq!(released, cfg.namespaces);
            assert!(doc["remaining"].as_array().unwrap().is_empty(), "{doc:#}");
            into.push(d);
        }
    }

    // The index rows, on targets no release above touched: one layer (the rows above), and
    // every layer (the agent's node-wide sweep, where every namespace holds them all).
    let spare = targets[5 * cfg.runs - 1] + 1;
    nix::mount::umount2(layer(spare).as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    let one = warm::measure(vec![layer(spare).into()], cfg.runs, false);
    assert_eq!(
        one.holders, cfg.namespaces,
        "the in-process scan found another result"
    );
    let node_wide = warm::measure(vec![format!("{dir}/overlay2").into()], cfg.runs, false);
    // The agent's index: mount events where the kernel has them (6.15+).
    let events = mntreap::engine::index::TableIndex::watching(Duration::ZERO).events();
    let watched = events.then(|| {
        (
            warm::measure(vec![layer(spare).into()], cfg.runs, true),
            warm::measure(vec![format!("{dir}/overlay2").into()], cfg.runs, true),
        )
    });

    // A warm release per run, each of a layer nothing above touched (the node's own copy
    // unmounted first, as for the other release rows).
    let warm_layers: Vec<String> = (1..=cfg.runs).map(|k| layer(spare + k)).collect();
    for l in &warm_layers {
        nix::mount::umount2(l.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let warm_release =
        warm::measure_release(warm_layers.iter().map(Into::into).collect(), cfg.namespaces);
    // The same of layers with a file in them: the confirmation lists below every copy.
    let full_layers: Vec<String> = (0..cfg.runs)
        .map(|k| layer(spare + 3 * cfg.runs + 1 + k))
        .collect();
    for l in &full_layers {
        std::fs::write(format!("{l}/file"), b"").unwrap();
        nix::mount::umount2(l.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let warm_release_full =
        warm::measure_release(full_layers.iter().map(Into::into).collect(), cfg.namespaces);

    // The agent's own rows, with a real runtime beside the node.
    let agent = agent::measure(&dir, 10, BIN);

    let scan_po_full = median(scan_po_full);
    let (grep, once, scan_lm, scan_mi, scan_mi1, scan_po) = (
        median(grep),
        median(once),
        median(scan_lm),
        median(scan_mi),
        median(scan_mi1),
        median(scan_po),
    );
    let (umount_loop, release, release_po, release_mi) = (
        median(umount_loop),
        median(release),
        median(release_po),
        median(release_mi),
    );
    let ms = |d: Duration| format!("{:>9.1} ms", d.as_secs_f64() * 1e3);
    let ratio = |base: Duration, d: Duration| base.as_secs_f64() / d.as_secs_f64();
    println!(
        "\nnode ({} shape): {} namespaces x {} layer mounts x {} processes; median of {} runs; kernel {}",
        if cfg.binds { "binds" } else { "tmpfs" },
        cfg.namespaces,
        cfg.mounts,
        cfg.procs,
        cfg.runs,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("{:<58} {:>12}  ratio", "", "time");
    println!(
        "{:<58} {}",
        "scan: grep -l ID /proc/[0-9]*/mountinfo (baseline)",
        ms(grep)
    );
    println!(
        "{:<58} {}",
        "scan: read each namespace's mountinfo once (floor)",
        ms(once)
    );
    println!(
        "{:<58} {}  {:.1}x faster than grep",
        "scan: mntreap scan, listmount backend",
        ms(scan_lm),
        ratio(grep, scan_lm)
    );
    println!(
        "{:<58} {}  {:.1}x faster than grep, {:.2}x the floor",
        "scan: mntreap scan, mountinfo backend",
        ms(scan_mi),
        ratio(grep, scan_mi),
        scan_mi.as_secs_f64() / once.as_secs_f64()
    );
    println!(
        "{:<58} {}  {:.2}x the floor",
        "scan: mntreap scan, mountinfo backend, --threads=1",
        ms(scan_mi1),
        scan_mi1.as_secs_f64() / once.as_secs_f64()
    );
    println!(
        "{:<58} {}  {:.1}x faster than grep",
        "scan: mntreap scan --paths-only, listmount backend",
        ms(scan_po),
        ratio(grep, scan_po)
    );
    println!(
        "{:<58} {}  {:.1}x faster than grep",
        "scan: ... --paths-only, a layer with a file in it",
        ms(scan_po_full),
        ratio(grep, scan_po_full)
    );
    println!(
        "{:<58} {}",
        "release: umount -N /proc/PID/ns/mnt -l loop (baseline)",
        ms(umount_loop)
    );
    println!(
        "{:<58} {}  {:.1}x faster than the loop",
        "release: mntreap release (scan + unmount + re-check)",
        ms(release),
        ratio(umount_loop, release)
    );
    println!(
        "{:<58} {}  {:.1}x faster than the loop",
        "release: mntreap release --paths-only",
        ms(release_po),
        ratio(umount_loop, release_po)
    );
    println!(
        "{:<58} {}  {:.1}x faster than the loop",
        "release: mntreap release, mountinfo backend",
        ms(release_mi),
        ratio(umount_loop, release_mi)
    );
    let cost = |c: warm::Cost| format!("{} {:>7.3} CPU-s", ms(c.wall), c.cpu.as_secs_f64());
    for (what, row) in [
        ("release: warm, mount events (in process)", &warm_release),
        (
            "release: ... warm, a layer with a file in it",
            &warm_release_full,
        ),
    ] {
        match row {
            Some(r) => println!(
                "{:<58} {}  {:.1}x faster than the loop; {} reads by id confirmed it, {} released",
                what,
                cost(r.warm),
                ratio(umount_loop, r.warm.wall),
                r.confirmed,
                r.released
            ),
            None => {
                println!("{what}: not measured: this kernel has no mount events (6.15+)")
            }
        }
    }
    for (what, rows) in [("one layer", &one), ("node-wide", &node_wide)] {
        println!(
            "{:<58} {}  {:.1}x faster than grep",
            format!("index: scan {what}, cold (in process)"),
            cost(rows.cold),
            ratio(grep, rows.cold.wall)
        );
        println!(
            "{:<58} {}  {:.1}x faster than grep; {}/{} namespaces reused",
            format!("index: scan {what}, warm (unchanged node)"),
            cost(rows.warm),
            ratio(grep, rows.warm.wall),
            rows.reused,
            rows.namespaces
        );
    }
    match &watched {
        Some((one, node_wide)) => {
            for (what, rows) in [("one layer", one), ("node-wide", node_wide)] {
                println!(
                    "{:<58} {}  {:.1}x faster than grep; {}/{} reused unlisted",
                    format!("index: scan {what}, warm, mount events"),
                    cost(rows.warm),
                    ratio(grep, rows.warm.wall),
                    rows.unlisted,
                    rows.namespaces
                );
            }
        }
        None => println!("index: mount events rows not measured: this kernel has none (6.15+)"),
    }
    println!(
        "{:<58} {:>9.1} MB  (process RSS {:.1} MB)",
        "index: kept tables",
        node_wide.index_bytes as f64 / 1e6,
        node_wide.rss_bytes as f64 / 1e6
    );
    match &agent {
        Ok(a) => {
            println!(
                "{:<58} {:>9.3} CPU-s  (start-up included)",
                "agent: first sweep, every table read",
                a.first_cpu.as_secs_f64()
            );
            println!(
                "{:<58} {:>9.3} CPU-s  per sweep, mean of {}; {}/{} namespaces reused, {} unlisted",
                "agent: sweep of the unchanged node",
                a.per_sweep_cpu.as_secs_f64(),
                a.sweeps,
                a.reused,
                a.reused + a.read,
                a.unlisted
            );
            println!(
                "{:<58} {:>9.1} MB  (peak {:.1} MB; kept tables {:.1} MB)",
                "agent: resident memory after the sweeps",
                a.rss_bytes as f64 / 1e6,
                a.peak_rss_bytes as f64 / 1e6,
                a.index_bytes / 1e6
            );
        }
        Err(why) => println!("agent: rows not measured: {why}"),
    }
    drop(holders);
}
