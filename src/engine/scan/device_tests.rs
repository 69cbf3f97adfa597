//! The device rule of a release (`--device`), table-driven over plain data: which mounts
//! of a device are copies a namespace carries by accident, and which may be a use.

use super::fixture::Ns;
use super::tests::steps;
use super::*;
use crate::engine::release::{self, Scope, Step};

const G: &str = "/var/lib/kubelet/plugins/kubernetes.io/csi/d/h/globalmount";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A CSI volume (7:3) after kubelet unstaged it on the node: a service's copy of the
/// globalmount (ns 2) and its own mount at /srv/backup; an agent container's copy under
/// its bind of the node's `/` (3); a workload's volume at the place it asked for, a mount
/// inside it and one of its own (4); an unknown container holding it (5); an unrelated
/// filesystem at a kubelet path on the node (1), which is no holder.
fn unstaged_csi_volume() -> Scan {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               3 1 0:77 / /var/lib/kubelet/pods/u/volumes/x rw - tmpfs t rw\n";
    let service = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         4 1 7:3 / {G} rw - ext4 /dev/loop3 rw\n\
         5 1 7:3 / /srv/backup rw - ext4 /dev/loop3 rw\n"
    );
    let agent = format!(
        "10 9 0:60 / / rw - overlay overlay rw\n\
         11 10 254:0 / /host rw - ext4 /dev/vda rw\n\
         12 11 7:3 / /host{G} rw - ext4 /dev/loop3 rw\n"
    );
    let workload = "20 19 0:61 / / rw - overlay overlay rw\n\
                    21 20 7:3 /sub /data rw - ext4 /dev/loop3 rw\n\
                    22 21 7:3 /sub/x /data/x rw - ext4 /dev/loop3 rw\n\
                    23 20 7:3 / /stray rw - ext4 /dev/loop3 rw\n";
    let unknown = "30 29 0:62 / / rw - overlay overlay rw\n\
                   31 30 7:3 / /data rw - ext4 /dev/loop3 rw\n";
    super::fixture::scan_of_devices(
        &[(7, 3)],
        &[
            Ns(1, true, true, own),
            Ns(2, false, true, leak(service)),
            Ns(3, false, true, leak(agent)),
            Ns(4, false, true, workload),
            Ns(5, false, true, unknown),
        ],
    )
}

fn mount(d: &str, s: &str) -> release::WorkloadMount {
    release::WorkloadMount {
        destination: d.as_bytes().to_vec(),
        source: s.as_bytes().to_vec(),
    }
}

fn roots() -> Vec<Vec<u8>> {
    vec![b"/var/lib/kubelet".to_vec(), b"/var/lib/docker".to_vec()]
}

/// The scope with the agent (`/host` a bind of `/`) and the workload `web` described.
fn described(web: Option<Vec<release::WorkloadMount>>) -> Scope {
    Scope {
        everywhere: false,
        protected: None,
        workloads: vec![
            release::Workload {
                ns: 3,
                name: "container agent".into(),
                mounts: Some(vec![mount("/host", "/")]),
            },
            release::Workload {
                ns: 4,
                name: "container web".into(),
                mounts: web,
            },
        ],
        copy_roots: roots(),
    }
}

fn web() -> Option<Vec<release::WorkloadMount>> {
    Some(vec![mount(
        "/data",
        "/var/lib/kubelet/pods/u/volumes/c/pv/mount",
    )])
}

fn step_of(scan: &Scan, scope: Scope, id: u64) -> Step {
    release::plan(scan, scope)
        .iter()
        .flat_map(|p| &p.actions)
        .find(|a| scan.holders[a.holder].mount.id == id)
        .map(|a| a.step.clone())
        .unwrap()
}

