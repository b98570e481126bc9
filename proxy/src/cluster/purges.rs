//! Purge fan-out: a purge applied on one instance is appended to a Redis stream
//! (`{prefix}purges`, capped at [`STREAM_LENGTH`] entries); every instance reads the stream on a
//! connection of its own (blocking `XREAD`), applies the purges of the others and acknowledges
//! each in a set (`{prefix}purge-acks:{entry}`), which the originator counts until all the
//! instances alive have answered or `purge_ack_timeout` passes.
//!
//! An instance that lost Redis resumes reading after the last entry it read: what it missed
//! is replayed. It knows Redis still holds all of that when it is the same Redis process
//! (`run_id`) and the stream has received no more entries since than it still keeps
//! (`XINFO STREAM`: `entries-added` against `length`). Otherwise (Redis restarted, or the stream
//! was trimmed past it) the instance cannot know what it missed and drops its whole cache.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::streams::{StreamReadOptions, StreamReadReply};
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

/// Where this instance is in the stream: the last entry it read, how many entries the stream
/// had received up to it (Redis's `entries-added`), and which Redis process it read them from.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    last: String,
    read: u64,
    run_id: String,
}

/// What Redis says of the stream now (`INFO server` and `XINFO STREAM`).
#[derive(Debug, Clone, PartialEq)]
struct StreamState {
    run_id: String,
    /// `None`: no such stream.
    stream: Option<StreamCounts>,
}

#[derive(Debug, Clone, PartialEq)]
struct StreamCounts {
    length: u64,
    entries_added: u64,
    last_generated: String,
}

impl StreamState {
    /// A cursor at the stream's end (nothing of it to apply).
    fn end(&self) -> Cursor {
        let (last, read) = self.stream.as_ref().map_or_else(
            || ("0-0".to_string(), 0),
            |s| (s.last_generated.clone(), s.entries_added),
        );
        Cursor {
            last,
            read,
            run_id: self.run_id.clone(),
        }
    }

    /// Whether Redis still holds every entry added after `cursor`: the same Redis process (a
    /// restart may have lost the stream), the same stream (its count did not start over), and
    /// none of the entries since trimmed away.
    fn holds_everything_after(&self, cursor: &Cursor) -> bool {
        if self.run_id != cursor.run_id {
            return false;
        }
        match &self.stream {
            None => cursor.read == 0,
            Some(s) => s.entries_added >= cursor.read && s.length >= s.entries_added - cursor.read,
        }
    }
}

/// Reads the stream for as long as the cluster runs, reconnecting when Redis is lost.
pub(super) async fn read_loop(
    settings: RedisSettings,
    shared: std::sync::Arc<Shared>,
    instance: String,
) {
    let stream = stream_key(&settings.key_prefix);
    let mut cursor: Option<Cursor> = None;
    let mut reader: Option<Link> = None;
    while shared.running.load(Ordering::Relaxed) {
        let Some(link) = &reader else {
            match Link::connect_single(&settings).await {
                Ok(link) => match resume(&link, &stream, cursor.as_ref(), &shared).await {
                    Ok(resumed) => {
                        cursor = Some(resumed);
                        reader = Some(link);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "purge stream: resuming failed");
                        tokio::time::sleep(settings.sync_interval).await;
                    }
                },
                Err(_) => tokio::time::sleep(settings.sync_interval).await,
            }
            continue;
        };
        let Some(position) = cursor.as_mut() else {
            reader = None;
            continue;
        };
        if let Err(e) = read_once(link, &settings, &stream, position, &shared, &instance).await {
            tracing::warn!(error = %e, "purge stream lost: purges from other instances wait until Redis is back");
            reader = None;
            tokio::time::sleep(settings.sync_interval).await;
        }
    }
}

/// Where to read from: the stream's end at first; after a loss, where this instance stopped
/// if Redis still holds everything since, else the stream's end, with the whole cache dropped
/// (what was missed is unknown).
async fn resume(
    link: &Link,
    stream: &str,
    cursor: Option<&Cursor>,
    shared: &Shared,
) -> Result<Cursor, LinkError> {
    let state = stream_state(link, stream).await?;
    let Some(cursor) = cursor else {
        return Ok(state.end());
    };
    if state.holds_everything_after(cursor) {
        tracing::info!("purge stream back: replaying the purges missed while away");
        return Ok(cursor.clone());
    }
    let dropped = shared.purger.get().map_or(0, |p| p.everything());
    tracing::warn!(
        dropped,
        "purge stream: Redis no longer holds the purges this instance may have missed (restarted, or trimmed past them); dropped the whole cache"
    );
    Ok(state.end())
}

