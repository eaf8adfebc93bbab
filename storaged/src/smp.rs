//! `smp` (shared mount point) pools: a POSIX filesystem mounted at the same path on every node.
//! Volumes are kept exactly as in a local pool; in addition each node's storaged writes its
//! storage heartbeat there (`.heartbeats/NODE.json`), so that any node can tell whether
//! another still reaches the pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use triad_api::storage::{Heartbeat, Image, PoolUsage, Snapshot, Volume, VolumeRequest};

use crate::images::{ImageRecord, ImageWriter};

use crate::local::LocalPool;
use crate::{check_name, Pool, Result, StorageError};

const HEARTBEATS: &str = ".heartbeats";

#[derive(Debug)]
pub struct SmpPool {
    volumes: LocalPool,
    heartbeats: PathBuf,
    stop: Arc<AtomicBool>,
}

impl SmpPool {
    /// Opens the pool at `dir` and starts writing `node`'s heartbeat every `interval`.
    pub fn open(name: &str, dir: &Path, node: &str, interval: Duration) -> Result<Self> {
        check_name("node name", node)?;
        let volumes = LocalPool::open_as(name, dir, node)?;
        let heartbeats = dir.join(HEARTBEATS);
        std::fs::create_dir_all(&heartbeats).map_err(StorageError::io(format!(
            "creating {}",
            heartbeats.display()
        )))?;
        // Beats go on from where this node's last ones stopped.
        let mut beat = read(&heartbeats.join(format!("{node}.json")))
            .map(|h| h.beat)
            .unwrap_or(0);
        write(&heartbeats, node, beat + 1)?;
        beat += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let (dir_, node_, stop_) = (heartbeats.clone(), node.to_owned(), stop.clone());
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while !stop_.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    beat += 1;
                    // A pool we cannot write to is what others must notice: keep trying.
                    if let Err(e) = write(&dir_, &node_, beat) {
                        tracing::warn!("storage heartbeat: {e}");
                    }
                }
            })
            .map_err(StorageError::io("starting the heartbeat thread"))?;
        Ok(Self {
            volumes,
            heartbeats,
            stop,
        })
    }
}

impl Drop for SmpPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read(path: &Path) -> Option<Heartbeat> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes `node`'s heartbeat whole (a temporary file renamed over the old one), so a reader
/// never sees half of one.
fn write(dir: &Path, node: &str, beat: u64) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let heartbeat = Heartbeat {
        node: node.to_owned(),
        beat,
        written_unix_ms: now,
    };
    let path = dir.join(format!("{node}.json"));
    let tmp = dir.join(format!("{node}.json.partial"));
    let bytes = serde_json::to_vec(&heartbeat).unwrap_or_default();
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(StorageError::io(format!("writing {}", path.display())))
}

impl Pool for SmpPool {
    fn name(&self) -> &str {
        self.volumes.name()
    }

    fn create(&self, req: &VolumeRequest) -> Result<Volume> {
        self.volumes.create(req)
    }

    fn get(&self, id: &str) -> Result<Volume> {
        self.volumes.get(id)
    }

    fn list(&self) -> Result<Vec<Volume>> {
        self.volumes.list()
    }

    fn delete(&self, id: &str) -> Result<()> {
        self.volumes.delete(id)
    }

    fn grow(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        self.volumes.grow(id, size_bytes)
    }

    fn images(&self) -> Result<Vec<Image>> {
        self.volumes.images()
    }

    fn image_record(&self, id: &str) -> Result<Option<ImageRecord>> {
        self.volumes.image_record(id)
    }

    fn image(&self, id: &str) -> Result<Image> {
        self.volumes.image(id)
    }

    fn delete_image(&self, id: &str) -> Result<()> {
        self.volumes.delete_image(id)
    }

    fn image_writer(&self, id: &str, size: u64) -> Result<Box<dyn ImageWriter>> {
        self.volumes.image_writer(id, size)
    }

    fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot> {
        self.volumes.snapshot(id, name)
    }

    fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>> {
        self.volumes.snapshots(id)
    }

    fn rollback(&self, id: &str, name: &str) -> Result<()> {
        self.volumes.rollback(id, name)
    }

    fn delete_snapshot(&self, id: &str, name: &str) -> Result<()> {
        self.volumes.delete_snapshot(id, name)
    }

    fn usage(&self) -> Result<PoolUsage> {
        self.volumes.usage()
    }

    fn heartbeats(&self) -> Result<Vec<Heartbeat>> {
        let entries = std::fs::read_dir(&self.heartbeats).map_err(StorageError::io(format!(
            "reading {}",
            self.heartbeats.display()
        )))?;
        let mut beats: Vec<_> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read(&e.path()))
            .collect();
        beats.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(beats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_beats_on_the_shared_pool_and_goes_on_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("triad-smp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tick = Duration::from_millis(20);
        let a = SmpPool::open("shared", &dir, "node-a", tick).unwrap();
        let b = SmpPool::open("shared", &dir, "node-b", tick).unwrap();
        let first = a.heartbeats().unwrap();
        assert_eq!(first.len(), 2);
        std::thread::sleep(tick * 10);
        let later = b.heartbeats().unwrap();
        for (before, after) in first.iter().zip(&later) {
            assert_eq!(before.node, after.node);
            assert!(after.beat > before.beat, "{before:?} then {after:?}");
        }
        // Node b stops (dies): its beat stands still while a's goes on.
        drop(b);
        std::thread::sleep(tick * 3);
        let stopped = a.heartbeats().unwrap();
        std::thread::sleep(tick * 10);
        let now = a.heartbeats().unwrap();
        assert_eq!(now[1].beat, stopped[1].beat, "node-b still beats");
        assert!(now[0].beat > stopped[0].beat);
        // Back again, it counts on from where it was.
        let b = SmpPool::open("shared", &dir, "node-b", tick).unwrap();
        assert!(b.heartbeats().unwrap()[1].beat > now[1].beat);
        // Volumes are shared too.
        let v = a
            .create(&VolumeRequest {
                id: "v1".into(),
                name: "v1".into(),
                size_bytes: 1 << 20,
                source: triad_api::storage::VolumeSource::Blank,
                qos: None,
            })
            .unwrap();
        assert_eq!(b.get("v1").unwrap(), v);
        drop((a, b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
