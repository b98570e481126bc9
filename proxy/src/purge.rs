//! Applying a purge to this instance's cache: by category (tag) or by URL (its cache key, as
//! the route computes it). The admin endpoint applies the purges it receives, and with
//! `redis:` the cluster applies the ones other instances publish.

use std::sync::Arc;

use http::Uri;

use crate::cache::key::cache_key;
use crate::cache::storage::MokaStorage;
use crate::generation::Current;
use crate::metrics::Metrics;

/// What to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeOrder {
    Category(String),
    /// An absolute URL, or a path with `host` (default: the proxy's listen address).
    Url {
        url: String,
        host: Option<String>,
    },
}

impl PurgeOrder {
    /// The `kind` label of the purge metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PurgeOrder::Category(_) => "category",
            PurgeOrder::Url { .. } => "url",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    #[error("`url` is not a URL")]
    BadUrl,
    #[error("no route matches that path")]
    NoRoute,
    #[error("that route does not cache")]
    NotCached,
}

/// This instance's cache, seen from a purge.
#[derive(Debug, Clone)]
pub struct Purger {
    current: Current,
    cache: &'static MokaStorage,
    metrics: Arc<Metrics>,
}

impl Purger {
    pub fn new(current: Current, cache: &'static MokaStorage, metrics: Arc<Metrics>) -> Self {
        Self {
            current,
            cache,
            metrics,
        }
    }

    /// Removes what `order` names; how many entries went.
    pub fn apply(&self, order: &PurgeOrder) -> Result<usize, PurgeError> {
        let purged = match order {
            PurgeOrder::Category(category) => self.cache.purge_tag(category),
            PurgeOrder::Url { url, host } => self.purge_url(url, host.as_deref())?,
        };
        self.count(order.kind(), purged);
        Ok(purged)
    }

    /// Removes every entry (an instance that may have missed purges); how many went.
    pub fn everything(&self) -> usize {
        let purged = self.cache.purge_all();
        self.count("all", purged);
        purged
    }

    fn count(&self, kind: &str, purged: usize) {
        self.metrics.cache_purges.with_label_values(&[kind]).inc();
        self.metrics
            .cache_purged_entries
            .with_label_values(&[kind])
            .inc_by(u64::try_from(purged).unwrap_or(u64::MAX));
    }

    fn purge_url(&self, url: &str, host: Option<&str>) -> Result<usize, PurgeError> {
        let uri: Uri = url.parse().map_err(|_| PurgeError::BadUrl)?;
        let generation = self.current.load();
        let listen = generation.config.listen.to_string();
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or(host)
            .unwrap_or(&listen);
        let route = generation
            .config
            .router
            .route(uri.path())
            .ok_or(PurgeError::NoRoute)?;
        let policy = route.cache.as_ref().ok_or(PurgeError::NotCached)?;
        let key = cache_key(&route.name, host, uri.path(), uri.query(), policy);
        // The primary slot; other Vary variants are invalidated through it.
        Ok(usize::from(self.cache.purge_key(&key.to_compact())))
    }
}
