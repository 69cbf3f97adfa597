//! The index rows: the same scans in this process, cold (every table read from the kernel)
//! and warm (tables kept from the previous scan of an unchanged node, as the agent keeps
//! them between sweeps), with wall and CPU time and the heap the kept tables take.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mntreap::engine::index::TableIndex;
use mntreap::engine::scan::{self, ScanRequest};
use mntreap::engine::source::Backend;

/// One scan's cost.
#[derive(Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    pub cpu: Duration,
}

pub struct Rows {
    pub cold: Cost,
    pub warm: Cost,
    /// Namespaces the warm scan reused, out of those it saw.
    pub reused: usize,
    /// Of those, reused on the kernel's mount events (no listmount).
    pub unlisted: usize,
    pub namespaces: usize,
    pub index_bytes: usize,
    pub holders: usize,
    /// This process's resident memory after the warm scan, with the index kept.
    pub rss_bytes: u64,
}

fn cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

fn timed(index: &TableIndex, req: &ScanRequest, holders: Option<usize>) -> (Cost, scan::Scan) {
    let (c0, t0) = (cpu(), Instant::now());
    let mut found = scan::scan_indexed(req, Some(index)).expect("scan");
    let cost = Cost {
        wall: t0.elapsed(),
        cpu: cpu() - c0,
    };
    if let Some(holders) = holders {
        assert_eq!(
            found.holders.len(),
            holders,
            "the warm scan found another result"
        );
    }
    index.keep(found.take_tables());
    (cost, found)
}

/// The warm release row: one layer released in every namespace from the agent's index.
pub struct ReleaseRow {
    pub warm: Cost,
    /// Reads by id (`statmount`, `listmount` below a holder) that confirmed the plan
    /// (median run's).
    pub confirmed: usize,
    pub released: usize,
}

fn request(targets: Vec<PathBuf>) -> ScanRequest {
    ScanRequest {
        targets,
        devices: Vec::new(),
        backend: Backend::Listmount,
        proc_root: PathBuf::from("/proc"),
        threads: scan::default_threads(),
        paths_only: false,
        layer_signatures: Vec::new(),
        trusted_namespaces: Vec::new(),
        no_identity: Vec::new(),
        runtime_pid: None,
    }
}

/// Releases each of `layers` (each in every namespace) with a watching index, as a
/// long-running process would: untimed, a scan brings the index up to date (the last
/// release's unmounts changed every table); timed, the warm scan and the release together
/// (plan, confirmation by id, unmounts, re-check). `None`: this kernel has no mount events.
pub fn measure_release(layers: Vec<PathBuf>, namespaces: usize) -> Option<ReleaseRow> {
    let index = TableIndex::watching(Duration::from_secs(3600)).for_releases();
    if !index.events() {
        return None;
    }
    let mut runs = Vec::new();
    for layer in layers {
        let req = request(vec![layer]);
        let mut kept = scan::scan_indexed(&req, Some(&index)).expect("scan");
        index.keep(kept.take_tables());
        let (c0, t0) = (cpu(), Instant::now());
        let found = scan::scan_indexed(&req, Some(&index)).expect("scan");
        assert!(found.from_index(), "the warm release reused no table");
        let rel = mntreap::engine::release::run_on(found, &req, Default::default(), false)
            .expect("the kept tables of an unchanged node are confirmed");
        let cost = Cost {
            wall: t0.elapsed(),
            cpu: cpu() - c0,
        };
        assert_eq!(
            rel.released(),
            namespaces,
            "the warm release released another set"
        );
        assert!(rel.remaining().is_empty(), "the warm release left copies");
        let confirmed = rel
            .confirmed
            .expect("a release from kept tables is confirmed");
        runs.push((cost, confirmed, rel.released()));
    }
    runs.sort_by_key(|(c, _, _)| c.wall);
    let (warm, confirmed, released) = runs[runs.len() / 2];
    Some(ReleaseRow {
        warm,
        confirmed,
        released,
    })
}

/// Scans `targets` `runs + 1` times with one index (listing each namespace's mounts, or
/// `watching` the kernel's mount events): the first is cold, the medians of the rest are
/// warm. Every warm scan must find what the cold one found.
pub fn measure(targets: Vec<PathBuf>, runs: usize, watching: bool) -> Rows {
    let req = request(targets);
    // MNTREAP_BENCH_TRACE=1: the scans' phase timings (debug lines) on stderr, filtered
    // by MNTREAP_BENCH_FILTER (`mntreap=debug,mntreap::engine::scan::matching=info` leaves
    // out a line per matched mount).
    if std::env::var_os("MNTREAP_BENCH_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("MNTREAP_BENCH_FILTER").unwrap_or("mntreap=debug".into()),
            )
            .with_writer(std::io::stderr)
            .try_init();
    }
    let age = Duration::from_secs(3600);
    let index = if watching {
        TableIndex::watching(age)
    } else {
        TableIndex::new(age)
    };
    assert!(
        !watching || index.events(),
        "this kernel reports no mount events (6.15+)"
    );
    let (cold, first) = timed(&index, &req, None);
    let holders = first.holders.len();
    assert!(!first.from_index(), "the first scan had nothing to reuse");
    let mut warm = Vec::new();
    let mut reused = 0;
    let mut unlisted = 0;
    let mut namespaces = 0;
    for _ in 0..runs.max(1) {
        let (cost, found) = timed(&index, &req, Some(holders));
        let used = found
            .index
            .expect("an indexed scan says how it used the index");
        (reused, unlisted, namespaces) = (used.reused, used.unlisted, found.namespaces.len());
        warm.push(cost);
    }
    warm.sort_by_key(|c| c.wall);
    Rows {
        cold,
        warm: warm[warm.len() / 2],
        reused,
        unlisted,
        namespaces,
        index_bytes: index.heap_bytes(),
        holders,
        rss_bytes: rss_bytes(),
    }
}
