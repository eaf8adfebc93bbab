//! What happened on the node's pools, for operators and the controller to read
//! (`GET /events?after=SEQ`): pools crossing the space warning or going out of reach, imports
//! ending, clients fenced. The last `KEEP` events are kept in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use triad_api::storage::{Event, EventKind, PoolUsage};

use crate::{Pool, StorageError};

const KEEP: usize = 1000;

#[derive(Debug, Default)]
pub struct Events {
    log: Mutex<(u64, VecDeque<Event>)>,
}

impl Events {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, kind: EventKind, pool: &str, message: impl Into<String>) {
        let message = message.into();
        match kind {
            EventKind::PoolWarning | EventKind::PoolUnreachable | EventKind::ImageFailed => {
                tracing::warn!(pool, "{message}")
            }
            _ => tracing::info!(pool, "{message}"),
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.0 += 1;
        let seq = log.0;
        log.1.push_back(Event {
            seq,
            unix_ms,
            kind,
            pool: pool.to_owned(),
            message,
        });
        if log.1.len() > KEEP {
            log.1.pop_front();
        }
    }

    /// The events after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<Event> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

/// How a pool last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warning,
    Unreachable,
}

/// Turns what pools' space looks like, time after time, into events on changes only.
#[derive(Debug, Default)]
pub struct UsageWatch {
    last: HashMap<String, Level>,
}

impl UsageWatch {
    pub fn observe(
        &mut self,
        pool: &str,
        usage: &Result<PoolUsage, StorageError>,
    ) -> Option<(EventKind, String)> {
        let (level, event) = match usage {
            Ok(PoolUsage {
                warning: Some(w), ..
            }) => (Level::Warning, (EventKind::PoolWarning, w.clone())),
            Ok(usage) => (
                Level::Ok,
                (
                    EventKind::PoolOk,
                    format!(
                        "pool {pool}: {} of {} bytes free",
                        usage.free_bytes, usage.total_bytes
                    ),
                ),
            ),
            Err(e) => (
                Level::Unreachable,
                (EventKind::PoolUnreachable, e.to_string()),
            ),
        };
        let before = self.last.insert(pool.to_owned(), level);
        // A pool that starts out fine says nothing; any other change is news.
        match (before, level) {
            (None, Level::Ok) => None,
            (before, now) if before == Some(now) => None,
            _ => Some(event),
        }
    }
}

/// Looks at every pool's space every `every`, on a thread of its own, and records changes.
pub fn watch(pools: Vec<Arc<dyn Pool>>, events: Arc<Events>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("usage-watch".into())
        .spawn(move || {
            let mut watch = UsageWatch::default();
            loop {
                for pool in &pools {
                    if let Some((kind, message)) = watch.observe(pool.name(), &pool.usage()) {
                        events.push(kind, pool.name(), message);
                    }
                }
                std::thread::sleep(every);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("starting the usage watch: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(warning: Option<&str>) -> Result<PoolUsage, StorageError> {
        Ok(PoolUsage {
            provisioned_bytes: 0,
            allocated_bytes: 0,
            total_bytes: 100,
            free_bytes: 20,
            warning: warning.map(str::to_owned),
        })
    }

    #[test]
    fn only_changes_in_a_pools_state_are_events() {
        let mut watch = UsageWatch::default();
        assert_eq!(
            watch.observe("p", &usage(None)),
            None,
            "fine from the start"
        );
        let (kind, msg) = watch.observe("p", &usage(Some("80% used"))).unwrap();
        assert_eq!((kind, msg.as_str()), (EventKind::PoolWarning, "80% used"));
        assert_eq!(watch.observe("p", &usage(Some("81% used"))), None);
        let down = Err(StorageError::Unsupported("cluster down".into()));
        assert_eq!(
            watch.observe("p", &down).unwrap().0,
            EventKind::PoolUnreachable
        );
        assert_eq!(watch.observe("p", &down), None);
        assert_eq!(
            watch.observe("p", &usage(None)).unwrap().0,
            EventKind::PoolOk
        );
        assert_eq!(
            watch.observe("q", &usage(Some("x"))).unwrap().0,
            EventKind::PoolWarning,
            "a pool that starts out past the threshold says so"
        );
    }

    #[test]
    fn events_are_numbered_and_read_from_where_a_reader_left_off() {
        let events = Events::new();
        for i in 0..(KEEP + 5) {
            events.push(EventKind::ImageReady, "p", format!("image {i}"));
        }
        let all = events.after(0);
        assert_eq!(all.len(), KEEP, "only the last ones are kept");
        assert_eq!(all[0].seq, 6);
        let last = events.after(all[KEEP - 2].seq);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].message, format!("image {}", KEEP + 4));
    }
}
