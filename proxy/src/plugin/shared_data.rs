//! The host-wide shared data store every VM of every plugin sees (`proxy_get_shared_data` /
//! `proxy_set_shared_data`): values with compare-and-swap tokens, bounded in bytes, and
//! optionally expiring by key prefix - what the ABI lacks, added without changing it.
//!
//! When full, room is made in this order: expired entries, then the least recently USED entries
//! without a TTL. An entry under a TTL prefix (e.g. `ratelimit/`) is never evicted while it lives:
//! that TTL is how long such an entry stays meaningful (a token bucket still refilling), and
//! evicting one early would hand its owner a fresh burst. A write that cannot be made room for
//! is refused instead. Evictions and refusals are counted ([`SharedData::counters`]).
//!
//! Creating a key is the one write plain CAS cannot guard: a plugin that read "absent" and writes
//! with CAS 0 overwrites whatever another VM created meanwhile, with all the updates made since.
//! [`CREATE_ONLY_CAS`] closes that gap within the ABI: no entry ever holds that token, so a write
//! carrying it succeeds only where the key is absent (or expired), exactly as on Envoy, whose
//! counter reaches it only after 2^32 writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The CAS token no entry is ever given: a write that carries it creates the key or fails with
/// [`SetError::CasMismatch`] (someone else created it first; read it and CAS from there).
/// Plugins spell it `plugin_support::CREATE_ONLY` (the guest workspace cannot link this crate).
pub const CREATE_ONLY_CAS: u32 = u32::MAX;

/// Bytes an entry costs beyond its key and value.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    cas: u32,
    /// Use sequence (entries without a TTL: the LRU order), or write sequence (with a TTL).
    used: u64,
    expires: Option<Instant>,
}

impl Entry {
    fn weight(&self, key: &str) -> usize {
        key.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
struct Settings {
    max_bytes: usize,
    /// (prefix, ttl), longest prefix first.
    ttl_by_prefix: Vec<(String, Duration)>,
}

impl Settings {
    fn new(max_bytes: u64, mut ttl_by_prefix: Vec<(String, Duration)>) -> Self {
        ttl_by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ttl_by_prefix,
        }
    }

    fn ttl(&self, key: &str) -> Option<Duration> {
        self.ttl_by_prefix
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, ttl)| *ttl)
    }
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    entries: HashMap<String, Entry>,
    /// Use sequence -> key, for entries without a TTL: eviction order.
    lru: BTreeMap<u64, String>,
    /// (expiry, write sequence) -> key, for entries with a TTL: expired ones go first.
    expiring: BTreeMap<(Instant, u64), String>,
    bytes: usize,
    next_cas: u32,
    next_use: u64,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// The caller's CAS token is stale: someone wrote in between.
    CasMismatch,
    /// The entry alone is larger than the whole store.
    TooLarge,
    /// The store is full of entries that may not be evicted yet (live TTL entries).
    Full,
}

/// What the store had to give up, since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Entries removed because they had expired (on write pressure or when read).
    pub expired: AtomicU64,
    /// Entries without a TTL evicted (least recently used first) to make room.
    pub evicted: AtomicU64,
    /// Writes refused because no entry could be evicted for them.
    pub refused: AtomicU64,
}

#[derive(Debug)]
pub struct SharedData {
    inner: Mutex<Inner>,
    counters: Counters,
}

