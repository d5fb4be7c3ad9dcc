//! [`SearchCache`]: what repeated searches of an index would otherwise read again.
//!
//! Two kinds of entries share one byte budget, evicted least recently used first:
//!
//! - the *target* of an index (its model and the segment manifests of its latest
//!   version). A search lists the versions and reads the latest version manifest —
//!   two small reads — and uses the cached target only if that manifest is the one
//!   it was built from, so a new version (or an index re-created at the same URL) is
//!   never answered from an old one. A new version reuses the model when its
//!   fingerprint is the same and the manifests of segments it keeps (segments are
//!   immutable and named by UUID).
//! - decoded *blocks*: a probed partition's rows, checked against their CRC-32 when
//!   read. For the HNSW types a block is one segment's rows and graph; for the
//!   others it joins the rows of every segment holding some, so that an index of
//!   many segments is scanned as one. Keyed by index URL, partition, and each joined
//!   segment with its block's offset and CRC in that segment's manifest (segments
//!   are immutable, so a key names the same rows in every version listing them).
//!
//! Searches that find no cache attached to their session read everything, as
//! before. Ballista executors have their own sessions and so their own (or no) cache.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::prelude::SessionConfig;

use super::block::Block;
use super::SearchTarget;
use crate::format::VersionManifest;

/// The default budget of [`crate::VectorIndexSession::new`]'s cache.
pub const DEFAULT_SEARCH_CACHE_BYTES: usize = 1 << 30;

/// A bounded cache of decoded models, segment manifests and probed partitions,
/// shared by the searches of every session it is attached to
/// ([`SearchCache::attach`]). Entries larger than the whole budget are not kept.
#[derive(Debug)]
pub struct SearchCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// Counters of a cache since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchCacheStats {
    /// Bytes the entries take now (an estimate of their memory).
    pub bytes: usize,
    pub capacity: usize,
    pub target_hits: u64,
    pub target_misses: u64,
    pub block_hits: u64,
    pub block_misses: u64,
    pub evictions: u64,
}

/// Where a block is: index URL, IVF partition, and where its rows are in the
/// segments it joins ([`Place`]s). Made once per search target, looked up by every
/// search of it.
#[derive(Debug, Clone, Eq)]
pub(crate) struct BlockKey {
    /// The hash of the other fields, worked out when the key is made (and compared
    /// first, so unequal keys differ early): a search looks up one key per probed
    /// block, and hashing the strings at each look-up cost more than scoring a small
    /// block.
    hash: u64,
    index: Arc<str>,
    pub partition: u32,
    places: Arc<[Place]>,
}

/// One segment's block of a partition: the segment, and the block's offset and CRC
/// in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Place {
    pub segment_id: Arc<str>,
    pub offset: u64,
    pub crc32: u32,
}

impl BlockKey {
    pub(crate) fn new(index: Arc<str>, partition: u32, places: Arc<[Place]>) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        (&*index, partition, &*places).hash(&mut h);
        Self {
            hash: h.finish(),
            index,
            partition,
            places,
        }
    }
}

impl PartialEq for BlockKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.partition == other.partition
            && self.index == other.index
            // A target's keys are looked up with themselves: skip comparing the places.
            && (Arc::ptr_eq(&self.places, &other.places) || self.places == other.places)
    }
}

impl Hash for BlockKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hashes a [`BlockKey`] to the hash it carries.
#[derive(Debug, Default)]
struct CarriedHash(u64);

impl Hasher for CarriedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    /// [`BlockKey`]s write only their `u64`; other bytes are folded in, so this stays
    /// a hasher for any key.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// Where an entry is: the key of its map. Kept in the recency order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Target(Arc<str>),
    Block(BlockKey),
}

/// A target with the version manifest it was built from.
#[derive(Debug)]
pub(super) struct CachedTarget {
    pub manifest: VersionManifest,
    pub target: Arc<SearchTarget>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: usize,
    /// Last use.
    used: u64,
    /// Where the entry is in `Inner::order`: its last use when it was last put
    /// there. A hit only sets `used`; eviction moves entries whose `used` is newer.
    slot: u64,
}

