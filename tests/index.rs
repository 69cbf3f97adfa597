//! The mount index ([`mntreap::engine::index`]) against real namespaces: a kept table is
//! reused only while the kernel lists exactly its mounts, so it never hides a copy made
//! since, a forged one is not believed, and nothing is released from a scan that used one.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mntreap::engine::index::TableIndex;
use mntreap::engine::scan::{Scan, ScanError, ScanRequest, scan_indexed};
use mntreap::engine::source::{Backend, BackendChoice};

/// Whether this kernel lists foreign namespaces' mounts (6.10+); the index needs it.
fn listmount_works() -> bool {
    let own = std::fs::File::open("/proc/self/ns/mnt").unwrap();
    let works = BackendChoice::Auto.resolve(std::os::fd::AsFd::as_fd(&own)) == Backend::Listmount;
    if !works {
        eprintln!("skipped: this kernel has no listmount(2) for foreign namespaces (6.10+)");
    }
    works
}

/// A sandbox with a tmpfs "layer" at `l/x/merged`, a holder that copied it, and a request
/// that trusts the sandbox's view (as a runtime's namespace) for what the layer is.
fn node(name: &str) -> (Sandbox, String, i32, ScanRequest) {
    node_with(name, "true")
}

/// [`node`], with `setup` run in the sandbox (`{d}`: its directory) before the holder
/// copies it.
fn node_with(name: &str, setup: &str) -> (Sandbox, String, i32, ScanRequest) {
    let mut sb = Sandbox::new(name);
    let layer = format!("{}/l/x/merged", sb.d());
    sb.sh(&format!(
        "mkdir -p {layer} {d}/elsewhere && mount -t tmpfs layer-x {layer} && {setup}",
        d = sb.d(),
        setup = setup.replace("{d}", &sb.d())
    ));
    let holder = sb.holder(None, None);
    let request = ScanRequest {
        targets: vec![PathBuf::from(&layer)],
        devices: Vec::new(),
        backend: Backend::Listmount,
        proc_root: "/proc".into(),
        threads: 2,
        paths_only: false,
        layer_signatures: Vec::new(),
        trusted_namespaces: vec![ns_inode(sb.host_pid())],
        no_identity: Vec::new(),
        runtime_pid: None,
    };
    (sb, layer, holder, request)
}

/// (namespace inode, mount point) of every holder in `namespaces`.
fn held(scan: &Scan, namespaces: &[u64]) -> BTreeSet<(u64, String)> {
    scan.holders
        .iter()
        .filter(|h| namespaces.contains(&scan.namespaces[h.ns].ns.inode))
        .map(|h| {
            (
                scan.namespaces[h.ns].ns.inode,
                String::from_utf8_lossy(&h.mount_point).into_owned(),
            )
        })
        .collect()
}

/// The tests here mount, and a watching index sees every mount on the machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tests' turn (see [`serial`]) and an index, or `None` (said why) on a kernel without
/// foreign listmount or what `index` needs.
fn serial_with(
    index: fn() -> Option<TableIndex>,
) -> Option<(std::sync::MutexGuard<'static, ()>, TableIndex)> {
    let turn = serial();
    if !listmount_works() {
        return None;
    }
    Some((turn, index()?))
}

fn kept_scan(index: &TableIndex, request: &ScanRequest) -> Scan {
    let mut scan = scan_indexed(request, Some(index)).unwrap();
    index.keep(scan.take_tables());
    scan
}

#[test]
fn a_kept_table_never_hides_a_copy_made_since() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    let (mut sb, layer, holder, request) = node("index-new-copy");
    let index = TableIndex::new(Duration::from_secs(3600));
    let first = kept_scan(&index, &request);
    let ns = ns_inode(holder);
    assert_eq!(held(&first, &[ns]), BTreeSet::from([(ns, layer.clone())]));

    // Since the first scan: a bind of the layer at another path in the kept namespace, and
    // a new namespace that copied the sandbox.
    let elsewhere = format!("{}/elsewhere", sb.d());
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &holder.to_string(),
            "-m",
            "mount",
            "--bind",
            &layer,
            &elsewhere,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let late = sb.holder(None, None);
    let late_ns = ns_inode(late);

    let second = kept_scan(&index, &request);
    let used = second
        .index
        .expect("an indexed scan says how it used the index");
    assert!(
        used.reused > 0,
        "nothing was reused: the test shows nothing ({used:?})"
    );
    assert_eq!(
        held(&second, &[ns, late_ns]),
        BTreeSet::from([(ns, layer.clone()), (ns, elsewhere), (late_ns, layer)]),
        "a copy made after the index was built is missing"
    );
}