async fn stream_state(link: &Link, stream: &str) -> Result<StreamState, LinkError> {
    let mut connection = link.connection();
    let info: redis::InfoDict = link
        .bounded(
            redis::cmd("INFO")
                .arg("server")
                .query_async(&mut connection),
        )
        .await?;
    let run_id: String = info.get("run_id").unwrap_or_default();
    let exists: bool = link.bounded(connection.exists(stream)).await?;
    if !exists {
        return Ok(StreamState {
            run_id,
            stream: None,
        });
    }
    let fields: std::collections::HashMap<String, redis::Value> = link
        .bounded(
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(stream)
                .query_async(&mut connection),
        )
        .await?;
    let number = |name: &str| -> u64 {
        fields
            .get(name)
            .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
            .unwrap_or(0)
    };
    let last_generated = fields
        .get("last-generated-id")
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_else(|| "0-0".into());
    Ok(StreamState {
        run_id,
        stream: Some(StreamCounts {
            length: number("length"),
            entries_added: number("entries-added"),
            last_generated,
        }),
    })
}

async fn read_once(
    link: &Link,
    settings: &RedisSettings,
    stream: &str,
    cursor: &mut Cursor,
    shared: &Shared,
    instance: &str,
) -> Result<(), LinkError> {
    let block = Duration::from_millis(500);
    let options = StreamReadOptions::default()
        .block(block.as_millis() as usize)
        .count(100);
    let mut connection = link.connection();
    let reply: Option<StreamReadReply> = tokio::time::timeout(
        block + settings.command_timeout,
        connection.xread_options(&[stream], &[cursor.last.as_str()], &options),
    )
    .await
    .map_err(|_| LinkError::Timeout(block + settings.command_timeout))??;
    let Some(reply) = reply else {
        return Ok(());
    };
    for key in reply.keys {
        for entry in key.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
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
            cursor.last = entry.id.clone();
            cursor.read += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(run_id: &str, length: u64, entries_added: u64) -> StreamState {
        StreamState {
            run_id: run_id.into(),
            stream: Some(StreamCounts {
                length,
                entries_added,
                last_generated: format!("{entries_added}-0"),
            }),
        }
    }

    fn cursor(run_id: &str, read: u64) -> Cursor {
        Cursor {
            last: format!("{read}-0"),
            read,
            run_id: run_id.into(),
        }
    }

    /// Regression: an instance that started on an empty stream ("0-0") and lost Redis alone
    /// found the stream's first entry newer than "0-0" and took it for a trimmed stream,
    /// dropping its whole cache where a replay was due.
    #[test]
    fn what_was_missed_is_replayed_only_when_redis_holds_all_of_it() {
        // Started on no stream; two purges added while away; both held.
        let empty = StreamState {
            run_id: "a".into(),
            stream: None,
        };
        assert_eq!(empty.end(), cursor_at("0-0", 0, "a"));
        assert!(state("a", 2, 2).holds_everything_after(&empty.end()));
        // Read 5 of 8 added, 3 missed, 4 held: replay. Only 2 held: trimmed past us.
        assert!(state("a", 4, 8).holds_everything_after(&cursor("a", 5)));
        assert!(!state("a", 2, 8).holds_everything_after(&cursor("a", 5)));
        // Nothing missed.
        assert!(state("a", 0, 5).holds_everything_after(&cursor("a", 5)));
        // Redis restarted (another process): unknown, even when the counts look right.
        assert!(!state("b", 8, 8).holds_everything_after(&cursor("a", 5)));
        // The stream started over (deleted and added to again), or is gone.
        assert!(!state("a", 3, 3).holds_everything_after(&cursor("a", 5)));
        let gone = StreamState {
            run_id: "a".into(),
            stream: None,
        };
        assert!(!gone.holds_everything_after(&cursor("a", 5)));
        assert!(gone.holds_everything_after(&cursor("a", 0)));
    }

    fn cursor_at(last: &str, read: u64, run_id: &str) -> Cursor {
        Cursor {
            last: last.into(),
            read,
            run_id: run_id.into(),
        }
    }
}
