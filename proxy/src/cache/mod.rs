//! The edge cache. `storage.rs`: pingora-cache `Storage` backed by moka, bounded by bytes, with a
//! category tag index for purges. (Cache key, policy and purge endpoint: next steps of issue 5.)

pub mod cacheability;
pub mod key;
pub mod storage;