/// A listing index, and a watching one when this kernel reports mount events (6.15+).
fn both_indexes() -> Vec<TableIndex> {
    let watching = TableIndex::watching(Duration::from_secs(3600));
    if watching.events() {
        vec![TableIndex::new(Duration::from_secs(3600)), watching]
    } else {
        eprintln!("the watching index is not tested: this kernel has no mount events (6.15+)");
        vec![TableIndex::new(Duration::from_secs(3600))]
    }
}

/// The watching index made for releases (its kept mount points read again by each
/// scan), or `None` (said why) on a kernel without mount events.
fn release_index() -> Option<TableIndex> {
    watching_index().map(TableIndex::for_releases)
}

/// The watching index, or `None` (said why) on a kernel without mount events.
fn watching_index() -> Option<TableIndex> {
    let index = TableIndex::watching(Duration::from_secs(3600));
    if index.events() {
        Some(index)
    } else {
        eprintln!("skipped: this kernel has no fanotify mount events (6.15+)");
        None
    }
}

fn nsenter_ok(pid: i32, cmd: &[&str]) {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m"])
        .args(cmd)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
}

#[test]
fn a_forged_kept_table_is_read_again() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    for index in both_indexes() {
        forged_table_is_read_again(index);
    }
}

fn forged_table_is_read_again(index: TableIndex) {
    let (_sb, layer, holder, request) = node("index-forged");
    let ns = ns_inode(holder);
    let mut first = scan_indexed(&request, Some(&index)).unwrap();
    assert_eq!(held(&first, &[ns]), BTreeSet::from([(ns, layer.clone())]));
    // The holder's table, kept with the layer's copy taken out of it: the kernel still
    // lists that mount's id, so the table is not what the kernel says.
    let at = first
        .namespaces
        .iter()
        .position(|n| n.ns.inode == ns)
        .unwrap();
    let holder_mount = first
        .holders
        .iter()
        .find(|h| h.ns == at)
        .unwrap()
        .mount
        .unique_id;
    let mut tables = first.take_tables();
    let forged = tables
        .iter_mut()
        .find(|t| t.mounts.iter().any(|m| m.unique_id == holder_mount))
        .unwrap();
    forged.mounts.retain(|m| m.unique_id != holder_mount);
    index.keep(tables);

    let second = kept_scan(&index, &request);
    assert!(
        second.from_index(),
        "nothing was reused: the test shows nothing"
    );
    assert_eq!(
        held(&second, &[ns]),
        BTreeSet::from([(ns, layer)]),
        "the forged table hid the copy"
    );
}

/// A warm scan of `request` (its tables kept by a scan before), checked to have reused them.
fn warm_scan(index: &TableIndex, request: &ScanRequest) -> Scan {
    let warm = scan_indexed(request, Some(index)).unwrap();
    assert!(
        warm.from_index(),
        "nothing was reused: the test shows nothing"
    );
    warm
}

/// Releases from `warm` and checks that the kernel's answers set the plan aside, for the
/// holder's namespace if one is given, before anything was unmounted; returns why.
fn refused_for(warm: Scan, request: &ScanRequest, holder: Option<i32>, why: &str) -> String {
    match mntreap::engine::release::run_on(warm, request, Default::default(), false) {
        Err(e @ ScanError::Unconfirmed { inode, .. }) => {
            if let Some(holder) = holder {
                assert_eq!(inode, ns_inode(holder), "{e}");
            }
            e.to_string()
        }
        other => panic!("{why}: {:?}", other.map(|r| r.results)),
    }
}