#[test]
fn every_mount_of_a_device_holds_it_wherever_it_is() {
    let scan = unstaged_csi_volume();
    let held: Vec<(u64, u64)> = scan
        .holders
        .iter()
        .map(|h| (scan.namespaces[h.ns].ns.inode, h.mount.id))
        .collect();
    assert_eq!(
        held,
        vec![(2, 4), (2, 5), (3, 12), (4, 21), (4, 22), (4, 23), (5, 31)]
    );
    assert!(scan.holders.iter().all(|h| h.matched == Match::Device));
    assert_eq!(scan.reference_ns, Some(0));
    let host_rooted: Vec<Option<bool>> = scan.namespaces.iter().map(|n| n.host_rooted).collect();
    assert_eq!(
        host_rooted,
        vec![None, Some(true), Some(false), Some(false), Some(false)]
    );
}

#[test]
fn only_copies_carried_in_by_accident_are_released() {
    let scan = unstaged_csi_volume();
    // Released: the service's copy under kubelet's directory and the agent's copy carried
    // in by its bind of `/`. Kept: the service's own mount elsewhere, the workload's
    // volume, what is inside it and its own mount, the unknown container's.
    assert_eq!(
        steps(&scan, described(web())),
        vec![
            (2, 4, false),
            (2, 5, true),
            (3, 12, false),
            (4, 21, true),
            (4, 22, true),
            (4, 23, true),
            (5, 31, true)
        ]
    );
    for (id, says) in [
        (21, "container web mounted it at /data"),
        (23, "no bind of the node's directories explains"),
        (31, "no runtime record"),
        (5, "outside the runtimes' and kubelet's directories"),
    ] {
        let step = step_of(&scan, described(web()), id);
        assert!(
            matches!(&step, Step::Keep { reason } if reason.contains(says)),
            "{id}: {step:?}"
        );
    }
    // An agent bind of a directory inside kubelet's (not above it) carries nothing in.
    let mut narrow = described(web());
    narrow.workloads[0].mounts = Some(vec![mount("/host", "/var/lib/kubelet/pods")]);
    assert!(matches!(step_of(&scan, narrow, 12), Step::Keep { .. }));
}

#[test]
fn a_container_no_record_explains_keeps_everything() {
    let scan = unstaged_csi_volume();
    // The runtime's records unreadable: everything in that container stays.
    assert!(
        steps(&scan, described(None))
            .iter()
            .filter(|s| s.0 == 4)
            .all(|s| s.2)
    );
    // Two containers naming one namespace: unknown, kept.
    let mut twice = described(web());
    twice.workloads[1].ns = 3;
    assert!(
        matches!(step_of(&scan, twice, 12), Step::Keep { reason } if reason.contains("several"))
    );
    // Without a runtime no container is described: only the service's copy goes.
    let bare = Scope {
        copy_roots: roots(),
        ..Scope::default()
    };
    assert_eq!(
        steps(&scan, bare)
            .into_iter()
            .filter(|s| !s.2)
            .collect::<Vec<_>>(),
        vec![(2, 4, false)]
    );
}

#[test]
fn a_device_copy_where_the_node_still_mounts_it_frees_nothing_and_stays() {
    let g = G;
    let own = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         2 1 7:3 / {g} rw - ext4 /dev/loop3 rw\n"
    );
    let service = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         4 1 7:3 / {g} rw - ext4 /dev/loop3 rw\n"
    );
    let scan = super::fixture::scan_of_devices(
        &[(7, 3)],
        &[
            Ns(1, true, true, leak(own)),
            Ns(2, false, true, leak(service)),
        ],
    );
    let scope = |everywhere| Scope {
        everywhere,
        copy_roots: vec![b"/var/lib/kubelet".to_vec()],
        ..Scope::default()
    };
    assert_eq!(steps(&scan, scope(false)), vec![(1, 2, true), (2, 4, true)]);
    // --everywhere takes the node's mount too, and then the copy frees the device.
    assert_eq!(steps(&scan, scope(true)), vec![(1, 2, false), (2, 4, true)]);
}
