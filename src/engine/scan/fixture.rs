//! Scans over plain data, for tests of the rules: mount tables written as mountinfo text,
//! namespaces that are descriptors of `/dev/null`. No root, no real namespaces.

use std::path::PathBuf;

use super::matching::match_holders;
use super::*;
use crate::engine::namespace::Namespace;

/// A namespace of the fixture: its inode, whether it is mntreap's own, whether the host's
/// user namespace owns it, and its mount table as mountinfo.
pub(crate) struct Ns(pub u64, pub bool, pub bool, pub &'static str);

pub(crate) fn scan_of(targets: &[&str], trusted: &[u64], namespaces: &[Ns]) -> Scan {
    scan_with(targets, trusted, &[], namespaces)
}

/// [`scan_of`] with [`Scan::no_identity`] patterns.
pub(crate) fn scan_with(
    targets: &[&str],
    trusted: &[u64],
    no_identity: &[&str],
    namespaces: &[Ns],
) -> Scan {
    scan_full(targets, &[], trusted, no_identity, namespaces)
}

/// [`scan_of`] with layer signatures: overlays with one of these upperdirs, in namespaces
/// the host's user namespace owns, are seeds wherever they are mounted (as
/// [`super::read_namespaces`] reads them).
pub(crate) fn scan_signed(targets: &[&str], signatures: &[&str], namespaces: &[Ns]) -> Scan {
    let signatures: Vec<Vec<u8>> = signatures.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut scan = scan_full(targets, &[], &[], &[], &[]);
    let target_bytes = target_bytes(&scan.targets);
    scan.namespaces = namespaces
        .iter()
        .map(|Ns(inode, own, host_userns, text)| {
            let signed: &[Vec<u8>] = if *host_userns { &signatures } else { &[] };
            let table =
                crate::engine::mountinfo::parse_with_signatures(text.as_bytes(), signed).unwrap();
            let seeds = (0..table.mounts.len())
                .filter(|&i| {
                    under_any(table.mount_point(&table.mounts[i]), &target_bytes)
                        || table.mounts[i].layer_signature.is_some()
                })
                .collect();
            namespace_of(*inode, *own, *host_userns, table, seeds)
        })
        .collect();
    match_holders(&mut scan);
    scan
}

fn namespace_of(
    inode: u64,
    own: bool,
    host_userns: bool,
    table: crate::engine::table::MountTable,
    seeds: Vec<usize>,
) -> ScannedNamespace {
    ScannedNamespace {
        ns: Namespace {
            inode,
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            pid_used: 0,
            pids: Vec::new(),
            own,
            host_userns,
            via: crate::engine::namespace::FoundVia::Process,
            pinned_by: Vec::new(),
        },
        table: Some(table),
        seeds,
        bare: Vec::new(),
        processes: Vec::new(),
        host_rooted: None,
        origin: crate::engine::index::Origin::Read,
    }
}

/// A scan for block devices' filesystems ([`Scan::devices`]) only.
pub(crate) fn scan_of_devices(devices: &[(u32, u32)], namespaces: &[Ns]) -> Scan {
    scan_full(&[], devices, &[], &[], namespaces)
}

fn scan_full(
    targets: &[&str],
    devices: &[(u32, u32)],
    trusted: &[u64],
    no_identity: &[&str],
    namespaces: &[Ns],
) -> Scan {
    let targets: Vec<PathBuf> = targets.iter().map(PathBuf::from).collect();
    let target_bytes = target_bytes(&targets);
    let namespaces = namespaces
        .iter()
        .map(|Ns(inode, own, host_userns, text)| {
            let table = crate::engine::mountinfo::parse(text.as_bytes()).unwrap();
            let seeds = (0..table.mounts.len())
                .filter(|&i| under_any(table.mount_point(&table.mounts[i]), &target_bytes))
                .collect();
            namespace_of(*inode, *own, *host_userns, table, seeds)
        })
        .collect();
    let mut scan = Scan {
        denied: Vec::new(),
        blind: None,
        peers_unseen: None,
        cgroups_unknown: None,
        backend: crate::engine::source::Backend::Mountinfo,
        targets,
        devices: devices.to_vec(),
        reference_ns: None,
        layer_signatures: Vec::new(),
        paths_only: false,
        trusted_namespaces: trusted.to_vec(),
        no_identity: no_identity.iter().map(PathBuf::from).collect(),
        namespaces,
        holders: Vec::new(),
        notes: Vec::new(),
        detail_notes: Vec::new(),
        unreachable: Vec::new(),
        index: None,
    };
    match_holders(&mut scan);
    scan
}
