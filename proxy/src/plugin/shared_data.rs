//! The host-wide shared data store every VM of every plugin sees (`proxy_get_shared_data` /
//! `proxy_set_shared_data`): values with compare-and-swap tokens, bounded in bytes (the oldest
//! writes are evicted first), and optionally expiring by key prefix - what the ABI lacks, added
//! without changing it.
//!
//! Creating a key is the one write plain CAS cannot guard: a plugin that read "absent" and writes
//! with CAS 0 overwrites whatever another VM created meanwhile, with all the updates made since.
//! [`CREATE_ONLY_CAS`] closes that gap within the ABI: no entry ever holds that token, so a write
//! carrying it succeeds only where the key is absent (or expired), exactly as on Envoy, whose
//! counter reaches it only after 2^32 writes.

use std::collections::{BTreeMap, HashMap};
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
    written: u64,
    expires: Option<Instant>,
}

impl Entry {
    fn weight(&self, key: &str) -> usize {
        key.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Write sequence -> key: eviction order.
    by_age: BTreeMap<u64, String>,
    bytes: usize,
    next_cas: u32,
    next_write: u64,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// The caller's CAS token is stale: someone wrote in between.
    CasMismatch,
    /// The entry alone is larger than the whole store.
    TooLarge,
}

#[derive(Debug)]
pub struct SharedData {
    inner: Mutex<Inner>,
    max_bytes: usize,
    /// (prefix, ttl), longest prefix first.
    ttl_by_prefix: Vec<(String, Duration)>,
}

impl SharedData {
    pub fn new(max_bytes: u64, mut ttl_by_prefix: Vec<(String, Duration)>) -> Self {
        ttl_by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            inner: Mutex::default(),
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

    /// The value and its CAS token; expired entries are gone.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match inner.entries.get(key) {
            Some(entry) if entry.expires.is_some_and(|at| at <= now) => {
                inner.remove(key);
                None
            }
            Some(entry) => Some((entry.value.clone(), entry.cas)),
            None => None,
        }
    }

    /// Writes `value`; with a non-zero `cas`, only if the entry still has that token (an absent
    /// or expired entry accepts any token, as Envoy does; so [`CREATE_ONLY_CAS`], which no
    /// entry holds, creates or fails).
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let weight = key.len() + value.len() + ENTRY_OVERHEAD;
        if weight > self.max_bytes {
            return Err(SetError::TooLarge);
        }
        let expires = self.ttl(key).map(|ttl| Instant::now() + ttl);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(entry) = inner.entries.get(key) {
            let live = entry.expires.is_none_or(|at| at > now);
            if cas != 0 && live && entry.cas != cas {
                return Err(SetError::CasMismatch);
            }
            inner.remove(key);
        }
        inner.evict_for(weight, self.max_bytes, now);
        inner.next_cas = inner.next_token();
        inner.next_write += 1;
        let entry = Entry {
            value: value.to_vec(),
            cas: inner.next_cas,
            written: inner.next_write,
            expires,
        };
        inner.bytes += weight;
        inner.by_age.insert(entry.written, key.to_string());
        inner.entries.insert(key.to_string(), entry);
        Ok(())
    }

    /// (entries, bytes).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
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

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.weight(key);
            self.by_age.remove(&entry.written);
        }
    }

    /// Makes room for `weight` more bytes: expired entries first, then the oldest writes.
    fn evict_for(&mut self, weight: usize, max_bytes: usize, now: Instant) {
        if self.bytes + weight <= max_bytes {
            return;
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        while self.bytes + weight > max_bytes {
            let Some((_, key)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= entry.weight(&key);
            }
        }
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
        store.inner.lock().unwrap().next_cas = CREATE_ONLY_CAS - 2;
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
    fn bounded_by_bytes_oldest_first_and_prefix_ttl() {
        let store = SharedData::new(1000, vec![("tmp/".into(), Duration::from_millis(20))]);
        for i in 0..20 {
            store.set(&format!("k{i}"), &[0; 100], 0).unwrap();
        }
        let (entries, bytes) = store.usage();
        assert!(bytes <= 1000 && entries < 20, "{entries} {bytes}");
        assert!(store.get("k0").is_none() && store.get("k19").is_some());
        assert_eq!(store.set("big", &[0; 2000], 0), Err(SetError::TooLarge));
        store.set("tmp/a", b"x", 0).unwrap();
        assert!(store.get("tmp/a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.get("tmp/a").is_none());
    }
}
