//! Purge fan-out: a purge applied on one instance is appended to a Redis stream
//! (`{prefix}purges`, capped at [`STREAM_LENGTH`] entries); every instance reads the stream on a
//! connection of its own (blocking `XREAD`), applies the purges of the others and acknowledges
//! each in a set (`{prefix}purge-acks:{entry}`), which the originator counts until all the
//! instances alive have answered or `purge_ack_timeout` passes.
//!
//! An instance that lost Redis resumes reading after the last entry it applied: what it missed
//! is replayed. If Redis no longer holds that entry (the stream was trimmed past it, or Redis
//! restarted without persistence and the stream is new), the instance cannot know what it
//! missed and drops its whole cache.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use super::link::{Link, LinkError};
use super::Shared;
use crate::config::redis::RedisSettings;
use crate::purge::PurgeOrder;

/// Entries the stream keeps (approximately: `MAXLEN ~`).
pub const STREAM_LENGTH: u64 = 10_000;

/// How a purge's fan-out went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acks {
    /// Instances that applied it, this one included.
    pub acknowledged: u64,
    /// Instances alive at the last heartbeat.
    pub alive: u64,
    /// Whether the purge reached Redis at all.
    pub reached_redis: bool,
}

fn stream_key(prefix: &str) -> String {
    format!("{prefix}purges")
}

fn acks_key(prefix: &str, entry: &str) -> String {
    format!("{prefix}purge-acks:{entry}")
}

/// Publishes `order` and counts acknowledgements until every live instance answered or the
/// timeout passed.
pub async fn fan_out(
    link: &Link,
    settings: &RedisSettings,
    instance: &str,
    alive: u64,
    order: &PurgeOrder,
) -> Result<u64, LinkError> {
    let (kind, value, host) = match order {
        PurgeOrder::Category(category) => ("category", category.as_str(), ""),
        PurgeOrder::Url { url, host } => ("url", url.as_str(), host.as_deref().unwrap_or("")),
    };
    let mut connection = link.connection();
    let entry: String = link
        .bounded(
            redis::cmd("XADD")
                .arg(stream_key(&settings.key_prefix))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*")
                .arg("from")
                .arg(instance)
                .arg("kind")
                .arg(kind)
                .arg("value")
                .arg(value)
                .arg("host")
                .arg(host)
                .query_async(&mut connection),
        )
        .await?;
    let deadline = Instant::now() + settings.purge_ack_timeout;
    let key = acks_key(&settings.key_prefix, &entry);
    loop {
        let others: u64 = link.bounded(connection.scard(&key)).await?;
        if others + 1 >= alive || Instant::now() >= deadline {
            return Ok(others);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the stream for as long as the cluster runs, reconnecting when Redis is lost.
pub(super) async fn read_loop(
    settings: RedisSettings,
    shared: std::sync::Arc<Shared>,
    instance: String,
) {
    let stream = stream_key(&settings.key_prefix);
    let mut last: Option<String> = None;
    let mut reader: Option<Link> = None;
    let mut lost = false;
    while shared.running.load(Ordering::Relaxed) {
        let Some(link) = &reader else {
            match Link::connect_single(&settings).await {
                Ok(link) => {
                    if let Err(e) = resume(&link, &stream, &mut last, lost, &shared).await {
                        tracing::debug!(error = %e, "purge stream: resuming failed");
                        tokio::time::sleep(settings.sync_interval).await;
                        continue;
                    }
                    lost = false;
                    reader = Some(link);
                }
                Err(_) => tokio::time::sleep(settings.sync_interval).await,
            }
            continue;
        };
        match read_once(link, &settings, &stream, &mut last, &shared, &instance).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "purge stream lost: purges from other instances wait until Redis is back");
                reader = None;
                lost = true;
                tokio::time::sleep(settings.sync_interval).await;
            }
        }
    }
}

