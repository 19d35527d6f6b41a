//! What a bot sees: its reconstruction of the world at one tick.
//!
//! Its own module because both the client core (which builds views from snapshots) and a game's
//! brain (which reads them) need it, and neither should depend on the other for it.

use std::sync::Arc;
use zonescaler_shared::NetId;
use zonescaler_shared::protocol::ComponentBlob;
use zonescaler_shared::quant::QPos;

/// One entity as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewEntity {
    pub pos: QPos,
    /// Shared between the views of successive ticks: every snapshot starts from a copy of its
    /// baseline view, and components change rarely, so copying them would be most of a bot's
    /// work (it was a third of the swarm's CPU at 500 bots).
    pub components: Arc<[ComponentBlob]>,
}

/// The client's reconstruction of the world at one tick: the entities in view, by `NetId`.
///
/// A sorted vector rather than a map: the client starts every snapshot from a copy of its
/// baseline view and keeps dozens of views as baselines, so copying and dropping views is most
/// of a bot's work. As a `BTreeMap` (a few dozen node allocations per copy) that copying was
/// half of a 600-bot swarm's CPU in a crowd; a vector copies with one allocation, and the
/// snapshot's moved entries (named by their index in the baseline's sorted ids) index it
/// directly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Sorted by id, each id once.
    entries: Vec<(NetId, ViewEntity)>,
}

impl View {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &NetId) -> Option<&ViewEntity> {
        self.index_of(id).map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, id: &NetId) -> bool {
        self.index_of(id).is_some()
    }

    /// The entities in id order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&NetId, &ViewEntity)> + ExactSizeIterator {
        self.entries.iter().map(|(id, e)| (id, e))
    }

    /// The ids in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &NetId> + ExactSizeIterator {
        self.entries.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &ViewEntity> + ExactSizeIterator {
        self.entries.iter().map(|(_, e)| e)
    }

    fn index_of(&self, id: &NetId) -> Option<usize> {
        self.entries.binary_search_by_key(id, |(k, _)| *k).ok()
    }

    pub(crate) fn get_mut(&mut self, id: &NetId) -> Option<&mut ViewEntity> {
        self.index_of(id).map(|i| &mut self.entries[i].1)
    }

    /// The entity at `index` in id order (a snapshot's moved entries name them this way).
    pub(crate) fn at_mut(&mut self, index: usize) -> Option<&mut ViewEntity> {
        self.entries.get_mut(index).map(|(_, e)| e)
    }

    /// Drop every entity whose id is in `ids` (sorted or not).
    pub(crate) fn remove_all(&mut self, ids: &mut [NetId]) {
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        self.entries
            .retain(|(id, _)| ids.binary_search(id).is_err());
    }

    /// Insert or replace every entity in `new`; the last of an id given twice wins. The new ids
    /// are merged in from the back in one pass, in place: the view grows once, and nothing it
    /// holds is copied twice.
    pub(crate) fn upsert_all(&mut self, mut new: Vec<(NetId, ViewEntity)>) {
        if new.is_empty() {
            return;
        }
        // Stable, so of an id given twice the later copy comes last; keep that one.
        new.sort_by_key(|(id, _)| *id);
        let mut unique: Vec<(NetId, ViewEntity)> = Vec::with_capacity(new.len());
        for (id, e) in new {
            match unique.last_mut() {
                Some(last) if last.0 == id => last.1 = e,
                _ => unique.push((id, e)),
            }
        }
        let mut added = Vec::new();
        for (id, e) in unique {
            match self.index_of(&id) {
                Some(i) => self.entries[i].1 = e,
                None => added.push((id, e)),
            }
        }
        if added.is_empty() {
            return;
        }
        // Both sorted: merge `added` into `entries` from the back.
        let old_len = self.entries.len();
        let fill = added[0].clone();
        self.entries.resize(old_len + added.len(), fill);
        let (mut i, mut w) = (old_len, self.entries.len());
        while let Some(next) = added.pop() {
            while i > 0 && self.entries[i - 1].0 > next.0 {
                i -= 1;
                w -= 1;
                self.entries.swap(i, w);
            }
            w -= 1;
            self.entries[w] = next;
        }
    }
}

impl<'a> IntoIterator for &'a View {
    type Item = (&'a NetId, &'a ViewEntity);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (NetId, ViewEntity)>,
        fn(&'a (NetId, ViewEntity)) -> (&'a NetId, &'a ViewEntity),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(id, e)| (id, e))
    }
}

impl FromIterator<(NetId, ViewEntity)> for View {
    fn from_iter<I: IntoIterator<Item = (NetId, ViewEntity)>>(iter: I) -> Self {
        let mut v = View::new();
        v.upsert_all(iter.into_iter().collect());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(x: f32) -> ViewEntity {
        ViewEntity {
            pos: QPos::quantize(glam::Vec3::new(x, 0.0, 0.0)),
            components: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn a_view_keeps_its_ids_sorted_and_unique_through_upserts_and_removals() {
        let mut v: View = [(NetId(5), e(5.0)), (NetId(1), e(1.0)), (NetId(3), e(3.0))]
            .into_iter()
            .collect();
        assert_eq!(v.keys().map(|k| k.0).collect::<Vec<_>>(), [1, 3, 5]);
        v.upsert_all(vec![
            (NetId(4), e(4.0)),
            (NetId(3), e(30.0)),
            (NetId(2), e(2.0)),
            (NetId(4), e(40.0)),
        ]);
        assert_eq!(v.keys().map(|k| k.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(v.get(&NetId(3)), Some(&e(30.0)), "an update replaces");
        assert_eq!(v.get(&NetId(4)), Some(&e(40.0)), "the last of a pair wins");
        v.remove_all(&mut [NetId(5), NetId(1), NetId(9)]);
        assert_eq!(v.keys().map(|k| k.0).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(!v.contains_key(&NetId(1)) && v.contains_key(&NetId(2)));
        v.at_mut(0).expect("index 0").pos = e(7.0).pos;
        assert_eq!(
            v.get(&NetId(2)),
            Some(&e(7.0)),
            "index 0 is the smallest id"
        );
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn a_view_does_what_a_map_does_under_random_upserts_and_removals() {
        use std::collections::BTreeMap;
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut v = View::new();
        let mut model: BTreeMap<NetId, ViewEntity> = BTreeMap::new();
        for round in 0..2_000 {
            let new: Vec<(NetId, ViewEntity)> = (0..next(6))
                .map(|_| (NetId(next(64)), e(round as f32)))
                .collect();
            for (id, x) in &new {
                model.insert(*id, x.clone());
            }
            v.upsert_all(new);
            let mut gone: Vec<NetId> = (0..next(4)).map(|_| NetId(next(64))).collect();
            for id in &gone {
                model.remove(id);
            }
            v.remove_all(&mut gone);
            let ours: Vec<_> = v.iter().map(|(k, x)| (*k, x.clone())).collect();
            let theirs: Vec<_> = model.iter().map(|(k, x)| (*k, x.clone())).collect();
            assert_eq!(ours, theirs, "round {round}");
        }
    }
}
