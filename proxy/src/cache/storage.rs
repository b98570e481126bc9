//! pingora-cache `Storage` backed by a moka cache bounded by bytes (body + serialized meta +
//! key). Entries are keyed by the combined (primary + Vary variance) hash. The cache key's
//! `user_tag` carries the entry's category, and a tag index (kept in step by moka's removal
//! listener) lets a category purge remove exactly that category's entries without a scan.
//!
//! Hits avoid pingora's header deserialization (zstd, about a third of a hit's instructions
//! under callgrind): the response header is kept parsed. A hit rebuilds its `CacheMeta` with
//! `CacheMeta::new` from the stored fields when that reproduces it exactly (an entry never
//! revalidated: `updated == created`); otherwise (or `CacheMeta` not being `Clone`) from the
//! stored internal meta plus a tiny placeholder header, then swaps the real header in.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use moka::notification::RemovalCause;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, Storage};
use pingora::http::ResponseHeader;
use pingora::Result;

/// Bytes an entry costs beyond its body, meta, header and tag: the `Entry` itself in its `Arc`,
/// the key, and moka's own bookkeeping per entry (its map bucket, the value entry with its
/// atomics, the access- and write-order deque nodes: about 256 bytes, estimated).
const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>() + 16 + 256;

/// Heap bytes a parsed header line costs beyond its name and value: its bucket in the header
/// map and in the case-preserving name map, the index slots and the `Bytes` handles.
const HEADER_LINE_OVERHEAD: usize = 160;

/// The fields `CacheMeta::new` takes, kept when they rebuild the entry's meta exactly: no
/// `MessagePack` decoding and no placeholder header to deserialize on a hit.
#[derive(Debug, Clone, Copy)]
struct Freshness {
    fresh_until: std::time::SystemTime,
    created: std::time::SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<std::time::SystemTime>,
}

impl Freshness {
    /// `Some` when `CacheMeta::new` plus the public setters give back `meta` exactly: it was
    /// never revalidated (`update_freshness` moves `updated` past `created`, which `new` cannot
    /// express).
    fn of(meta: &CacheMeta) -> Option<Self> {
        (meta.updated() == meta.created() && meta.provenance() == meta.created()).then(|| Self {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        })
    }

    fn meta(&self, header: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            header,
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }
}

#[derive(Debug)]
struct Entry {
    meta_internal: Vec<u8>,
    /// Set when the meta can be rebuilt from these fields (most entries).
    freshness: Option<Freshness>,
    /// The response header, parsed (what a hit hands out).
    header: ResponseHeader,
    /// Heap bytes of the parsed header, for weighing.
    header_bytes: usize,
    body: Bytes,
    tag: Box<str>,
}

/// What the parsed `header` holds on the heap (names, values, both maps), estimated.
fn parsed_header_bytes(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() * 2 + value.len() + HEADER_LINE_OVERHEAD)
        .sum::<usize>()
        + HEADER_LINE_OVERHEAD
}

impl Entry {
    fn new(meta: &CacheMeta, body: Bytes, tag: Box<str>) -> Result<Self> {
        let (meta_internal, serialized) = meta.serialize()?;
        // The upstream's header values are slices of the connection's read buffer: kept as they
        // are, each entry would pin that whole buffer (kilobytes the weigher never sees). Parsed
        // back from the serialized form, the header owns only its own bytes.
        let header = CacheMeta::deserialize(&meta_internal, &serialized)?.response_header_copy();
        Ok(Self {
            meta_internal,
            freshness: Freshness::of(meta),
            header_bytes: parsed_header_bytes(&header),
            header,
            body,
            tag,
        })
    }