/// Where to read from: the stream's end at first; after a loss, the last entry applied if
/// Redis still holds it, else everything is dropped (what was missed is unknown).
async fn resume(
    link: &Link,
    stream: &str,
    last: &mut Option<String>,
    lost: bool,
    shared: &Shared,
) -> Result<(), LinkError> {
    let mut connection = link.connection();
    match last.as_deref() {
        None => {
            let newest: StreamRangeReply = link
                .bounded(connection.xrevrange_count(stream, "+", "-", 1))
                .await?;
            *last = Some(
                newest
                    .ids
                    .first()
                    .map_or_else(|| "0-0".to_string(), |e| e.id.clone()),
            );
        }
        Some(seen) if lost => {
            let first: StreamRangeReply = link
                .bounded(connection.xrange_count(stream, "-", "+", 1))
                .await?;
            let first = first.ids.first().map(|e| e.id.clone());
            let still_held = match &first {
                Some(first) => entry_order(first) <= entry_order(seen),
                None => seen == "0-0",
            };
            if !still_held {
                let dropped = shared.purger.get().map_or(0, |p| p.everything());
                tracing::warn!(
                    dropped,
                    "purge stream: Redis no longer holds the purges this instance may have missed; dropped the whole cache"
                );
                if let Some(first) = first {
                    // Read from the oldest entry Redis has: applying one twice is harmless.
                    *last = Some(previous_id(&first));
                } else {
                    *last = Some("0-0".to_string());
                }
            } else {
                tracing::info!("purge stream back: replaying the purges missed while away");
            }
        }
        Some(_) => {}
    }
    Ok(())
}

async fn read_once(
    link: &Link,
    settings: &RedisSettings,
    stream: &str,
    last: &mut Option<String>,
    shared: &Shared,
    instance: &str,
) -> Result<(), LinkError> {
    let from = last.clone().unwrap_or_else(|| "0-0".to_string());
    let block = Duration::from_millis(500);
    let options = StreamReadOptions::default()
        .block(block.as_millis() as usize)
        .count(100);
    let mut connection = link.connection();
    let reply: Option<StreamReadReply> = tokio::time::timeout(
        block + settings.command_timeout,
        connection.xread_options(&[stream], &[from.as_str()], &options),
    )
    .await
    .map_err(|_| LinkError::Timeout(block + settings.command_timeout))??;
    let Some(reply) = reply else {
        return Ok(());
    };
    for key in reply.keys {
        for entry in key.ids {
            let field = |name: &str| -> String {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                    .unwrap_or_default()
            };
            if field("from") != instance {
                let order = match field("kind").as_str() {
                    "category" => Some(PurgeOrder::Category(field("value"))),
                    "url" => Some(PurgeOrder::Url {
                        url: field("value"),
                        host: Some(field("host")).filter(|h| !h.is_empty()),
                    }),
                    _ => None,
                };
                if let (Some(order), Some(purger)) = (order, shared.purger.get()) {
                    if let Err(e) = purger.apply(&order) {
                        tracing::warn!(error = %e, ?order, "a purge from another instance did not apply here");
                    }
                }
                let acks = acks_key(&settings.key_prefix, &entry.id);
                let mut writer = link.connection();
                let _: () = link
                    .bounded(
                        redis::pipe()
                            .sadd(&acks, instance)
                            .ignore()
                            .pexpire(&acks, 60_000)
                            .ignore()
                            .query_async(&mut writer),
                    )
                    .await?;
            }
            *last = Some(entry.id.clone());
        }
    }
    Ok(())
}

/// A stream entry id (`ms-seq`) as a comparable pair.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The id just before `id` (so an exclusive read from it includes `id`).
fn previous_id(id: &str) -> String {
    match entry_order(id) {
        (0, 0) => "0-0".into(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        assert!(entry_order("1700000000000-1") > entry_order("1700000000000-0"));
        assert!(entry_order("1700000000001-0") > entry_order("1700000000000-9"));
        assert_eq!(previous_id("5-0"), format!("4-{}", u64::MAX));
        assert_eq!(previous_id("5-3"), "5-2");
        assert!(entry_order(&previous_id("5-0")) < entry_order("5-0"));
    }
}
