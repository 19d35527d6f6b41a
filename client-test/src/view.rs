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
    /// As the snapshot carried them (shared with the decoded message, not copied), passed on
    /// from view to view while they do not change.
    pub components: Arc<[ComponentBlob]>,
}

/// The client's reconstruction of the world at one tick: the entities in view, by `NetId`.
///
/// A sorted vector: the client builds each new view by walking the previous one in id order
/// (see `BotClient::apply`, which keeps older ticks as positions only).
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

    /// A view of `entries`, already sorted by id, each id once.
    pub(crate) fn from_sorted(entries: Vec<(NetId, ViewEntity)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        Self { entries }
    }

    /// The entries, sorted by id.
    pub(crate) fn into_entries(self) -> Vec<(NetId, ViewEntity)> {
        self.entries
    }

    fn index_of(&self, id: &NetId) -> Option<usize> {
        self.entries.binary_search_by_key(id, |(k, _)| *k).ok()
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

/// Of an id given twice, the last wins.
impl FromIterator<(NetId, ViewEntity)> for View {
    fn from_iter<I: IntoIterator<Item = (NetId, ViewEntity)>>(iter: I) -> Self {
        let mut all: Vec<(NetId, ViewEntity)> = iter.into_iter().collect();
        all.sort_by_key(|(id, _)| *id); // stable: of one id, the last given comes last
        let mut entries: Vec<(NetId, ViewEntity)> = Vec::with_capacity(all.len());
        for (id, e) in all {
            match entries.last_mut() {
                Some(last) if last.0 == id => last.1 = e,
                _ => entries.push((id, e)),
            }
        }
        Self { entries }
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
    fn a_view_keeps_its_ids_sorted_and_unique_and_the_last_of_an_id_wins() {
        let v: View = [
            (NetId(5), e(5.0)),
            (NetId(1), e(1.0)),
            (NetId(3), e(3.0)),
            (NetId(3), e(30.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(v.keys().map(|k| k.0).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(v.get(&NetId(3)), Some(&e(30.0)), "the last of a pair wins");
        assert!(!v.contains_key(&NetId(2)) && v.contains_key(&NetId(5)));
        assert_eq!(v.len(), 3);
        let back = View::from_sorted(v.clone().into_entries());
        assert_eq!(back, v, "taken apart and put together");
    }
}
