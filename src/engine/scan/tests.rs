//! The safety rules of matching and planning, table-driven over plain data: mount tables
//! written as mountinfo text, namespaces that are descriptors of `/dev/null`. No root, no
//! real namespaces: what the end-to-end tests show on a real host, these show rule by rule.

use super::fixture::{Ns, scan_of, scan_with};
use super::*;
use crate::engine::release::{self, Scope, Step};

/// `(namespace inode, mount point, how)` of every holder, sorted.
fn matched(scan: &Scan) -> Vec<(u64, String, Match)> {
    let mut v: Vec<_> = scan
        .holders
        .iter()
        .map(|h| {
            (
                scan.namespaces[h.ns].ns.inode,
                String::from_utf8_lossy(&h.mount_point).into_owned(),
                h.matched,
            )
        })
        .collect();
    v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    v
}

const T: &str = "/d/l/abc/merged";

#[test]
fn whole_components_only_prefix_decoys_never_match() {
    let text = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n\
                3 1 0:51 / /d/l/abc-init/merged rw - overlay overlay rw\n\
                4 1 0:52 / /d/l/abc0/merged rw - tmpfs decoy rw\n\
                5 1 0:53 / /d/l/abc/merged2 rw - tmpfs decoy rw\n";
    let scan = scan_of(&[T], &[], &[Ns(10, false, true, text)]);
    assert_eq!(matched(&scan), vec![(10, T.into(), Match::Path)]);
}

#[test]
fn copies_at_other_paths_match_through_trusted_views_only() {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let agent = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                 7 1 0:50 / /host/d/l/abc/merged rw - overlay overlay rw\n";
    // An unprivileged user's namespace binds another filesystem at the target path.
    let forger = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  9 1 0:60 / /d/l/abc/merged rw - tmpfs precious rw\n";
    let victim = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  8 1 0:60 / /vol rw - tmpfs precious rw\n";
    let namespaces = [
        Ns(1, true, true, own),
        Ns(2, false, true, agent),
        Ns(3, false, false, forger),
        Ns(4, false, true, victim),
    ];
    let scan = scan_of(&[T], &[], &namespaces);
    assert_eq!(
        matched(&scan),
        vec![
            (1, T.into(), Match::Path),
            (2, "/host/d/l/abc/merged".into(), Match::Identity),
            (3, T.into(), Match::Path),
        ]
    );
    // The same bind in a namespace the host's user namespace owns (a setuid helper's):
    // still no identity, only the own and the runtime's namespaces seed.
    let mut namespaces = namespaces;
    namespaces[2].2 = true;
    let scan = scan_of(&[T], &[], &namespaces);
    assert!(
        !matched(&scan).iter().any(|(ns, ..)| *ns == 4),
        "{:?}",
        matched(&scan)
    );
    // The runtime's namespace seeds like mntreap's own, once it is established.
    let runtime = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                   2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let scan = scan_of(
        &[T],
        &[5],
        &[Ns(5, false, true, runtime), Ns(2, false, true, agent)],
    );
    assert!(matched(&scan).contains(&(2, "/host/d/l/abc/merged".into(), Match::Identity)));
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(5, false, true, runtime), Ns(2, false, true, agent)],
    );
    assert!(!matched(&scan).iter().any(|(ns, ..)| *ns == 2));
}

#[test]
fn a_filesystem_also_mounted_with_a_broader_root_is_no_identity() {
    // The target is a bind of /data/x from the root filesystem, which is also at /.
    let own = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
               2 1 8:1 /data/x /d/l/abc/merged rw - ext4 /dev/sda1 rw\n";
    let other = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                 3 1 8:1 /data/x /elsewhere rw - ext4 /dev/sda1 rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, other)],
    );
    assert_eq!(matched(&scan), vec![(1, T.into(), Match::Path)]);
    assert!(
        scan.detail_notes.iter().any(|n| n.contains("not private")),
        "{:?}",
        scan.detail_notes
    );
}