    fn weight(&self) -> u32 {
        let bytes = self.body.len()
            + self.meta_internal.len()
            + self.header_bytes
            + self.tag.len()
            + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Pingora's serialized form of a minimal response header: cheap to deserialize.
fn placeholder_header() -> Vec<u8> {
    let now = std::time::SystemTime::now();
    ResponseHeader::build(200, Some(0))
        .and_then(|h| CacheMeta::new(now, now, 0, 0, h).serialize())
        .map(|(_, header)| header)
        .unwrap_or_default()
}

/// Counters the storage keeps for the metrics layer.
#[derive(Debug, Default)]
pub struct StorageCounters {
    pub evictions: std::sync::atomic::AtomicU64,
}

type TagIndex = Arc<Mutex<HashMap<Box<str>, HashSet<HashBinary>>>>;

/// The byte-bounded in-memory cache storage.
#[derive(Debug)]
pub struct MokaStorage {
    entries: moka::sync::Cache<HashBinary, Arc<Entry>>,
    tags: TagIndex,
    counters: Arc<StorageCounters>,
    placeholder_header: Vec<u8>,
}

fn untag(tags: &TagIndex, tag: &str, key: &HashBinary) {
    if tag.is_empty() {
        return;
    }
    let mut index = tags.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(keys) = index.get_mut(tag) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(tag);
        }
    }
}

impl MokaStorage {
    pub fn new(max_bytes: u64) -> Self {
        let tags: TagIndex = Arc::default();
        let counters = Arc::new(StorageCounters::default());
        let (listener_tags, listener_counters) = (tags.clone(), counters.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &HashBinary, entry: &Arc<Entry>| entry.weight())
            .eviction_listener(move |key: Arc<HashBinary>, entry: Arc<Entry>, cause| {
                // A replaced entry keeps its key (and tag) alive under the new value.
                if cause != RemovalCause::Replaced {
                    untag(&listener_tags, &entry.tag, &key);
                }
                if cause == RemovalCause::Size {
                    listener_counters
                        .evictions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build();
        Self {
            entries,
            tags,
            counters,
            placeholder_header: placeholder_header(),
        }
    }

    /// A storage for the whole process (pingora-cache wants `&'static`), made once at startup.
    pub fn leak(max_bytes: u64) -> &'static Self {
        Box::leak(Box::new(Self::new(max_bytes)))
    }

    pub fn counters(&self) -> &StorageCounters {
        &self.counters
    }

    /// (entries, weighted bytes), after pending maintenance has run.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    fn insert(&self, key: HashBinary, entry: Entry) {
        if !entry.tag.is_empty() {
            let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
            index.entry(entry.tag.clone()).or_default().insert(key);
        }
        self.entries.insert(key, Arc::new(entry));
    }

    /// Removes every entry stored under `tag` (a category); returns how many were removed.
    pub fn purge_tag(&self, tag: &str) -> usize {
        let keys: Vec<HashBinary> = {
            let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
            index
                .remove(tag)
                .map(|k| k.into_iter().collect())
                .unwrap_or_default()
        };
        keys.iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count()
    }

    /// Removes every entry; how many there were.
    pub fn purge_all(&self) -> usize {
        let count = self.entries.entry_count();
        self.tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.entries.invalidate_all();
        self.entries.run_pending_tasks();
        usize::try_from(count).unwrap_or(usize::MAX)
    }

    /// Removes the entry of one (compact) key; true when there was one.
    pub fn purge_key(&self, key: &CompactCacheKey) -> bool {
        self.entries.remove(&key.combined_bin()).is_some()
    }
}

struct Hit {
    body: Option<Bytes>,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        Ok(self.body.take())
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    storage: &'static MokaStorage,
    key: HashBinary,
    /// The entry without its body yet.
    entry: Entry,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            storage,
            key,
            mut entry,
            body,
        } = *self;
        // A grown buffer can hold up to twice its length: store exactly the body's bytes.
        entry.body = if body.capacity() > body.len() + body.len() / 8 {
            Bytes::copy_from_slice(&body)
        } else {
            body.freeze()
        };
        let size = entry.weight() as usize;
        storage.insert(key, entry);
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl Storage for MokaStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.entries.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = match &entry.freshness {
            Some(freshness) => freshness.meta(entry.header.clone()),
            None => {
                let mut meta =
                    CacheMeta::deserialize(&entry.meta_internal, &self.placeholder_header)?;
                *meta.response_header_mut() = entry.header.clone();
                meta
            }
        };
        let hit = Hit {
            body: Some(entry.body.clone()),
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            storage: self,
            key: key.combined_bin(),
            entry: Entry::new(meta, Bytes::new(), key.user_tag().into())?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(if self.purge_key(target.key()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let id = key.combined_bin();
        let Some(old) = self.entries.get(&id) else {
            return Ok(false);
        };
        self.insert(id, Entry::new(meta, old.body.clone(), old.tag.clone())?);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn trace() -> SpanHandle {
        pingora::cache::trace::Span::inactive().handle()
    }

    fn meta() -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .insert_header("content-type", "application/json")
            .unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(30), now, 10, 60, header)
    }

    #[test]
    fn an_entry_owns_its_header_and_is_weighed_for_it() {
        // As pingora parses an upstream response: every value a slice of one big read buffer.
        let mut buffer = vec![b' '; 64 * 1024];
        buffer[..16].copy_from_slice(b"application/json");
        buffer[16..19].copy_from_slice(b"abc");
        let buffer = Bytes::from(buffer);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let mut header = ResponseHeader::build(200, None).unwrap();
        let value = |r: std::ops::Range<usize>| {
            http::HeaderValue::from_maybe_shared(buffer.slice(r)).unwrap()
        };
        header.insert_header("content-type", value(0..16)).unwrap();
        header.insert_header("etag", value(16..19)).unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(30), now, 10, 60, header);
        let entry = Entry::new(&meta, Bytes::from_static(b"{}"), "polo".into()).unwrap();
        for (_, value) in entry.header.headers.iter() {
            let at = value.as_bytes().as_ptr() as usize;
            assert!(
                !range.contains(&at),
                "a stored value still points into the read buffer"
            );
        }
        assert_eq!(entry.header.headers["content-type"], "application/json");
        assert_eq!(entry.header.headers["etag"], "abc");
        let named = "content-type".len() * 2 + 16 + "etag".len() * 2 + 3;
        assert!(entry.header_bytes >= named + 2 * HEADER_LINE_OVERHEAD);
        assert!(entry.weight() as usize >= entry.header_bytes + 2);
    }

