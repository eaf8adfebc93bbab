//! The event log: every change to a VM, and every refused or failed ensure, numbered across
//! restarts (`events.jsonl`, one event a line; the newest are also kept in memory).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use triad_api::hostd::{HostEvent, HostEventKind};

/// How many events `GET /events` can go back; the file is cut back to this many when it
/// holds four times as many.
const KEEP: usize = 1000;

#[derive(Debug)]
pub struct Events {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Wakes those waiting for events (`after_or_wait`).
    new: Condvar,
}

#[derive(Debug)]
struct Inner {
    recent: VecDeque<HostEvent>,
    next_seq: u64,
    lines_in_file: usize,
}

impl Events {
    /// The log in `dir`, continuing the numbering of what it holds.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("events.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<HostEvent> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let next_seq = all.last().map_or(1, |e| e.seq + 1);
        let lines_in_file = all.len();
        let recent = all.into_iter().rev().take(KEEP).rev().collect();
        Self {
            path,
            inner: Mutex::new(Inner {
                recent,
                next_seq,
                lines_in_file,
            }),
            new: Condvar::new(),
        }
    }

    pub fn emit(&self, vm: Option<&str>, kind: HostEventKind, message: impl Into<String>) {
        let message = message.into();
        match kind {
            HostEventKind::EnsureFailed | HostEventKind::VmExited => {
                tracing::warn!(vm, ?kind, "{message}")
            }
            _ => tracing::info!(vm, ?kind, "{message}"),
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let event = HostEvent {
            seq: inner.next_seq,
            unix_ms: unix_ms(),
            vm: vm.map(str::to_owned),
            kind,
            message,
        };
        inner.next_seq += 1;
        if let Err(e) = self.append(&event) {
            tracing::warn!("writing {}: {e}", self.path.display());
        }
        inner.lines_in_file += 1;
        inner.recent.push_back(event);
        if inner.recent.len() > KEEP {
            inner.recent.pop_front();
        }
        if inner.lines_in_file > 4 * KEEP {
            match self.rewrite(&inner.recent) {
                Ok(()) => inner.lines_in_file = inner.recent.len(),
                Err(e) => tracing::warn!("cutting back {}: {e}", self.path.display()),
            }
        }
        self.new.notify_all();
    }

    /// The events after `seq`; when there are none yet, waits up to `wait` for one. The
    /// controller waits here to hear of a change at once.
    pub fn after_or_wait(&self, seq: u64, wait: Duration) -> Vec<HostEvent> {
        let deadline = Instant::now() + wait;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<HostEvent> = inner
                .recent
                .iter()
                .filter(|e| e.seq > seq)
                .cloned()
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if !found.is_empty() || left.is_zero() {
                return found;
            }
            inner = self
                .new
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The events after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<HostEvent> {
        self.after_or_wait(seq, Duration::ZERO)
    }

    fn append(&self, event: &HostEvent) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        f.write_all(&line)
    }

    fn rewrite(&self, events: &VecDeque<HostEvent>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for e in events {
            let mut line = serde_json::to_vec(e)?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        f.sync_all()?;
        std::fs::rename(tmp, &self.path)
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_goes_on_after_a_restart_and_after_filters() {
        let dir = std::env::temp_dir().join(format!("hostd-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = Events::open(&dir);
        log.emit(Some("a"), HostEventKind::VmStarted, "one");
        log.emit(None, HostEventKind::HostdStarted, "two");
        drop(log);
        let log = Events::open(&dir);
        log.emit(Some("a"), HostEventKind::VmStopped, "three");
        let seqs: Vec<u64> = log.after(0).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(log.after(2)[0].message, "three");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_waiter_wakes_for_a_new_event_and_not_before() {
        let dir = std::env::temp_dir().join(format!("hostd-events-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::sync::Arc::new(Events::open(&dir));
        log.emit(None, HostEventKind::HostdStarted, "old");
        assert!(
            log.after_or_wait(1, Duration::from_millis(50)).is_empty(),
            "nothing new: empty after the wait"
        );
        let emitter = log.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            emitter.emit(Some("a"), HostEventKind::VmExited, "new");
        });
        let got = log.after_or_wait(1, Duration::from_secs(30));
        assert_eq!(
            got.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
