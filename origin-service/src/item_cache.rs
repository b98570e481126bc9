//! The product-detail cache: rendered representations by product id, bounded by bytes and
//! expired by TTL (moka). Concurrent misses for one id share a single load.

use std::future::Future;
use std::sync::Arc;

use moka::future::Cache;

use crate::config::ItemCacheConfig;
use crate::http::representation::Representation;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ItemCache {
    cache: Cache<i64, Arc<Representation>>,
    metrics: Arc<Metrics>,
}

impl ItemCache {
    pub fn new(cfg: &ItemCacheConfig, metrics: Arc<Metrics>) -> Self {
        let cache = Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_id: &i64, rep: &Arc<Representation>| rep.weight())
            .time_to_live(cfg.ttl)
            .build();
        Self { cache, metrics }
    }

    /// The cached representation, or the result of `load` (stored only when it succeeds).
    pub async fn get_or_load<E, F>(&self, id: i64, load: F) -> Result<Arc<Representation>, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Arc<Representation>, E>>,
    {
        let entry = self.cache.entry(id).or_try_insert_with(load).await?;
        let result = if entry.is_fresh() { "miss" } else { "hit" };
        self.metrics.item_cache.with_label_values(&[result]).inc();
        Ok(entry.into_value())
    }

    /// Brings the size gauges up to date (called when /metrics is scraped).
    pub async fn observe(&self) {
        self.cache.run_pending_tasks().await;
        let entries = i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX);
        let bytes = i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX);
        self.metrics.item_cache_entries.set(entries);
        self.metrics.item_cache_bytes.set(bytes);
    }
}