#[test]
fn a_filesystem_the_node_mounts_elsewhere_too_is_no_identity() {
    // A pod's NFS volume (the target) is the same export, same root, that the node also
    // mounts at /mnt/x: a service's /mnt/x is the node's share, not a copy of the volume.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:90 / /d/l/abc/merged rw - nfs srv:/export rw\n\
               3 1 0:90 / /mnt/x rw - nfs srv:/export rw\n";
    let service = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                   3 1 0:90 / /mnt/x rw - nfs srv:/export rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, service)],
    );
    assert!(
        !matched(&scan).iter().any(|(ns, ..)| *ns == 2),
        "{:?}",
        matched(&scan)
    );
    // Mounted only at the target in the trusted view: a copy elsewhere is the volume.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:90 / /d/l/abc/merged rw - nfs srv:/export rw\n";
    let agent = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                 3 1 0:90 / /host/d/l/abc/merged rw - nfs srv:/export rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, agent)],
    );
    assert!(
        matched(&scan).iter().any(|(ns, ..)| *ns == 2),
        "{:?}",
        matched(&scan)
    );
}

#[test]
fn a_subpath_onto_the_root_of_a_host_tmpfs_is_no_identity() {
    // A pod's `hostPath: /dev` + `subPath: shm`: kubelet binds the root of the node's
    // /dev/shm tmpfs (0:60 /) under the pod's volume-subpaths, a target of its sandbox.
    // Every other namespace's /dev/shm (services, hostIPC pods) is the node's, not the
    // pod's: neither the per-mount superblock of tmpfs nor the subPath may make it a copy.
    const SUB: &str = "/k/pods/u1/volume-subpaths";
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:60 / /dev/shm rw - tmpfs shm rw\n\
               3 1 0:60 / /k/pods/u1/volume-subpaths/dev/app/0 rw - tmpfs shm rw\n";
    let service = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                   2 1 0:60 / /dev/shm rw - tmpfs shm rw\n";
    let namespaces = [Ns(1, true, true, own), Ns(2, false, true, service)];
    let scan = scan_of(&[SUB], &[], &namespaces);
    assert_eq!(
        matched(&scan),
        vec![(1, format!("{SUB}/dev/app/0"), Match::Path)],
        "the service's /dev/shm is no holder"
    );
    assert!(
        scan.detail_notes.iter().any(|n| n.contains("/dev/shm")),
        "{:?}",
        scan.detail_notes
    );
    // The same bind where the node no longer mounts the tmpfs elsewhere: a subPath still
    // says nothing about what it binds, and the note says why.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               3 1 0:60 / /k/pods/u1/volume-subpaths/dev/app/0 rw - tmpfs shm rw\n";
    let agent = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                 2 1 0:60 / /host/k/pods/u1/volume-subpaths/dev/app/0 rw - tmpfs shm rw\n\
                 4 1 0:60 / /dev/shm rw - tmpfs shm rw\n";
    let namespaces = [Ns(1, true, true, own), Ns(2, false, true, agent)];
    let scan = scan_with(&[SUB], &[], &["/k/pods/*/volume-subpaths"], &namespaces);
    assert_eq!(
        matched(&scan),
        vec![(1, format!("{SUB}/dev/app/0"), Match::Path)]
    );
    assert!(
        scan.detail_notes.iter().any(|n| n.contains("by path only")),
        "{:?}",
        scan.detail_notes
    );
    // Without the pattern the agent's copies would be matched: the pattern is what holds.
    let scan = scan_of(&[SUB], &[], &namespaces);
    assert!(matched(&scan).iter().any(|(ns, ..)| *ns == 2));
    // Same-path copies stay found: a namespace copied from the host holds the subPath.
    let copy = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                3 1 0:60 / /k/pods/u1/volume-subpaths/dev/app/0 rw - tmpfs shm rw\n";
    let scan = scan_with(
        &[SUB],
        &[],
        &["/k/pods/*/volume-subpaths"],
        &[Ns(1, true, true, own), Ns(3, false, true, copy)],
    );
    assert!(matched(&scan).contains(&(3, format!("{SUB}/dev/app/0"), Match::Path)));
}

