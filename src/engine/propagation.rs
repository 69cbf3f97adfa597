//! The propagation tree of peer groups across every table of a scan: which groups an
//! event on a member of a group reaches (shared subtrees, kernel docs). A slave that is
//! also shared in a group of its own passes what it receives on to that group, so the
//! tree goes as deep as such slaves go; the kernel's `propagation_next` walks all of it.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;

use crate::engine::table::MountTable;

/// For each peer group, the groups of its slaves that are shared again: built in one
/// pass over the tables, then walked from any start without reading them again.
#[derive(Debug, Default)]
pub struct PropagationTree {
    shared_slaves: HashMap<NonZeroU64, Vec<NonZeroU64>>,
}

impl PropagationTree {
    pub fn of<'a>(tables: impl IntoIterator<Item = &'a MountTable>) -> PropagationTree {
        let mut shared_slaves: HashMap<NonZeroU64, Vec<NonZeroU64>> = HashMap::new();
        for table in tables {
            for m in &table.mounts {
                if let (Some(master), Some(own)) = (m.master, m.peer_group)
                    && master != own
                {
                    shared_slaves.entry(master).or_default().push(own);
                }
            }
        }
        // One entry per member of a slave group: each group once.
        for groups in shared_slaves.values_mut() {
            groups.sort_unstable();
            groups.dedup();
        }
        PropagationTree { shared_slaves }
    }

    /// Every group an event on a member of one of `from` reaches, `from` included.
    pub fn reach(&self, from: impl IntoIterator<Item = NonZeroU64>) -> HashSet<NonZeroU64> {
        let mut reached: HashSet<NonZeroU64> = HashSet::new();
        let mut pending: Vec<NonZeroU64> =
            from.into_iter().filter(|g| reached.insert(*g)).collect();
        while let Some(g) = pending.pop() {
            for &down in self.shared_slaves.get(&g).into_iter().flatten() {
                if reached.insert(down) {
                    pending.push(down);
                }
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u64) -> Option<NonZeroU64> {
        NonZeroU64::new(n)
    }

    fn table(mounts: &[(Option<NonZeroU64>, Option<NonZeroU64>)]) -> MountTable {
        let pairs: Vec<(u64, u64)> = (1..=mounts.len() as u64).map(|id| (id, 1)).collect();
        let mut table = MountTable::tree_of(&pairs);
        for (m, &(peer_group, master)) in table.mounts.iter_mut().zip(mounts) {
            m.peer_group = peer_group;
            m.master = master;
        }
        table
    }

    #[test]
    fn reaches_slaves_of_slaves_across_tables_and_stops_at_private_slaves() {
        // 1 -> 2 (a shared slave) in one table, 2 -> 3 -> 4 in another; 5 is a slave of
        // 1 that is not shared, 6 an unrelated group, and 4 -> 2 closes a cycle.
        let a = table(&[(group(1), None), (group(2), group(1)), (None, group(1))]);
        let b = table(&[
            (group(3), group(2)),
            (group(4), group(3)),
            (group(2), group(4)),
            (group(6), None),
        ]);
        let tree = PropagationTree::of([&a, &b]);
        let reached = tree.reach(group(1));
        assert_eq!(reached, [1, 2, 3, 4].map(|g| group(g).unwrap()).into());
        assert_eq!(
            tree.reach(group(3)),
            [2, 3, 4].map(|g| group(g).unwrap()).into()
        );
        assert_eq!(tree.reach(group(6)), [group(6).unwrap()].into());
    }
}
