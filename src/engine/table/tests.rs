use super::*;

#[test]
fn patterns_match_whole_components_with_one_component_wildcards() {
    let p = b"/k/pods/*/volume-subpaths";
    assert!(path_is_under_pattern(b"/k/pods/u1/volume-subpaths", p));
    assert!(path_is_under_pattern(
        b"/k/pods/u1/volume-subpaths/v/c/0",
        p
    ));
    assert!(!path_is_under_pattern(b"/k/pods/u1/volumes/x", p));
    assert!(!path_is_under_pattern(b"/k/pods/u1", p));
    assert!(!path_is_under_pattern(b"/k/pods/u1/volume-subpaths2/x", p));
    assert!(!path_is_under_pattern(b"/k/pods/volume-subpaths", p));
    assert!(!path_is_under_pattern(b"k/pods/u1/volume-subpaths", p));
    assert!(path_is_under_pattern(b"/k/x", b"/k"));
}

#[test]
fn under_compares_whole_components() {
    assert!(path_is_under(b"/var/lib/docker/x", b"/var/lib/docker"));
    assert!(path_is_under(b"/var/lib/docker", b"/var/lib/docker"));
    assert!(path_is_under(b"/var/lib/docker", b"/var/lib/docker/"));
    assert!(!path_is_under(b"/var/lib/docker-init", b"/var/lib/docker"));
    assert!(!path_is_under(
        b"/var/lib/docker0/merged",
        b"/var/lib/docker"
    ));
    assert!(!path_is_under(b"/var/lib", b"/var/lib/docker"));
    assert!(path_is_under(b"/x", b"/"));
}

fn table_of(mounts: &[(&str, &str)]) -> MountTable {
    let mut t = MountTable::default();
    for (i, (root, point)) in mounts.iter().enumerate() {
        let root = t.intern(root.as_bytes());
        let mount_point = t.intern(point.as_bytes());
        let fs_type = t.intern(b"tmpfs");
        t.mounts.push(Mount {
            id: i as u64 + 1,
            parent_id: 1,
            unique_id: None,
            dev: (0, 1),
            peer_group: None,
            master: None,
            root,
            mount_point,
            fs_type,
            source: Span::default(),
            has_strings: true,
            has_root: true,
            layer_signature: None,
        });
    }
    t
}

/// Each mount's root, mount point, fs type and source.
fn strings(t: &MountTable) -> Vec<[Vec<u8>; 4]> {
    t.mounts
        .iter()
        .map(|m| [m.root, m.mount_point, m.fs_type, m.source].map(|s| t.str(s).to_vec()))
        .collect()
}

#[test]
fn shared_tables_read_their_own_strings_and_keep_each_once() {
    let mounts = [
        ("/", "/"),
        ("/src/1", "/x/overlay2/aa/merged"),
        ("/a", "/b"),
    ];
    let (mut a, mut b) = (table_of(&mounts), table_of(&mounts[..2]));
    let (want_a, want_b) = (strings(&a), strings(&b));
    let mut pool = StringPool::default();
    assert!(pool.share(&mut a));
    assert!(pool.share(&mut b));
    pool.compact_and_publish(vec![&mut a, &mut b]);
    assert_eq!(strings(&a), want_a);
    assert_eq!(strings(&b), want_b);
    assert_eq!(a.arena.capacity() + b.arena.capacity(), 0);
    // "/", "/src/1", "/x/overlay2/aa/merged", "/a", "/b", "tmpfs": once each.
    assert_eq!(pool.len(), 1 + 6 + 21 + 2 + 2 + 5);
    // A kept table given a string later (a lazy read) has both kinds of span.
    let late = a.intern(b"/late");
    a.mounts[2].source = late;
    assert_eq!(a.str(a.mounts[2].source), b"/late");
    assert_eq!(a.root(&a.mounts[1]), b"/src/1");
    assert!(pool.share(&mut a));
    pool.compact_and_publish(vec![&mut a, &mut b]);
    assert_eq!(a.str(a.mounts[2].source), b"/late");
    assert_eq!(strings(&b), want_b);
}

#[test]
fn the_pool_is_built_again_without_the_strings_of_tables_gone() {
    let mut pool = StringPool::default();
    let mut stays = table_of(&[("/", "/"), ("/keep", "/kept/here")]);
    let want = strings(&stays);
    assert!(pool.share(&mut stays));
    pool.compact_and_publish(vec![&mut stays]);
    // Namespaces that come and go, each with strings of its own (new containers).
    for round in 0..40 {
        let point = format!("/gone/{round}/{}", "x".repeat(64 * 1024));
        let mut gone = table_of(&[(point.as_str(), point.as_str())]);
        assert!(pool.share(&mut gone));
        pool.compact_and_publish(vec![&mut stays, &mut gone]);
        assert_eq!(strings(&gone)[0][1], point.as_bytes());
        pool.compact_and_publish(vec![&mut stays]);
        assert_eq!(strings(&stays), want, "round {round}");
    }
    // 40 x 64 KiB went through; what is left is bounded by the rebuild rule.
    assert!(pool.len() <= (1 << 20) + 2 * 64 * 1024, "{}", pool.len());
}

#[test]
fn a_pool_built_at_over_half_its_limit_is_still_built_again() {
    let mut pool = StringPool {
        limit: 4 << 20,
        ..StringPool::default()
    };
    let live = "l".repeat(2200 << 10);
    let mut stays = table_of(&[("/", live.as_str())]);
    assert!(pool.share(&mut stays));
    pool.compact_and_publish(vec![&mut stays]);
    for round in 0..20 {
        let point = format!("/gone/{round}/{}", "x".repeat(300 << 10));
        let mut gone = table_of(&[(point.as_str(), point.as_str())]);
        assert!(pool.share(&mut gone), "round {round}: {}", pool.len());
        pool.compact_and_publish(vec![&mut stays, &mut gone]);
        pool.compact_and_publish(vec![&mut stays]);
    }
    assert_eq!(strings(&stays)[0][1], live.as_bytes());
}

