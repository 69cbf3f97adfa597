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

/// A CSI volume (7:3) after kubelet unstaged it on the node, and who has it: a service's
/// copy of the globalmount (ns 2) and, with `service_own`, its own mount at /srv/backup;
/// an agent container's copy under its bind of the node's `/` (3); with `workload`, a
/// workload's volume at the place it asked for, a mount inside it and one of its own (4);
/// with `unknown`, an unknown container holding it (5). The node (1) has an unrelated
/// filesystem at a kubelet path, which is no holder.
fn scene(service_own: bool, workload: bool, unknown: bool) -> Scan {
    let own = "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
               3 1 0:77 / /var/lib/kubelet/pods/u/volumes/x rw - tmpfs t rw\n";
    let mut service = format!(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         4 1 7:3 / {G} rw - ext4 /dev/loop3 rw\n"
    );
    if service_own {
        service.push_str("5 1 7:3 / /srv/backup rw - ext4 /dev/loop3 rw\n");
    }
    let agent = format!(
        "10 9 0:60 / / rw - overlay overlay rw\n\
         11 10 254:0 / /host rw - ext4 /dev/vda rw\n\
         12 11 7:3 / /host{G} rw - ext4 /dev/loop3 rw\n"
    );
    let mut namespaces = vec![
        Ns(1, true, true, own),
        Ns(2, false, true, leak(service)),
        Ns(3, false, true, leak(agent)),
    ];
    if workload {
        namespaces.push(Ns(
            4,
            false,
            true,
            "20 19 0:61 / / rw - overlay overlay rw\n\
             21 20 7:3 /sub /data rw - ext4 /dev/loop3 rw\n\
             22 21 7:3 /sub/x /data/x rw - ext4 /dev/loop3 rw\n\
             23 20 7:3 / /stray rw - ext4 /dev/loop3 rw\n",
        ));
    }
    if unknown {
        namespaces.push(Ns(
            5,
            false,
            true,
            "30 29 0:62 / / rw - overlay overlay rw\n\
             31 30 7:3 / /data rw - ext4 /dev/loop3 rw\n",
        ));
    }
    super::fixture::scan_of_devices(&[(7, 3)], &namespaces)
}

fn unstaged_csi_volume() -> Scan {
    scene(true, true, true)
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
                pid: 3,
                start: 1,
                name: "container agent".into(),
                mounts: Some(vec![mount("/host", "/")]),
            },
            release::Workload {
                ns: 4,
                pid: 4,
                start: 1,
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
    // Only copies left: the service's under kubelet's directory, the agent's carried in
    // by its bind of `/`. Both go.
    let scan = scene(false, false, false);
    assert_eq!(
        steps(&scan, described(web())),
        vec![(2, 4, false), (3, 12, false)]
    );
    // An agent bind of a directory inside kubelet's (not above it) carries nothing in:
    // its mount is its own, a use, and then the service's copy frees nothing either.
    let mut narrow = described(web());
    narrow.workloads[0].mounts = Some(vec![mount("/host", "/var/lib/kubelet/pods")]);
    assert_eq!(steps(&scan, narrow), vec![(2, 4, true), (3, 12, true)]);
    // A trailing slash on a recorded path changes nothing.
    let mut slashed = described(web());
    slashed.workloads[0].mounts = Some(vec![mount("/host/", "/")]);
    assert_eq!(steps(&scan, slashed), vec![(2, 4, false), (3, 12, false)]);
}

#[test]
fn every_use_is_kept_and_keeps_the_copies_it_makes_pointless() {
    let scan = unstaged_csi_volume();
    // The workload's volume, what is inside it and its own mount, the unknown container's
    // and the service's own mount are uses; the copies then free nothing and stay.
    assert!(steps(&scan, described(web())).iter().all(|s| s.2));
    for (id, says) in [
        (21, "container web mounted it at /data"),
        (23, "no bind of the node's directories explains"),
        (31, "no runtime record"),
        (5, "outside the runtimes' and kubelet's directories"),
        (4, "the device stays in use by mount"),
        (12, "releasing this copy would free nothing"),
    ] {
        let step = step_of(&scan, described(web()), id);
        assert!(
            matches!(&step, Step::Keep { reason } if reason.contains(says)),
            "{id}: {step:?}"
        );
    }
    // Any one use is enough.
    for (service_own, workload, unknown) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let scan = scene(service_own, workload, unknown);
        assert!(
            steps(&scan, described(web())).iter().all(|s| s.2),
            "{service_own} {workload} {unknown}"
        );
    }
}

#[test]
fn a_container_no_record_explains_is_a_use() {
    let scan = scene(false, false, false);
    let kept_for = |scope: Scope, says: &str| {
        assert!(steps(&scan, scope.clone()).iter().all(|s| s.2));
        let step = step_of(&scan, scope, 12);
        assert!(
            matches!(&step, Step::Keep { reason } if reason.contains(says)),
            "{step:?}"
        );
    };
    let mut unreadable = described(web());
    unreadable.workloads[0].mounts = None;
    kept_for(unreadable, "records do not give");
    let mut twice = described(web());
    twice.workloads[1].ns = 3;
    kept_for(twice, "several");
    // Without a runtime no container is described.
    kept_for(
        Scope {
            copy_roots: roots(),
            ..Scope::default()
        },
        "no runtime record",
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
    assert_eq!(
        steps(&scan, scope(true)),
        vec![(1, 2, false), (2, 4, false)]
    );
}