/// After a refused release: the sandbox's copy and `survives` in the holder are still
/// mounted, and the same request read cold releases everything.
fn untouched_then_cold(
    sb: &Sandbox,
    request: &ScanRequest,
    holder: i32,
    survives: &str,
    why: &str,
) {
    let layer = request.targets[0].to_str().unwrap();
    assert!(
        has_mount_at(holder, survives),
        "{why}: {survives} was unmounted"
    );
    assert!(
        has_mount_at(sb.host_pid(), layer),
        "{why}: the sandbox's copy was unmounted"
    );
    let rel = mntreap::engine::release::run(request, Default::default(), false).unwrap();
    assert!(rel.confirmed.is_none());
    assert!(rel.remaining().is_empty(), "{:?}", rel.remaining());
    assert!(
        !has_mount_at(holder, survives),
        "the cold release left {survives}"
    );
}

#[test]
fn a_release_from_kept_tables_is_confirmed_by_id_and_done() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    let (sb, layer, holder, request) = node("index-release");
    kept_scan(&index, &request);
    let warm = warm_scan(&index, &request);
    let rel = mntreap::engine::release::run_on(warm, &request, Default::default(), false)
        .expect("an unchanged node's kept tables are confirmed");
    let confirmed = rel
        .confirmed
        .expect("a release from kept tables is confirmed");
    assert!(
        confirmed >= 4,
        "{confirmed} mounts read again: not every copy and parent"
    );
    assert_eq!(rel.released(), 2, "the holder's copy and the sandbox's");
    assert!(rel.remaining().is_empty(), "{:?}", rel.remaining());
    assert!(!has_mount_at(holder, &layer), "the copy is still there");
    assert!(!has_mount_at(sb.host_pid(), &layer));
}

#[test]
fn a_release_from_a_kept_table_whose_parent_became_shared_unmounts_nothing() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    let (sb, layer, holder, request) = node("index-release-shared");
    kept_scan(&index, &request);
    // No id and no event shows a propagation change.
    nsenter_ok(holder, &["mount", "--make-shared", &sb.d()]);
    let why = "a copy whose parent was made shared since its table was kept was released";
    let refused = refused_for(warm_scan(&index, &request), &request, Some(holder), why);
    assert!(refused.contains("propagation"), "{refused}");
    untouched_then_cold(&sb, &request, holder, &layer, why);
}

#[test]
fn a_release_from_tables_kept_without_mount_events_never_misses_a_moved_copy() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    let (sb, layer, holder, request) = node("index-release-moved");
    let index = TableIndex::new(Duration::from_secs(3600)).for_releases();
    kept_scan(&index, &request);
    // The same mount, the same id, another place: a listing index reuses the table, whose
    // scan then misses the copy (it is where the table says it is not).
    let elsewhere = format!("{}/elsewhere", sb.d());
    nsenter_ok(
        holder,
        &[
            "sh",
            "-c",
            &format!("mount --make-private {layer} && mount --move {layer} {elsewhere}"),
        ],
    );
    let why = "a release from a listing index left a moved copy behind";
    // Any namespace's table may hide it: the first reused one is named.
    let refused = refused_for(warm_scan(&index, &request), &request, None, why);
    assert!(refused.contains("moved"), "{refused}");
    untouched_then_cold(&sb, &request, holder, &elsewhere, why);
}

#[test]
fn a_release_from_a_forged_kept_table_never_detaches_what_it_does_not_show() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // The holder's own tmpfs, moved inside its copy of the layer before any scan.
    let (sb, layer, holder, request) = node_with(
        "index-release-below",
        "mkdir -p {d}/other && mount -t tmpfs other {d}/other",
    );
    let (d, inside) = (sb.d(), format!("{layer}/inside"));
    nsenter_ok(
        holder,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p {inside} && mount --make-private {d}/other && mount --move {d}/other {inside}"
            ),
        ],
    );
    let mut first = scan_indexed(&request, Some(&index)).unwrap();
    // Kept with the tmpfs put back where it was: the ids are the kernel's, so the table
    // is reused; a detach of the copy would take the tmpfs, which the plan does not show.
    let ns = ns_inode(holder);
    let at = first
        .namespaces
        .iter()
        .position(|n| n.ns.inode == ns)
        .unwrap();
    let table = first.namespaces[at].table.as_mut().unwrap();
    let parent_of_copy = {
        let copy = table
            .mounts
            .iter()
            .find(|m| table.mount_point(m) == layer.as_bytes())
            .unwrap();
        copy.parent_id
    };
    let moved = table
        .mounts
        .iter()
        .position(|m| table.mount_point(m) == inside.as_bytes())
        .expect("the moved tmpfs is in the table");
    table.mounts[moved].parent_id = parent_of_copy;
    index.keep(first.take_tables());
    let why = "a detach of a copy took a mount its kept table did not put below it";
    let refused = refused_for(warm_scan(&index, &request), &request, Some(holder), why);
    assert!(refused.contains("below it"), "{refused}");
    untouched_then_cold(&sb, &request, holder, &inside, why);
}