    async fn store(storage: &'static MokaStorage, url: &str, tag: &str, body: &'static [u8]) {
        let key = CacheKey::new(url, tag);
        let mut miss = storage
            .get_miss_handler(&key, &meta(), &trace())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(body), false)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"!"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    async fn body(storage: &'static MokaStorage, url: &str, tag: &str) -> Option<Bytes> {
        let key = CacheKey::new(url, tag);
        let (meta, mut hit) = storage.lookup(&key, &trace()).await.unwrap()?;
        assert_eq!(meta.response_header().status, 200);
        // The rebuilt meta keeps the stored freshness and stale windows.
        let ttl = meta
            .fresh_until()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(ttl > Duration::from_secs(25) && ttl <= Duration::from_secs(30));
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (10, 60)
        );
        assert_eq!(meta.headers()["content-type"], "application/json");
        let body = hit.read_body().await.unwrap();
        assert!(hit.read_body().await.unwrap().is_none());
        body
    }

    /// Everything a `CacheMeta` exposes, to compare a hit's meta with the stored one.
    fn observable(meta: &CacheMeta) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {} {} {:?} {:?} {:?} {:?}",
            meta.fresh_until(),
            meta.created(),
            meta.updated(),
            meta.provenance(),
            meta.stale_while_revalidate_sec(),
            meta.stale_if_error_sec(),
            meta.variance(),
            meta.epoch_override(),
            meta.response_header().status,
            meta.headers(),
        )
    }

    async fn hit_meta(storage: &'static MokaStorage, key: &CacheKey) -> CacheMeta {
        storage.lookup(key, &trace()).await.unwrap().unwrap().0
    }

    #[tokio::test]
    async fn a_hit_gives_back_the_stored_meta_whether_rebuilt_or_decoded() {
        let storage = MokaStorage::leak(1 << 20);
        let key = CacheKey::new("/m", "");
        let mut stored = meta();
        stored.set_variance([7; 16]);
        stored.set_epoch_override(stored.created() - Duration::from_secs(5));
        let mut miss = storage
            .get_miss_handler(&key, &stored, &trace())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"{}"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let id = key.combined_bin();
        assert!(storage.entries.get(&id).unwrap().freshness.is_some());
        assert_eq!(
            observable(&hit_meta(storage, &key).await),
            observable(&stored)
        );

        // Revalidated: `updated` moves past `created`, which only the decoded form keeps.
        std::thread::sleep(Duration::from_millis(2));
        stored.update_freshness(SystemTime::now() + Duration::from_secs(60), 1, 2);
        assert!(storage.update_meta(&key, &stored, &trace()).await.unwrap());
        assert!(storage.entries.get(&id).unwrap().freshness.is_none());
        assert_eq!(
            observable(&hit_meta(storage, &key).await),
            observable(&stored)
        );
    }

    #[tokio::test]
    async fn stores_and_serves_meta_and_body() {
        let storage = MokaStorage::leak(1 << 20);
        assert!(body(storage, "/a", "polo").await.is_none());
        store(storage, "/a", "polo", b"hello").await;
        assert_eq!(body(storage, "/a", "polo").await.unwrap(), "hello!");
        let (entries, bytes) = storage.usage();
        assert_eq!(entries, 1);
        assert!(bytes > 6);
    }

    #[tokio::test]
    async fn category_purge_removes_that_category_only() {
        let storage = MokaStorage::leak(1 << 20);
        for url in [
            "/p?c=polo&cursor=1",
            "/p?c=polo&cursor=2",
            "/p?c=polo&limit=5",
        ] {
            store(storage, url, "polo", b"x").await;
        }
        store(storage, "/p?c=linen", "linen", b"y").await;
        assert_eq!(storage.purge_tag("polo"), 3);
        assert!(body(storage, "/p?c=polo&cursor=1", "polo").await.is_none());
        assert_eq!(body(storage, "/p?c=linen", "linen").await.unwrap(), "y!");
        assert_eq!(storage.purge_tag("polo"), 0);
    }

    #[tokio::test]
    async fn purge_by_key_and_update_meta() {
        let storage = MokaStorage::leak(1 << 20);
        store(storage, "/k", "", b"v").await;
        let key = CacheKey::new("/k", "");
        assert!(storage.update_meta(&key, &meta(), &trace()).await.unwrap());
        assert_eq!(body(storage, "/k", "").await.unwrap(), "v!");
        let target = key.to_compact();
        let outcome = storage
            .purge(
                PurgeTarget::Active(&target),
                PurgeType::Invalidation,
                &trace(),
            )
            .await
            .unwrap();
        assert!(matches!(outcome, PurgeOutcome::Purged(_)));
        assert!(body(storage, "/k", "").await.is_none());
        assert!(!storage.update_meta(&key, &meta(), &trace()).await.unwrap());
    }

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let storage = MokaStorage::leak(64 * 1024);
        static BODY: [u8; 1024] = [b'x'; 1024];
        for i in 0..1_000 {
            store(storage, &format!("/item/{i}"), "tee", &BODY).await;
        }
        let (entries, bytes) = storage.usage();
        assert!(bytes <= 64 * 1024, "{bytes} bytes stored");
        assert!(entries < 1_000 && entries > 10, "{entries} entries");
        assert!(
            storage
                .counters()
                .evictions
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        // Evicted keys left the tag index: a purge removes only what is still there.
        assert_eq!(storage.purge_tag("tee") as u64, entries);
    }
}