#[test]
fn a_subpath_refuses_its_identity_whichever_seed_comes_first() {
    // The same tmpfs root at a pod's volume (seen first) and bound by a subPath: the
    // subPath's veto holds, so the agent's copy at another path is no holder.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:70 / /k/pods/u1/volumes/v rw - tmpfs t rw\n\
               3 1 0:70 / /k/pods/u1/volume-subpaths/v/c/0 rw - tmpfs t rw\n";
    let agent = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                 4 1 0:70 / /host/elsewhere rw - tmpfs t rw\n";
    let scan = scan_with(
        &["/k/pods/u1"],
        &[],
        &["/k/pods/*/volume-subpaths"],
        &[Ns(1, true, true, own), Ns(2, false, true, agent)],
    );
    assert!(
        !matched(&scan).iter().any(|(ns, ..)| *ns == 2),
        "{:?}",
        matched(&scan)
    );
}

#[test]
fn a_tmpfs_the_trusted_view_mounts_outside_the_targets_is_no_identity() {
    // A pod's emptyDir target is a bind of a tmpfs that the node also mounts at /run/user/1000
    // (root /): that is the node's tmpfs, whose copies in sessions are not the volume's.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:61 / /run/user/1000 rw - tmpfs tmpfs rw\n\
               3 1 0:61 / /d/l/abc/merged rw - tmpfs tmpfs rw\n";
    let session = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                   2 1 0:61 / /run/user/1000 rw - tmpfs tmpfs rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, session)],
    );
    assert_eq!(matched(&scan), vec![(1, T.into(), Match::Path)]);
    // An overlay too: a bind of another container's rootfs is that container's.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:50 / /d/l/other/merged rw - overlay overlay rw\n\
               3 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let service = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                   2 1 0:50 / /srv/view rw - overlay overlay rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, service)],
    );
    assert_eq!(matched(&scan), vec![(1, T.into(), Match::Path)]);
}

#[test]
fn mounts_inside_a_copy_go_with_it_but_not_inside_a_namespace_root() {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let holder = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n\
                  3 2 0:70 / /d/l/abc/merged/proc rw - proc proc rw\n";
    // A container running on the layer: its root is the layer, and everything in its
    // namespace is "inside" it.
    let container = "20 19 0:50 / / rw - overlay overlay rw\n\
                     21 20 0:71 / /proc rw - proc proc rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[
            Ns(1, true, true, own),
            Ns(2, false, true, holder),
            Ns(3, false, true, container),
        ],
    );
    let m = matched(&scan);
    assert!(m.contains(&(2, "/d/l/abc/merged/proc".into(), Match::Path)));
    assert!(m.contains(&(3, "/".into(), Match::Identity)));
    assert!(
        !m.contains(&(3, "/proc".into(), Match::InsideCopy)),
        "{m:?}"
    );
}

/// The plan's steps as `(namespace inode, mount id, kept?)`.
pub(super) fn steps(scan: &Scan, scope: Scope) -> Vec<(u64, u64, bool)> {
    let mut v: Vec<_> = release::plan(scan, scope)
        .iter()
        .flat_map(|p| p.actions.iter())
        .map(|a| {
            let h = &scan.holders[a.holder];
            (
                scan.namespaces[h.ns].ns.inode,
                h.mount.id,
                matches!(a.step, Step::Keep { .. }),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn planning_keeps_what_it_must() {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let holder = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n\
                  3 2 0:70 / /d/l/abc/merged/sub rw - tmpfs t rw\n";
    let mut scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, holder)],
    );
    // mntreap's own namespace is kept by default; the foreign copy and its child go.
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 2, true), (2, 2, false), (2, 3, false)]
    );
    // A kept child keeps its parents: the child is some process's root.
    let child = scan.holders.iter().position(|h| h.mount.id == 3).unwrap();
    scan.holders[child].in_use = Some(InUse::ProcessRoot { pids: vec![42] });
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 2, true), (2, 2, true), (2, 3, true)]
    );
    // A protected namespace keeps its copies, --everywhere releases them.
    scan.holders[child].in_use = None;
    let protect = Scope {
        everywhere: false,
        protected: Some(vec![(2, "runtime".into())]),
        workloads: Vec::new(),
        copy_roots: Vec::new(),
    };
    assert_eq!(
        steps(&scan, protect),
        vec![(1, 2, false), (2, 2, true), (2, 3, true)]
    );
    let everywhere = Scope {
        everywhere: true,
        protected: None,
        workloads: Vec::new(),
        copy_roots: Vec::new(),
    };
    assert!(steps(&scan, everywhere).iter().all(|s| !s.2));
    // Pins detach instead of unmounting.
    scan.holders[child].pins = vec![Pin {
        pid: 7,
        via: crate::engine::namespace::PinVia::Cwd,
    }];
    let plan = release::plan(&scan, Scope::default());
    assert!(plan.iter().flat_map(|p| &p.actions).any(|a| {
        scan.holders[a.holder].mount.id == 3 && matches!(a.step, Step::Detach { .. })
    }));
}