#[test]
fn a_table_lent_out_while_the_pool_was_built_again_is_read_where_it_points() {
    let mut pool = StringPool::default();
    let mut lent = table_of(&[("/", "/"), ("/lent", "/lent/at")]);
    let want = strings(&lent);
    assert!(pool.share(&mut lent));
    pool.compact_and_publish(vec![&mut lent]);
    // While `lent` is out, other tables' strings grow the pool past its rebuild size,
    // and it is built again from them alone: the offsets `lent` has mean other strings.
    let mut others = table_of(&[("/o", "/other"), (&"y".repeat(3 << 20), "/big")]);
    assert!(pool.share(&mut others));
    pool.compact_and_publish(vec![&mut others]);
    assert_eq!(strings(&lent), want, "its own build still reads");
    assert!(pool.share(&mut lent));
    pool.compact_and_publish(vec![&mut lent, &mut others]);
    assert_eq!(strings(&lent), want);
}

#[test]
fn tables_past_the_pools_reach_are_refused_or_left_where_they_read() {
    let mut pool = StringPool {
        limit: 3 << 20,
        ..StringPool::default()
    };
    // 1,200 mounts of one 1 KiB root: a fraction of the pool once, far more as a bound.
    let root = format!("/{}", "r".repeat(1023));
    let points: Vec<String> = (0..1200).map(|i| format!("/m/{i}")).collect();
    let many: Vec<(&str, &str)> = points.iter().map(|p| (root.as_str(), p.as_str())).collect();
    let mut dense = table_of(&many);
    let want = strings(&dense);
    assert!(pool.share(&mut dense));
    pool.compact_and_publish(vec![&mut dense]);
    let big = "b".repeat(1900 << 10);
    let mut wide = table_of(&[("/", big.as_str())]);
    assert!(pool.share(&mut wide));
    // Built again, `wide` first: `dense` might not fit beside it and keeps its build.
    pool.compact_and_publish(vec![&mut wide, &mut dense]);
    assert_eq!(strings(&dense), want);
    assert!(!pool.share(&mut dense), "refused, not asserted on");
    assert_eq!(strings(&dense), want, "a refused table is untouched");
    let huge = "h".repeat(2 << 20);
    let mut past = table_of(&[("/", huge.as_str())]);
    let want_past = strings(&past);
    assert!(!pool.share(&mut past));
    assert_eq!(strings(&past), want_past);
    assert!(pool.len() < 3 << 20);
}

#[test]
fn depth_follows_parents() {
    let t = MountTable::tree_of(&[(1, 0), (2, 1), (3, 2), (4, 1), (5, 3)]);
    let idx = t.index();
    let depths: Vec<u32> = (0..5).map(|i| t.depth(&idx, i)).collect();
    assert_eq!(depths, vec![0, 1, 2, 1, 3]);
    assert_eq!(t.root_mount(&idx), Some(0));
}

#[test]
fn root_position_is_root_mount_whatever_the_order() {
    for (pairs, want) in [
        (&[(1, 0), (2, 1), (3, 2)][..], Some(0)),
        // the root listed last (a pivot_root, a move): the first mount's parent is listed
        (&[(2, 1), (3, 2), (1, 0)][..], Some(2)),
        // the root's parent is itself (the initial namespace's rootfs)
        (&[(5, 9), (9, 9)][..], Some(1)),
        (&[(9, 9), (5, 9)][..], Some(0)),
        // a corrupt table with a cycle and no root
        (&[(1, 2), (2, 1)][..], None),
        (&[][..], None),
    ] {
        let t = MountTable::tree_of(pairs);
        assert_eq!(t.root_position(), want, "{pairs:?}");
        assert_eq!(t.root_position(), t.root_mount(&t.index()), "{pairs:?}");
    }
}

#[test]
fn mount_points_set_aside_for_a_scan_come_back_only_where_it_read_none() {
    let mut t = MountTable::tree_of(&[(1, 1), (2, 1), (3, 1)]);
    let kept = t.intern(b"/kept");
    t.mounts[1].mount_point = kept;
    t.mounts[2].has_strings = false;
    t.mounts[2].mount_point = Span::default();
    assert!(!t.mount_points_fresh(), "kept mount points may be stale");
    t.set_aside_mount_points();
    assert!(
        t.mount_points_fresh(),
        "the table itself says it was lent for a release"
    );
    for m in &t.mounts {
        assert!(!m.has_strings && m.has_root, "only the root stays known");
        assert_eq!(t.mount_point(m), b"", "no stale mount point can be read");
    }
    // The scan reads mount 1's strings again: the kernel's word stands.
    let now = t.intern(b"/renamed");
    (t.mounts[0].mount_point, t.mounts[0].has_strings) = (now, true);
    t.put_back_set_aside();
    assert!(!t.mount_points_fresh(), "kept again, as it was lent");
    let points: Vec<(&[u8], bool)> = t
        .mounts
        .iter()
        .map(|m| (t.mount_point(m), m.has_strings))
        .collect();
    assert_eq!(
        points,
        [
            (&b"/renamed"[..], true),
            (&b"/kept"[..], true),
            // Never read: nothing to put back.
            (&b""[..], false)
        ]
    );
}