impl SharedData {
    pub fn new(max_bytes: u64, ttl_by_prefix: Vec<(String, Duration)>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings: Settings::new(max_bytes, ttl_by_prefix),
                entries: HashMap::new(),
                lru: BTreeMap::new(),
                expiring: BTreeMap::new(),
                bytes: 0,
                next_cas: 0,
                next_use: 0,
            }),
            counters: Counters::default(),
        }
    }

    /// New bounds (a reload): they apply from the next write; entries are kept.
    pub fn reconfigure(&self, max_bytes: u64, ttl_by_prefix: Vec<(String, Duration)>) {
        self.lock().settings = Settings::new(max_bytes, ttl_by_prefix);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Evictions and refusals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The value and its CAS token; expired entries are gone. A read counts as a use.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut inner = self.lock();
        let now = Instant::now();
        let expired = inner.entries.get(key)?.expires.is_some_and(|at| at <= now);
        if expired {
            inner.take(key);
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        inner.touch(key);
        inner.entries.get(key).map(|e| (e.value.clone(), e.cas))
    }

    /// Writes `value`; with a non-zero `cas`, only if the entry still has that token (an absent
    /// or expired entry accepts any token, as Envoy does; so [`CREATE_ONLY_CAS`], which no
    /// entry holds, creates or fails).
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let weight = key.len() + value.len() + ENTRY_OVERHEAD;
        let mut inner = self.lock();
        if weight > inner.settings.max_bytes {
            return Err(SetError::TooLarge);
        }
        let now = Instant::now();
        if let Some(entry) = inner.entries.get(key) {
            let live = entry.expires.is_none_or(|at| at > now);
            if cas != 0 && live && entry.cas != cas {
                return Err(SetError::CasMismatch);
            }
            if entry.value.len() == value.len() {
                // The common write (a rate-limit bucket's next state): same size, so no room
                // to make; rewritten where it is, nothing allocated.
                inner.rewrite(key, value, now);
                return Ok(());
            }
        }
        let old = inner.take(key);
        if let Err(e) = inner.make_room(weight, now, &self.counters) {
            if let Some(old) = old {
                inner.put(key.to_string(), old);
            }
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        inner.next_cas = inner.next_token();
        inner.next_use += 1;
        let entry = Entry {
            value: value.to_vec(),
            cas: inner.next_cas,
            used: inner.next_use,
            expires: inner.settings.ttl(key).map(|ttl| now + ttl),
        };
        inner.put(key.to_string(), entry);
        Ok(())
    }

    /// (entries, bytes).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl Inner {
    /// The next CAS token: never 0 (no CAS) nor [`CREATE_ONLY_CAS`].
    fn next_token(&self) -> u32 {
        match self.next_cas.wrapping_add(1) {
            0 | CREATE_ONLY_CAS => 1,
            token => token,
        }
    }

    fn put(&mut self, key: String, entry: Entry) {
        self.bytes += entry.weight(&key);
        match entry.expires {
            Some(at) => self.expiring.insert((at, entry.used), key.clone()),
            None => self.lru.insert(entry.used, key.clone()),
        };
        self.entries.insert(key, entry);
    }

    /// Overwrites the value of `key` (present, with a value of the same length) in place, as
    /// a new write: a new CAS token, use and expiry.
    fn rewrite(&mut self, key: &str, value: &[u8], now: Instant) {
        let expires = self.settings.ttl(key).map(|ttl| now + ttl);
        let (cas, used) = (self.next_token(), self.next_use + 1);
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.value.copy_from_slice(value);
        entry.cas = cas;
        let was = (entry.expires, entry.used);
        (entry.expires, entry.used) = (expires, used);
        (self.next_cas, self.next_use) = (cas, used);
        self.reorder(key, was, (expires, used));
    }

    /// Moves `key` in the order indexes from (expiry, sequence) `was` to `now`, reusing the
    /// index's copy of the key.
    fn reorder(&mut self, key: &str, was: (Option<Instant>, u64), now: (Option<Instant>, u64)) {
        let ordered = match was {
            (Some(at), used) => self.expiring.remove(&(at, used)),
            (None, used) => self.lru.remove(&used),
        }
        .unwrap_or_else(|| key.to_string());
        match now {
            (Some(at), used) => self.expiring.insert((at, used), ordered),
            (None, used) => self.lru.insert(used, ordered),
        };
    }

    fn take(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= entry.weight(key);
        match entry.expires {
            Some(at) => self.expiring.remove(&(at, entry.used)),
            None => self.lru.remove(&entry.used),
        };
        Some(entry)
    }

    /// Moves an entry without a TTL to the most recently used end.
    fn touch(&mut self, key: &str) {
        self.next_use += 1;
        let next = self.next_use;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.expires.is_none() {
            let was = entry.used;
            entry.used = next;
            self.reorder(key, (None, was), (None, next));
        }
    }

    /// Makes room for `weight` more bytes: expired entries first, then the least recently used
    /// entries without a TTL; never a live TTL entry.
    fn make_room(
        &mut self,
        weight: usize,
        now: Instant,
        counters: &Counters,
    ) -> Result<(), SetError> {
        let max = self.settings.max_bytes;
        while self.bytes + weight > max {
            let Some((&(at, _), key)) = self.expiring.first_key_value() else {
                break;
            };
            if at > now {
                break;
            }
            let key = key.clone();
            self.take(&key);
            counters.expired.fetch_add(1, Ordering::Relaxed);
        }
        while self.bytes + weight > max {
            let Some((_, key)) = self.lru.first_key_value() else {
                return Err(SetError::Full);
            };
            let key = key.clone();
            self.take(&key);
            counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_guards_concurrent_writers() {
        let store = SharedData::new(1 << 20, vec![]);
        assert_eq!(store.get("k"), None);
        store.set("k", b"1", 0).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value, b"1");
        store.set("k", b"2", cas).unwrap();
        assert_eq!(store.set("k", b"3", cas), Err(SetError::CasMismatch));
        let (value, newer) = store.get("k").unwrap();
        assert_eq!((value.as_slice(), newer != cas), (&b"2"[..], true));
    }

    #[test]
    fn create_only_writes_only_where_the_key_is_absent_or_expired() {
        let store = SharedData::new(1 << 20, vec![("tmp/".into(), Duration::from_millis(20))]);
        store.set("k", b"first", CREATE_ONLY_CAS).unwrap();
        assert_eq!(
            store.set("k", b"second", CREATE_ONLY_CAS),
            Err(SetError::CasMismatch)
        );
        assert_eq!(store.get("k").unwrap().0, b"first");
        store.set("tmp/k", b"old", 0).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        store.set("tmp/k", b"new", CREATE_ONLY_CAS).unwrap();
        assert_eq!(store.get("tmp/k").unwrap().0, b"new");
    }

    #[test]
    fn tokens_wrap_past_zero_and_the_create_only_token() {
        let store = SharedData::new(1 << 20, vec![]);
        store.lock().next_cas = CREATE_ONLY_CAS - 2;
        store.set("k", b"1", 0).unwrap();
        assert_eq!(store.get("k").unwrap().1, CREATE_ONLY_CAS - 1);
        store.set("k", b"1", 0).unwrap();
        assert_eq!(
            store.get("k").unwrap().1,
            1,
            "skips {CREATE_ONLY_CAS} and 0"
        );
        assert_eq!(
            store.set("k", b"2", CREATE_ONLY_CAS),
            Err(SetError::CasMismatch)
        );
    }

    #[test]
    fn concurrent_increments_with_cas_retries_are_exact() {
        let store = std::sync::Arc::new(SharedData::new(1 << 20, vec![]));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            // Creating with CAS 0 could overwrite another thread's creation
                            // and the increments made on it since.
                            let (n, cas) = store
                                .get("n")
                                .map(|(v, c)| {
                                    (String::from_utf8(v).unwrap().parse::<u64>().unwrap(), c)
                                })
                                .unwrap_or((0, CREATE_ONLY_CAS));
                            if store.set("n", (n + 1).to_string().as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get("n").unwrap().0, b"4000");
    }

    #[test]
    fn bounded_by_bytes_least_recently_used_first_and_prefix_ttl() {
        let store = SharedData::new(1000, vec![("tmp/".into(), Duration::from_millis(20))]);
        for i in 0..20 {
            store.set(&format!("k{i}"), &[0; 100], 0).unwrap();
            // k0 is read after every write: the most recently used, so it stays.
            assert!(store.get("k0").is_some(), "k0 evicted at write {i}");
        }
        let (entries, bytes) = store.usage();
        assert!(bytes <= 1000 && entries < 20, "{entries} {bytes}");
        assert!(store.get("k1").is_none() && store.get("k19").is_some());
        assert!(store.counters().evicted.load(Ordering::Relaxed) > 0);
        assert_eq!(store.set("big", &[0; 2000], 0), Err(SetError::TooLarge));
        store.set("tmp/a", b"x", 0).unwrap();
        assert!(store.get("tmp/a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.get("tmp/a").is_none());
    }

    /// A write of the same size is made in place (no allocation), and is still a whole new
    /// write: a new token, the most recently used (no TTL), a renewed expiry (TTL), the same
    /// bytes accounted.
    #[test]
    fn same_size_writes_in_place_renew_order_expiry_and_token() {
        let weight = 2 + 100 + ENTRY_OVERHEAD;
        let store = SharedData::new(2 * weight as u64, vec![]);
        store.set("k1", &[1; 100], 0).unwrap();
        store.set("k2", &[2; 100], 0).unwrap();
        let (_, cas) = store.get("k1").unwrap();
        store.get("k2").unwrap();
        // k1 is now the least recently used; rewriting it makes it the most recent.
        store.set("k1", &[3; 100], cas).unwrap();
        assert_eq!(store.set("k1", &[4; 100], cas), Err(SetError::CasMismatch));
        assert_eq!(store.usage(), (2, 2 * weight));
        store.set("k3", &[5; 100], 0).unwrap();
        assert!(store.get("k2").is_none(), "k2 was the least recently used");
        assert_eq!(store.get("k1").unwrap().0, vec![3; 100]);

        // Margins of hundreds of milliseconds: a busy machine may stall this thread.
        let store = SharedData::new(1 << 20, vec![("t/".into(), Duration::from_millis(1000))]);
        store.set("t/k", &[0; 8], 0).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        store.set("t/k", &[1; 8], 0).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            store.get("t/k").unwrap().0,
            vec![1; 8],
            "the rewrite renewed its TTL"
        );
        std::thread::sleep(Duration::from_millis(700));
        assert!(store.get("t/k").is_none());
        assert_eq!(store.usage(), (0, 0));
    }

    /// A flood of new keys never evicts a live TTL entry (a bucket still refilling): once only
    /// those are left, new writes are refused, and the protected entry keeps its value.
    #[test]
    fn live_ttl_entries_are_never_evicted_writes_are_refused_instead() {
        let store = SharedData::new(2000, vec![("ratelimit/".into(), Duration::from_secs(60))]);
        store
            .set("ratelimit/limited-client", b"empty bucket", 0)
            .unwrap();
        store.set("plain", &[0; 100], 0).unwrap();
        let mut refused = 0;
        for i in 0..1000 {
            if store.set(&format!("ratelimit/junk-{i}"), &[0; 100], CREATE_ONLY_CAS)
                == Err(SetError::Full)
            {
                refused += 1;
            }
        }
        assert!(refused > 900, "{refused}");
        assert_eq!(
            store.get("ratelimit/limited-client").unwrap().0,
            b"empty bucket"
        );
        assert!(
            store.get("plain").is_none(),
            "entries without a TTL make room first"
        );
        let counters = store.counters();
        assert_eq!(counters.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.refused.load(Ordering::Relaxed), refused);
        // A refused overwrite keeps the old value.
        let (_, cas) = store.get("ratelimit/limited-client").unwrap();
        assert_eq!(
            store.set("ratelimit/limited-client", &[1; 1500], cas),
            Err(SetError::Full)
        );
        assert_eq!(
            store.get("ratelimit/limited-client").unwrap().0,
            b"empty bucket"
        );
    }

    #[test]
    fn expired_ttl_entries_make_room() {
        let store = SharedData::new(1000, vec![("tmp/".into(), Duration::from_millis(20))]);
        for i in 0..5 {
            store.set(&format!("tmp/{i}"), &[0; 100], 0).unwrap();
        }
        assert_eq!(store.set("tmp/late", &[0; 100], 0), Err(SetError::Full));
        std::thread::sleep(Duration::from_millis(40));
        store.set("tmp/late", &[0; 100], 0).unwrap();
        assert!(store.counters().expired.load(Ordering::Relaxed) >= 1);
    }
}