#[test]
fn an_unmount_that_would_propagate_to_a_copy_kept_elsewhere_is_refused() {
    // Both namespaces share /d (peer group 5): unmounting under it in one propagates to
    // the other, where the copy is mntreap's own and kept.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:40 / /d rw shared:5 - tmpfs d rw\n\
               3 2 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let holder = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  12 1 0:40 / /d rw shared:5 - tmpfs d rw\n\
                  13 12 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, holder)],
    );
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 3, true), (2, 13, true)]
    );
}

#[test]
fn in_a_machine_whose_peers_may_live_outside_no_unmount_under_a_shared_parent() {
    // The holder's /d is shared (peer group 7) and no namespace in view has a peer of it:
    // with the whole host in view the unmount propagates nowhere kept, but in a machine
    // container whose manager may have left a peer outside, where it lands is unknown.
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               3 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let holder = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  12 1 0:40 / /d rw shared:7 - tmpfs d rw\n\
                  13 12 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let mut scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, holder)],
    );
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 3, true), (2, 13, false)]
    );
    scan.peers_unseen = Some("a peer group may have members outside".into());
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 3, true), (2, 13, true)]
    );
}

#[test]
fn a_namespace_with_no_process_is_released_only_when_a_pin_in_view_accounts_for_it() {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               3 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let mut scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, own)],
    );
    scan.namespaces[1].ns.via = crate::engine::namespace::FoundVia::KernelList;
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 3, true), (2, 3, true)],
        "no process, no pin: kept"
    );
    scan.namespaces[1]
        .ns
        .pinned_by
        .push(crate::engine::namespace::NsPin::Bind {
            mnt_ns: 1,
            path: "/run/snapd/ns/app.mnt".into(),
        });
    assert_eq!(
        steps(&scan, Scope::default()),
        vec![(1, 3, true), (2, 3, false)],
        "pinned by a bind in view: released"
    );
}

#[test]
fn a_failed_recheck_reports_what_the_actions_did_not_remove() {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let holder = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  2 1 0:50 / /d/l/abc/merged rw - overlay overlay rw\n";
    let scan = scan_of(
        &[T],
        &[],
        &[Ns(1, true, true, own), Ns(2, false, true, holder)],
    );
    let results = vec![
        release::ActionResult {
            holder: 0,
            outcome: release::Outcome::Kept {
                reason: "own".into(),
            },
        },
        release::ActionResult {
            holder: 1,
            outcome: release::Outcome::Unmounted,
        },
    ];
    let left = release::not_removed_ids(&scan, &results);
    let h0 = &scan.holders[0];
    assert_eq!(left.len(), 1);
    assert!(left.contains(&(h0.ns, h0.mount.id)));
}