#[test]
fn a_release_from_kept_mount_points_is_refused() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    // A sweep's index keeps mount points as read; a rename above one keeps its id and
    // raises no event, so a release may not decide by them.
    let Some(index) = watching_index() else {
        return;
    };
    let (sb, layer, holder, request) = node("index-release-kept-points");
    kept_scan(&index, &request);
    let why = "a release decided by mount points kept from an earlier read";
    let refused = refused_for(warm_scan(&index, &request), &request, None, why);
    assert!(refused.contains("rename"), "{refused}");
    untouched_then_cold(&sb, &request, holder, &layer, why);
}

#[test]
fn a_release_from_kept_tables_finds_a_mount_renamed_into_a_target() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // The target is a directory of the sandbox's filesystem, the layer mounted inside it:
    // a directory renamed into it carries the mounts below it along, with their ids, and
    // the kernel sends no mount event for a rename.
    let (sb, layer, holder, mut request) = node("index-release-renamed");
    let d = sb.d();
    let target = format!("{d}/l/x");
    request.targets = vec![PathBuf::from(&target)];
    nsenter_ok(holder, &["mkdir", "-p", &format!("{d}/stage/m")]);
    nsenter_ok(
        holder,
        &["mount", "-t", "tmpfs", "intruder", &format!("{d}/stage/m")],
    );
    let ns = ns_inode(holder);
    let before = kept_scan(&index, &request);
    assert_eq!(held(&before, &[ns]), BTreeSet::from([(ns, layer.clone())]));
    // Renamed from the sandbox: the same directory, seen through every namespace.
    sb.sh(&format!("mv {d}/stage {target}/stage"));
    let renamed = format!("{target}/stage/m");
    assert!(has_mount_at(holder, &renamed));
    let warm = warm_scan(&index, &request);
    assert_eq!(
        held(&warm, &[ns]),
        BTreeSet::from([(ns, layer.clone()), (ns, renamed.clone())]),
        "the mount renamed into the target was judged by its kept mount point"
    );
    let rel = mntreap::engine::release::run_on(warm, &request, Default::default(), false)
        .expect("the kept tables are confirmed");
    assert!(rel.confirmed.is_some());
    assert!(rel.remaining().is_empty(), "{:?}", rel.remaining());
    assert!(
        !has_mount_at(holder, &renamed) && !has_mount_at(holder, &layer),
        "a release from kept tables left the renamed mount"
    );
}

#[test]
fn a_release_from_kept_tables_sees_a_trusted_mount_renamed_out_of_a_target() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // The sandbox (the trusted view) has a filesystem of its own inside the target: what
    // is at the target says what a copy of it is, so the holder's bind of it elsewhere is
    // a copy. Renamed out of the target, it is the sandbox's own mount and that bind is
    // nobody's copy; only its mount point, which a rename changes silently, says so.
    let (sb, layer, holder, mut request) = node_with(
        "index-release-renamed-out",
        "mkdir -p {d}/l/x/a/fs {d}/out {d}/agent && mount -t tmpfs its-own {d}/l/x/a/fs",
    );
    let d = sb.d();
    let target = format!("{d}/l/x");
    request.targets = vec![PathBuf::from(&target)];
    let bind = format!("{d}/agent");
    nsenter_ok(
        holder,
        &["mount", "--bind", &format!("{target}/a/fs"), &bind],
    );
    nsenter_ok(holder, &["umount", &format!("{target}/a/fs")]);
    let ns = ns_inode(holder);
    let before = kept_scan(&index, &request);
    assert_eq!(
        held(&before, &[ns]),
        BTreeSet::from([(ns, layer.clone()), (ns, bind.clone())]),
        "the bind is a copy while the filesystem is at the target: the test shows nothing"
    );
    sb.sh(&format!("mv {target}/a {d}/out/a"));
    let warm = warm_scan(&index, &request);
    assert_eq!(
        held(&warm, &[ns]),
        BTreeSet::from([(ns, layer.clone())]),
        "the trusted view was judged by its kept mount point"
    );
    let rel = mntreap::engine::release::run_on(warm, &request, Default::default(), false)
        .expect("the kept tables are confirmed");
    assert!(rel.confirmed.is_some());
    assert!(!has_mount_at(holder, &layer));
    assert!(
        has_mount_at(holder, &bind),
        "a release from kept tables unmounted a bind of the sandbox's own filesystem"
    );
}