impl<V> Entry<V> {
    /// An entry used just now, at `now`.
    fn new(value: V, bytes: usize, now: u64) -> Self {
        Self {
            value,
            bytes,
            used: now,
            slot: now,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    targets: HashMap<Arc<str>, Entry<Arc<CachedTarget>>>,
    blocks: HashMap<BlockKey, Entry<Arc<Block>>, BuildHasherDefault<CarriedHash>>,
    /// Slot → key: the first is the next candidate for eviction.
    order: BTreeMap<u64, Key>,
    clock: u64,
    stats: SearchCacheStats,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn target(&mut self, index: &str) -> Option<Arc<CachedTarget>> {
        let now = self.tick();
        let entry = self.targets.get_mut(index)?;
        entry.used = now;
        Some(Arc::clone(&entry.value))
    }

    fn block(&mut self, key: &BlockKey) -> Option<Arc<Block>> {
        let now = self.tick();
        let entry = self.blocks.get_mut(key)?;
        entry.used = now;
        Some(Arc::clone(&entry.value))
    }

    /// Bytes, last use and slot of the entry at `key`.
    fn meta(&self, key: &Key) -> Option<(usize, u64, u64)> {
        match key {
            Key::Target(k) => self.targets.get(k).map(|e| (e.bytes, e.used, e.slot)),
            Key::Block(k) => self.blocks.get(k).map(|e| (e.bytes, e.used, e.slot)),
        }
    }

    fn set_slot(&mut self, key: &Key, slot: u64) {
        match key {
            Key::Target(k) => self.targets.get_mut(k).map(|e| e.slot = slot),
            Key::Block(k) => self.blocks.get_mut(k).map(|e| e.slot = slot),
        };
    }

    /// Takes the entry at `key` out of its map (not out of the order); its bytes
    /// and slot.
    fn take(&mut self, key: &Key) -> Option<(usize, u64)> {
        let taken = match key {
            Key::Target(k) => self.targets.remove(k).map(|e| (e.bytes, e.slot)),
            Key::Block(k) => self.blocks.remove(k).map(|e| (e.bytes, e.slot)),
        };
        if let Some((bytes, _)) = taken {
            self.stats.bytes -= bytes;
        }
        taken
    }

    fn remove(&mut self, key: &Key) {
        if let Some((_, slot)) = self.take(key) {
            self.order.remove(&slot);
        }
    }

    /// Evicts least recently used entries until `bytes` more fit in `capacity`.
    fn make_room(&mut self, capacity: usize, bytes: usize) {
        while self.stats.bytes + bytes > capacity {
            let Some((slot, key)) = self.order.pop_first() else {
                break;
            };
            match self.meta(&key) {
                // Used since it was put in its slot: move it to its last use.
                Some((_, used, _)) if used > slot => {
                    self.order.insert(used, key.clone());
                    self.set_slot(&key, used);
                }
                _ => {
                    if self.take(&key).is_some() {
                        self.stats.evictions += 1;
                    }
                }
            }
        }
    }

    /// Makes room for an entry of `bytes` and puts `key` last in the recency order;
    /// its slot, or `None` when the entry is larger than the whole budget.
    fn admit(&mut self, capacity: usize, key: Key, bytes: usize) -> Option<u64> {
        self.remove(&key);
        if bytes > capacity {
            return None;
        }
        self.make_room(capacity, bytes);
        let now = self.tick();
        self.order.insert(now, key);
        self.stats.bytes += bytes;
        Some(now)
    }

    fn insert_target(
        &mut self,
        capacity: usize,
        key: Arc<str>,
        value: Arc<CachedTarget>,
        bytes: usize,
    ) {
        if let Some(now) = self.admit(capacity, Key::Target(Arc::clone(&key)), bytes) {
            self.targets.insert(key, Entry::new(value, bytes, now));
        }
    }

    fn insert_block(&mut self, capacity: usize, key: BlockKey, value: Arc<Block>, bytes: usize) {
        if let Some(now) = self.admit(capacity, Key::Block(key.clone()), bytes) {
            self.blocks.insert(key, Entry::new(value, bytes, now));
        }
    }

    fn clear(&mut self) {
        self.targets.clear();
        self.blocks.clear();
        self.order.clear();
        self.stats.bytes = 0;
    }
}

/// The extension a session config carries (extensions are keyed by type).
#[derive(Debug)]
struct Attached(Arc<SearchCache>);

impl SearchCache {
    /// A cache that keeps at most `capacity_bytes` of decoded data.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner {
                stats: SearchCacheStats {
                    capacity: capacity_bytes,
                    ..Default::default()
                },
                ..Default::default()
            }),
        }
    }

    /// `config` whose searches use this cache.
    pub fn attach(self: &Arc<Self>, config: SessionConfig) -> SessionConfig {
        config.with_extension(Arc::new(Attached(Arc::clone(self))))
    }

    /// The cache attached to `config`, if any.
    pub fn of(config: &SessionConfig) -> Option<Arc<Self>> {
        config.get_extension::<Attached>().map(|a| Arc::clone(&a.0))
    }

    pub fn stats(&self) -> SearchCacheStats {
        self.lock().stats
    }

    /// Drops every entry (counters are kept).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave entries half-updated in a way
        // that matters more than losing them: start over empty.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.clear();
            inner
        })
    }

    /// The cached target of `index`, whatever its version (the caller checks it).
    pub(super) fn target(&self, index: &str) -> Option<Arc<CachedTarget>> {
        self.lock().target(index)
    }

    pub(super) fn record_target(&self, hit: bool) {
        let mut inner = self.lock();
        if hit {
            inner.stats.target_hits += 1;
        } else {
            inner.stats.target_misses += 1;
        }
    }

    pub(super) fn put_target(&self, index: &str, target: Arc<CachedTarget>) {
        let bytes = target.target.memory_size();
        self.lock()
            .insert_target(self.capacity, index.into(), target, bytes);
    }

    /// The cached blocks of `keys` (`None` where not cached), under one lock.
    pub(super) fn blocks(&self, keys: &[&BlockKey]) -> Vec<Option<Arc<Block>>> {
        let mut inner = self.lock();
        let found: Vec<Option<Arc<Block>>> = keys.iter().map(|key| inner.block(key)).collect();
        let hits = found.iter().filter(|b| b.is_some()).count() as u64;
        inner.stats.block_hits += hits;
        inner.stats.block_misses += keys.len() as u64 - hits;
        found
    }

    pub(super) fn put_block(&self, key: BlockKey, block: Arc<Block>) {
        let bytes = block.memory_size();
        self.lock().insert_block(self.capacity, key, block, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(segment_id: &str, offset: u64, crc32: u32) -> Place {
        Place {
            segment_id: segment_id.into(),
            offset,
            crc32,
        }
    }

    fn key(p: u32) -> BlockKey {
        BlockKey::new("memory:///i".into(), p, [place("s", 0, 0)].into())
    }

    fn block() -> Arc<Block> {
        let schema = crate::format::stored_rows_schema(crate::format::Quantizer::Sq, 1, 1);
        let rows = arrow::array::RecordBatch::new_empty(schema);
        Arc::new(Block {
            stored: crate::format::StoredBuffers::of(&rows).unwrap(),
            graph: None,
            columns: None,
        })
    }

    /// Keys made apart from the same parts are equal and found in the map; a key
    /// differing in any part is another.
    #[test]
    fn block_keys_are_their_parts() {
        let make = |index: &str, p, places: &[Place]| BlockKey::new(index.into(), p, places.into());
        let mut map: HashMap<BlockKey, u32, BuildHasherDefault<CarriedHash>> = HashMap::default();
        let two = [place("s", 8, 9), place("t", 0, 3)];
        map.insert(make("memory:///i", 1, &[place("s", 8, 9)]), 7);
        map.insert(make("memory:///i", 1, &two), 8);
        assert_eq!(
            map.get(&make("memory:///i", 1, &[place("s", 8, 9)])),
            Some(&7)
        );
        assert_eq!(map.get(&make("memory:///i", 1, &two)), Some(&8));
        for other in [
            make("memory:///j", 1, &[place("s", 8, 9)]),
            make("memory:///i", 1, &[place("t", 8, 9)]),
            make("memory:///i", 2, &[place("s", 8, 9)]),
            make("memory:///i", 1, &[place("s", 16, 9)]),
            make("memory:///i", 1, &[place("s", 8, 10)]),
            // The strings' boundary moved: other parts, the same bytes in a row.
            make("memory:///is", 1, &[place("", 8, 9)]),
            // The same segments in another order, one more, one fewer.
            make("memory:///i", 1, &[place("t", 0, 3), place("s", 8, 9)]),
            make(
                "memory:///i",
                1,
                &[place("s", 8, 9), place("t", 0, 3), place("u", 0, 0)],
            ),
            make("memory:///i", 1, &[place("t", 0, 3)]),
        ] {
            assert_eq!(map.get(&other), None, "{other:?}");
        }
    }

    /// Every entry has exactly one slot in the order, at or before its last use, and
    /// the bytes are the sum of the entries'.
    fn check(inner: &Inner, capacity: usize) -> Result<(), String> {
        let held: usize = inner.blocks.values().map(|e| e.bytes).sum::<usize>()
            + inner.targets.values().map(|e| e.bytes).sum::<usize>();
        if held != inner.stats.bytes || held > capacity {
            return Err(format!(
                "holds {held}, counts {}, budget {capacity}",
                inner.stats.bytes
            ));
        }
        if inner.order.len() != inner.blocks.len() + inner.targets.len() {
            return Err("order and entries differ".into());
        }
        for (slot, key) in &inner.order {
            match inner.meta(key) {
                Some((_, used, s)) if s == *slot && used >= s => {}
                other => return Err(format!("slot {slot} of {key:?}: {other:?}")),
            }
        }
        Ok(())
    }

    /// The least recently used entry goes first and an entry larger than the budget
    /// is not kept.
    #[test]
    fn evicts_least_recently_used_within_budget() {
        let mut inner = Inner::default();
        inner.insert_block(100, key(0), block(), 40);
        inner.insert_block(100, key(1), block(), 40);
        assert!(inner.block(&key(0)).is_some());
        inner.insert_block(100, key(2), block(), 40);
        assert!(inner.blocks.contains_key(&key(0)));
        assert!(!inner.blocks.contains_key(&key(1)));
        assert_eq!(inner.stats.bytes, 80);
        assert_eq!(inner.stats.evictions, 1);
        inner.insert_block(100, key(3), block(), 101);
        assert!(!inner.blocks.contains_key(&key(3)));
        assert_eq!(inner.stats.bytes, 80);
        // Replacing an entry accounts for the old size.
        inner.insert_block(100, key(0), block(), 10);
        assert_eq!(inner.stats.bytes, 50);
        check(&inner, 100).unwrap();
    }

    proptest::proptest! {
        /// For any sequence of inserts and uses: the bytes held never exceed the
        /// budget and equal the sum of the entries, the order has one slot per
        /// entry, an entry that fits is kept when inserted, and an entry used
        /// since the last insert outlives every entry not used since.
        #[test]
        fn budget_and_order_hold_for_any_sequence(
            capacity in 0usize..200,
            ops in proptest::collection::vec((0u32..12, 0usize..120, proptest::bool::ANY), 0..80),
        ) {
            let mut inner = Inner::default();
            for (p, bytes, is_insert) in ops {
                if is_insert {
                    let before: Vec<(BlockKey, u64)> =
                        inner.blocks.iter().map(|(k, e)| (k.clone(), e.used)).collect();
                    inner.insert_block(capacity, key(p), block(), bytes);
                    proptest::prop_assert_eq!(inner.blocks.contains_key(&key(p)), bytes <= capacity);
                    // No entry evicted while an older-used one stayed.
                    let evicted = before.iter().filter(|(k, _)| !inner.blocks.contains_key(k) && *k != key(p));
                    let newest_evicted = evicted.map(|(_, u)| *u).max();
                    let oldest_kept = before.iter().filter(|(k, _)| inner.blocks.contains_key(k) && *k != key(p)).map(|(_, u)| *u).min();
                    if let (Some(e), Some(k)) = (newest_evicted, oldest_kept) {
                        proptest::prop_assert!(e < k, "evicted use {} but kept use {}", e, k);
                    }
                } else {
                    inner.block(&key(p));
                }
                proptest::prop_assert!(check(&inner, capacity).is_ok(), "{:?}", check(&inner, capacity));
            }
        }
    }
}