#[test]
fn a_signed_overlay_at_a_namespace_root_still_refuses_its_identity() {
    // A running container: its root is the layer's overlay (signed: the host's user
    // namespace owns it), so the layer's filesystem is that container's `/`, and copies of
    // it elsewhere are live views, not leaks. A namespace whose signatures are never read
    // (its own user namespace) holds an unsigned copy: not matched by identity.
    let up = "upperdir=/d/l/abc/diff";
    let own = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         2 1 0:50 / {T} rw - overlay overlay rw,lowerdir=/d/l/x,{up},workdir=/d/l/abc/work\n"
    );
    let container = format!(
        "10 9 0:50 / / rw - overlay overlay rw,lowerdir=/d/l/x,{up},workdir=/d/l/abc/work\n"
    );
    let userns = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
                  7 1 0:50 / /host/d/l/abc/merged rw - overlay overlay rw\n";
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let scan = super::fixture::scan_signed(
        &[T],
        &["/d/l/abc/diff"],
        &[
            Ns(1, true, true, leak(own)),
            Ns(2, false, true, leak(container)),
            Ns(3, false, false, userns),
        ],
    );
    assert!(
        !matched(&scan).iter().any(|(ns, _, _)| *ns == 3),
        "{:?}",
        matched(&scan)
    );
    assert!(identity_refused(&scan), "{:?}", scan.detail_notes);
}

#[test]
fn a_container_on_the_layer_is_reported_at_its_root_wherever_the_root_is_listed() {
    // The layer (a tmpfs at the target) is also a running container's `/`: its identity is
    // refused, and that root is reported as a holder (kept), whether its namespace lists
    // the root mount first or after a mount on it (a move, a pivot_root).
    let own = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         2 1 0:50 / {T} rw - tmpfs tmpfs rw\n"
    );
    let own: &'static str = Box::leak(own.into_boxed_str());
    for container in [
        "10 9 0:50 / / rw - tmpfs tmpfs rw\n11 10 0:51 / /proc rw - proc proc rw\n",
        "11 10 0:51 / /proc rw - proc proc rw\n10 9 0:50 / / rw - tmpfs tmpfs rw\n",
    ] {
        let scan = scan_of(
            &[T],
            &[],
            &[Ns(1, true, true, own), Ns(2, false, true, container)],
        );
        assert_eq!(
            matched(&scan),
            vec![(1, T.into(), Match::Path), (2, "/".into(), Match::Identity)],
            "{container}"
        );
        // Refused, not accepted: the container's root has the layer's identity.
        assert!(
            identity_refused(&scan),
            "{container}: {:?}",
            scan.detail_notes
        );
    }
}

/// Whether the scan refused a seed's identity because its filesystem is mounted elsewhere.
fn identity_refused(scan: &Scan) -> bool {
    scan.detail_notes
        .iter()
        .any(|n| n.contains("not private to the target"))
}

#[test]
fn identities_match_alike_whether_the_keys_are_few_or_many() {
    // Nine layers in mntreap's own view, each copied at another path in an agent's view:
    // one target at a time (keys compared as a list) and all nine (hashed) find the same.
    let layer = |k: usize| format!("/d/l/t{k}/merged");
    let mut own = String::from("1 0 254:0 / / rw - ext4 /dev/vda rw\n");
    let mut agent = own.clone();
    for k in 0..9 {
        own.push_str(&format!(
            "{} 1 0:{} / {} rw - overlay overlay rw\n",
            k + 2,
            k + 50,
            layer(k)
        ));
        agent.push_str(&format!(
            "{} 1 0:{} / /host{} rw - overlay overlay rw\n",
            k + 20,
            k + 50,
            layer(k)
        ));
    }
    agent.push_str("40 1 0:99 / /host/d/l/t0/other rw - tmpfs unrelated rw\n");
    let (own, agent): (&'static str, &'static str) = (String::leak(own), String::leak(agent));
    let namespaces = || [Ns(1, true, true, own), Ns(2, false, true, agent)];
    let layers: Vec<String> = (0..9).map(layer).collect();
    let targets: Vec<&str> = layers.iter().map(String::as_str).collect();
    let all = matched(&scan_of(&targets, &[], &namespaces()));
    let mut each: Vec<(u64, String, Match)> = targets
        .iter()
        .flat_map(|&t| matched(&scan_of(&[t], &[], &namespaces())))
        .collect();
    each.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(all, each);
    let copies = all
        .iter()
        .filter(|(ns, _, how)| *ns == 2 && *how == Match::Identity);
    assert_eq!(copies.count(), 9, "{all:?}");
}