#[test]
fn a_watched_namespace_is_reused_unlisted_until_an_event_concerns_it() {
    let Some((_serial, index)) = serial_with(watching_index) else {
        return;
    };
    let (mut sb, layer, holder, request) = node("index-watched");
    let ns = ns_inode(holder);
    let first = kept_scan(&index, &request);
    assert_eq!(first.index.unwrap().unlisted, 0);

    // Unchanged: every namespace reused, none listed. Another process's mount anywhere
    // on the machine sends every namespace back to listmount once; so within three scans.
    let mut uses = Vec::new();
    let second = loop {
        let scan = kept_scan(&index, &request);
        let used = scan.index.unwrap();
        uses.push(used);
        if used.unlisted > 0 && used.unlisted == used.reused && used.read == 0 {
            break scan;
        }
        assert!(
            uses.len() < 3,
            "an unchanged node was listed or read: {uses:?}"
        );
    };
    assert_eq!(held(&second, &[ns]), BTreeSet::from([(ns, layer.clone())]));

    // A bind in the kept namespace, and a namespace made since: both found.
    let elsewhere = format!("{}/elsewhere", sb.d());
    nsenter_ok(holder, &["mount", "--bind", &layer, &elsewhere]);
    let late = sb.holder(None, None);
    let late_ns = ns_inode(late);
    let third = kept_scan(&index, &request);
    assert_eq!(
        held(&third, &[ns, late_ns]),
        BTreeSet::from([
            (ns, layer.clone()),
            (ns, elsewhere.clone()),
            (late_ns, layer.clone())
        ]),
        "a copy made after the index was built is missing"
    );

    // A detach in the kept namespace: no longer a holder there.
    nsenter_ok(holder, &["umount", &elsewhere]);
    let fourth = kept_scan(&index, &request);
    assert_eq!(
        held(&fourth, &[ns]),
        BTreeSet::from([(ns, layer)]),
        "a copy unmounted since is still listed"
    );
}

/// Scans a node with the watching index, runs `before_move` in the holder's namespace
/// (given the sandbox's directory), moves the holder's copy elsewhere there (the same mount,
/// the same id: a listing index sees the same ids), and checks that the next kept scan
/// reports the copy where it is now.
fn moved_copy_is_reported_where_it_is(name: &str, before_move: impl Fn(i32, &str), why: &str) {
    let Some(index) = watching_index() else {
        return;
    };
    let (sb, layer, holder, request) = node(name);
    let ns = ns_inode(holder);
    let first = kept_scan(&index, &request);
    assert_eq!(held(&first, &[ns]), BTreeSet::from([(ns, layer.clone())]));
    before_move(holder, &sb.d());
    let elsewhere = format!("{}/elsewhere", sb.d());
    nsenter_ok(
        holder,
        &[
            "sh",
            "-c",
            &format!("mount --make-private {layer} && mount --move {layer} {elsewhere}"),
        ],
    );
    let second = kept_scan(&index, &request);
    assert_eq!(
        held(&second, &[ns]),
        BTreeSet::from([(ns, elsewhere)]),
        "{why}"
    );
}

#[test]
fn a_copy_moved_since_the_read_is_reported_where_it_is() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    moved_copy_is_reported_where_it_is(
        "index-moved",
        |_, _| {},
        "the moved copy is reported where it was",
    );
}

#[test]
fn a_copy_moved_among_lost_events_is_reported_where_it_is() {
    let _serial = serial();
    if !listmount_works() {
        return;
    }
    // More attaches and detaches than the event queue holds (16,384 by default), then the
    // move: its event is lost with the others.
    let churn = |holder: i32, dir: &str| {
        let churn = format!("{dir}/churn");
        let script = format!(
            "import ctypes, os\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             os.makedirs('{churn}', exist_ok=True)\n\
             for _ in range(10000):\n\
             \x20   assert libc.mount(b'{churn}', b'{churn}', None, 4096, None) == 0, ctypes.get_errno()\n\
             \x20   assert libc.umount2(b'{churn}', 0) == 0, ctypes.get_errno()\n"
        );
        nsenter_ok(holder, &["python3", "-c", &script]);
    };
    moved_copy_is_reported_where_it_is(
        "index-lost",
        churn,
        "the copy moved among lost events is reported where it was",
    );
}

/// A daemon's releases (the agent's hook and events, the plugin) go through
/// [`mntreap::runtime::scope::release_containers`] with the daemon's one index: the first
/// reads every table and keeps them, the next reuses the unchanged ones and confirms by id
/// what it acts on, and one whose kept table cannot be relied on is made again from tables
/// read now, and says so.
#[test]
fn a_daemons_releases_reuse_kept_tables_and_read_again_what_cannot_be_relied_on() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    let (sb, x, holder, base) = node_with(
        "index-daemon",
        "for l in y z; do mkdir -p {d}/l/$l/merged && mount -t tmpfs layer-$l {d}/l/$l/merged; done",
    );
    let layer = |l: &str| format!("{}/l/{l}/merged", sb.d());
    let (y, z) = (layer("y"), layer("z"));
    let sandbox = ns_inode(sb.host_pid());
    let release = |target: &str| {
        let req = ScanRequest {
            targets: vec![PathBuf::from(target)],
            ..base.clone()
        };
        let scope = mntreap::engine::release::Scope {
            protected: Some(vec![(sandbox, "the runtime's own view".into())]),
            ..Default::default()
        };
        mntreap::runtime::scope::release_containers(&req, &[], scope, false, Some(&index))
            .expect("a release")
    };
    for l in [&x, &y, &z] {
        assert!(has_mount_at(holder, l), "the holder copied {l}");
    }

    let first = release(&x);
    assert!(!has_mount_at(holder, &x), "x's copy is released");
    let used = first
        .scan
        .index
        .expect("the release says how it used the index");
    assert_eq!(used.reused, 0, "an empty index reuses nothing: {used:?}");
    assert!(!index.is_empty(), "the release kept the tables it read");

    let second = release(&y);
    let used = second.scan.index.unwrap();
    assert!(
        used.reused > 0,
        "the second release read every table again: {used:?}"
    );
    assert!(
        second.confirmed.is_some_and(|n| n > 0),
        "a release from kept tables confirms its plan by id"
    );
    assert!(!has_mount_at(holder, &y), "y's copy is released");
    assert!(
        has_mount_at(sb.host_pid(), &y),
        "the protected namespace keeps its own mount"
    );

    // y's unmount sent the holder's namespace to a new read: a scan (a sweep) keeps it.
    let kept = kept_scan(&index, &base);
    assert!(kept.from_index(), "the unchanged namespaces are reused");
    // z's copy made shared since: a propagation change, which neither its id nor any
    // event shows. The confirmation sees it; the release is made from tables read now.
    nsenter_ok(holder, &["mount", "--make-shared", &z]);
    let third = release(&z);
    assert!(
        third
            .notes
            .iter()
            .any(|n| n.contains("could not be relied on")),
        "the fallback is not said: {:?}",
        third.notes
    );
    assert!(
        third.confirmed.is_none(),
        "tables read now need no confirmation"
    );
    assert_eq!(
        third.scan.index.unwrap().reused,
        0,
        "{:?}",
        third.scan.index
    );
    assert!(!has_mount_at(holder, &z), "z's copy is released");
    assert!(has_mount_at(sb.host_pid(), &z));
    assert!(!index.is_empty(), "the tables read again are kept");
}

#[test]
fn a_warm_release_lists_below_a_copy_only_where_its_lookup_saw_something_below() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // Layer y is layer x with a file in it, at the same depth: every copy of x has an
    // empty root, which the scan's lookup of the target shows has nothing below it, so the
    // confirmation lists below no copy of x and below each copy of y.
    let (sb, layer_x, holder, mut request) = node_with(
        "index-release-bare",
        "mkdir -p {d}/l/y/merged && mount -t tmpfs layer-y {d}/l/y/merged \
         && touch {d}/l/y/merged/file",
    );
    let layer_y = format!("{}/l/y/merged", sb.d());
    let mut confirmed = Vec::new();
    for layer in [&layer_x, &layer_y] {
        request.targets = vec![PathBuf::from(layer)];
        kept_scan(&index, &request);
        let warm = warm_scan(&index, &request);
        let rel = mntreap::engine::release::run_on(warm, &request, Default::default(), false)
            .expect("an unchanged node's kept tables are confirmed");
        assert_eq!(rel.released(), 2, "the holder's copy and the sandbox's");
        assert!(rel.remaining().is_empty(), "{:?}", rel.remaining());
        assert!(
            !has_mount_at(holder, layer),
            "the copy of {layer} is still there"
        );
        confirmed.push(
            rel.confirmed
                .expect("a release from kept tables is confirmed"),
        );
    }
    assert_eq!(
        confirmed[1],
        confirmed[0] + 2,
        "reads by id for x (empty copies) and y (a file in each): one listing per copy of y only"
    );
}

#[test]
fn a_warm_release_of_a_copy_with_many_mounts_inside_is_confirmed_mount_by_mount() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // Eighteen holders in each namespace (the copy and seventeen tmpfs inside it): more
    // than a pass of compares per holder is meant for, so the table's parents are a set.
    let (sb, layer, holder, request) = node_with(
        "index-release-many",
        "for k in $(seq 17); do mkdir -p {d}/l/x/merged/m$k \
         && mount -t tmpfs m$k {d}/l/x/merged/m$k; done",
    );
    kept_scan(&index, &request);
    let warm = warm_scan(&index, &request);
    assert_eq!(
        warm.holders.len(),
        36,
        "{:?}",
        held(&warm, &[ns_inode(holder)])
    );
    let rel = mntreap::engine::release::run_on(warm, &request, Default::default(), false)
        .expect("an unchanged node's kept tables are confirmed");
    // Per namespace: the copy and its parents, each tmpfs and its parents (the copy is the
    // tmpfs's parent), and one listing below the copy (its root is not empty).
    let confirmed = rel
        .confirmed
        .expect("a release from kept tables is confirmed");
    assert!(confirmed >= 2 * (17 + 2), "{confirmed} reads by id");
    assert_eq!(rel.released(), 36);
    assert!(rel.remaining().is_empty(), "{:?}", rel.remaining());
    assert!(!has_mount_at(holder, &layer), "the copy is still there");
    assert!(!has_mount_at(sb.host_pid(), &format!("{layer}/m1")));
}

#[test]
fn a_mount_made_below_a_bare_copy_after_the_scan_never_goes_with_its_detach() {
    let Some((_serial, index)) = serial_with(release_index) else {
        return;
    };
    // The scan finds each copy's root empty, so its confirmation lists below no copy; a
    // tmpfs mounted inside the holder's copy after the scan must not go with a detach.
    let (_sb, layer, holder, request) = node("index-release-late");
    kept_scan(&index, &request);
    let warm = warm_scan(&index, &request);
    let late = format!("{layer}/late");
    nsenter_ok(
        holder,
        &[
            "sh",
            "-c",
            &format!("mkdir {late} && mount -t tmpfs late {late}"),
        ],
    );
    match mntreap::engine::release::run_on(warm, &request, Default::default(), false) {
        Ok(rel) => {
            let refused = rel
                .results
                .iter()
                .filter(|r| format!("{:?}", r.outcome).contains("MountedBelow"))
                .count();
            assert_eq!(
                refused, 2,
                "both copies' roots are no longer empty: {:?}",
                rel.results
            );
            assert!(
                has_mount_at(holder, &layer),
                "the holder's copy was detached"
            );
        }
        Err(e) => assert!(matches!(e, ScanError::Unconfirmed { .. }), "{e}"),
    }
    assert!(
        has_mount_at(holder, &late),
        "the tmpfs mounted after the scan went with the copy's detach"
    );
}
