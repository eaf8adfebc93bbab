//! `local` pools: a directory on the node, one sparse raw file per volume (`ID.raw`) with a
//! small JSON record beside it (`ID.json`). A volume exists once its record does: a file is
//! made under a temporary name, made durable, renamed, and only then recorded, so files a crash
//! left without a record are half-made and are removed when the pool opens.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use triad_api::storage::{PoolUsage, Volume, VolumeRequest, VolumeSource};

use crate::{check_name, sparse, Pool, Result, StorageError};

/// What a pool keeps of a volume besides its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    name: String,
    size_bytes: u64,
    source: VolumeSource,
}

#[derive(Debug)]
pub struct LocalPool {
    name: String,
    dir: PathBuf,
    /// Changes are made one at a time, so checks (name taken, id exists) hold until done.
    changes: Mutex<()>,
}

const RAW: &str = "raw";
const RECORD: &str = "json";
/// Suffix of files still being made.
const PARTIAL: &str = "partial";

impl LocalPool {
    /// Opens (creating it if needed) the pool in `dir`, removing what an interrupted change
    /// left half-made.
    pub fn open(name: &str, dir: &Path) -> Result<Self> {
        check_name("pool name", name)?;
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io(format!("creating {}", dir.display())))?;
        let pool = Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            changes: Mutex::new(()),
        };
        pool.clean_up()?;
        Ok(pool)
    }

    fn clean_up(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(StorageError::io(format!("reading {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let orphan = match ext {
                Some(PARTIAL) => true,
                Some(RAW) => !path.with_extension(RECORD).exists(),
                _ => false,
            };
            if orphan {
                tracing::warn!("pool {}: removing half-made {}", self.name, path.display());
                std::fs::remove_file(&path)
                    .map_err(StorageError::io(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn record(&self, id: &str) -> Result<Option<Record>> {
        let path = self.path(id, RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StorageError::Io {
                    context: format!("reading {}", path.display()),
                    source: e.into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(format!("reading {}", path.display()))(e)),
        }
    }

    fn records(&self) -> Result<Vec<Record>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(StorageError::io(format!("reading {}", self.dir.display())))?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD) {
                continue;
            }
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if let Some(record) = self.record(id)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Writes `record` durably: a temporary file, synced, renamed over the old one.
    fn write_record(&self, record: &Record) -> Result<()> {
        let path = self.path(&record.id, RECORD);
        let tmp = self.path(&record.id, &format!("{RECORD}.{PARTIAL}"));
        let context = format!("writing {}", path.display());
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| StorageError::Io {
            context: context.clone(),
            source: e.into(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(StorageError::io(context))
    }

    fn volume(&self, record: &Record) -> Result<Volume> {
        let path = self.path(&record.id, RAW);
        let meta = std::fs::metadata(&path)
            .map_err(StorageError::io(format!("reading {}", path.display())))?;
        Ok(Volume {
            id: record.id.clone(),
            name: record.name.clone(),
            pool: self.name.clone(),
            size_bytes: record.size_bytes,
            allocated_bytes: meta.blocks() * 512,
            path,
        })
    }

    /// Makes the data file of a new volume: blank, or a sparse copy of `source`'s.
    fn make_data(&self, req: &VolumeRequest) -> Result<()> {
        let source = match &req.source {
            VolumeSource::Blank => None,
            VolumeSource::Volume { id } => {
                let source = self
                    .record(id)?
                    .ok_or_else(|| StorageError::NotFound(id.clone()))?;
                if req.size_bytes < source.size_bytes {
                    return Err(StorageError::Shrink {
                        id: req.id.clone(),
                        size: req.size_bytes,
                        current: source.size_bytes,
                    });
                }
                Some(source)
            }
        };
        let partial = self.path(&req.id, PARTIAL);
        let make = || -> std::io::Result<()> {
            let data = File::create(&partial)?;
            if let Some(source) = &source {
                let src = File::open(self.path(&source.id, RAW))?;
                sparse::copy(&src, &data, source.size_bytes)?;
            }
            data.set_len(req.size_bytes)?;
            data.sync_all()?;
            std::fs::rename(&partial, self.path(&req.id, RAW))
        };
        make().map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            StorageError::io(format!("making {}", partial.display()))(e)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pool for LocalPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, req: &VolumeRequest) -> Result<Volume> {
        check_name("volume id", &req.id)?;
        check_name("volume name", &req.name)?;
        check_size(req.size_bytes)?;
        let _changes = self.lock();
        let wanted = Record {
            id: req.id.clone(),
            name: req.name.clone(),
            size_bytes: req.size_bytes,
            source: req.source.clone(),
        };
        if let Some(existing) = self.record(&req.id)? {
            let what = if existing.name != wanted.name {
                "name"
            } else if existing.size_bytes != wanted.size_bytes {
                "size"
            } else if existing.source != wanted.source {
                "source"
            } else {
                return self.volume(&existing);
            };
            return Err(StorageError::Conflict {
                id: req.id.clone(),
                what,
            });
        }
        if let Some(other) = self.records()?.into_iter().find(|r| r.name == req.name) {
            return Err(StorageError::NameTaken {
                name: req.name.clone(),
                by: other.id,
            });
        }
        self.make_data(req)?;
        self.write_record(&wanted)?;
        self.volume(&wanted)
    }

    fn get(&self, id: &str) -> Result<Volume> {
        check_name("volume id", id)?;
        let record = self
            .record(id)?
            .ok_or_else(|| StorageError::NotFound(id.to_owned()))?;
        self.volume(&record)
    }

    fn list(&self) -> Result<Vec<Volume>> {
        self.records()?.iter().map(|r| self.volume(r)).collect()
    }

    fn delete(&self, id: &str) -> Result<()> {
        check_name("volume id", id)?;
        let _changes = self.lock();
        // The record goes first: from then on the volume does not exist, and a crash before
        // the data file goes leaves an orphan the next open removes.
        for ext in [RECORD, RAW] {
            let path = self.path(id, ext);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(format!("removing {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    fn grow(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        check_name("volume id", id)?;
        let _changes = self.lock();
        let mut record = self
            .record(id)?
            .ok_or_else(|| StorageError::NotFound(id.to_owned()))?;
        if size_bytes < record.size_bytes {
            return Err(StorageError::Shrink {
                id: id.to_owned(),
                size: size_bytes,
                current: record.size_bytes,
            });
        }
        check_size(size_bytes)?;
        let path = self.path(id, RAW);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(size_bytes).and_then(|()| f.sync_all()))
            .map_err(StorageError::io(format!("growing {}", path.display())))?;
        record.size_bytes = size_bytes;
        self.write_record(&record)?;
        self.volume(&record)
    }

    fn usage(&self) -> Result<PoolUsage> {
        let volumes = self.list()?;
        let fs = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| StorageError::Io {
            context: format!("statvfs {}", self.dir.display()),
            source: e.into(),
        })?;
        let total = fs.blocks() * fs.fragment_size();
        let free = fs.blocks_available() * fs.fragment_size();
        Ok(PoolUsage {
            provisioned_bytes: volumes.iter().map(|v| v.size_bytes).sum(),
            allocated_bytes: volumes.iter().map(|v| v.allocated_bytes).sum(),
            total_bytes: total,
            free_bytes: free,
            warning: crate::use_warning(&self.name, total, free),
        })
    }
}

/// Sizes are whole 512-byte sectors, as disks are.
fn check_size(size_bytes: u64) -> Result<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(512) {
        return Err(StorageError::Invalid {
            what: "size_bytes",
            value: size_bytes.to_string(),
            why: "must be a positive multiple of 512",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("triad-local-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn req(id: &str, name: &str, size: u64) -> VolumeRequest {
        VolumeRequest {
            id: id.into(),
            name: name.into(),
            size_bytes: size,
            source: VolumeSource::Blank,
        }
    }

    #[test]
    fn creates_are_idempotent_by_id_and_names_are_unique() {
        let dir = Dir::new("create");
        let pool = LocalPool::open("p", &dir.0).unwrap();
        let v = pool.create(&req("a1", "root", 1 << 30)).unwrap();
        assert_eq!((v.size_bytes, v.pool.as_str()), (1 << 30, "p"));
        assert!(v.allocated_bytes < 1 << 20, "thin: {}", v.allocated_bytes);
        assert_eq!(
            pool.create(&req("a1", "root", 1 << 30)).unwrap(),
            v,
            "a retry"
        );
        let err = pool
            .create(&req("a1", "root", 2 << 30))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "volume a1 exists already with another size");
        let err = pool
            .create(&req("b2", "root", 1 << 20))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "volume name root is taken by volume a1");
        for (bad, expect) in [
            (req("../x", "n", 512), "volume id \"../x\""),
            (req("c3", "", 512), "volume name \"\""),
            (req("c3", "n", 1000), "size_bytes \"1000\""),
            (req("c3", "n", 0), "size_bytes \"0\""),
        ] {
            let err = pool.create(&bad).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{err}");
        }
        assert_eq!(pool.list().unwrap(), vec![v]);
    }

    #[test]
    fn clones_copy_data_not_holes_and_volumes_only_grow() {
        let dir = Dir::new("clone");
        let pool = LocalPool::open("p", &dir.0).unwrap();
        let image = pool.create(&req("img", "debian", 256 << 20)).unwrap();
        let file = File::options().write(true).open(&image.path).unwrap();
        file.write_all_at(b"boot sector", 0).unwrap();
        file.write_all_at(b"root fs", 100 << 20).unwrap();
        let clone = VolumeRequest {
            source: VolumeSource::Volume { id: "img".into() },
            ..req("vm1", "vm1-root", 512 << 20)
        };
        let v = pool.create(&clone).unwrap();
        let bytes = std::fs::read(&v.path).unwrap();
        assert_eq!(bytes.len(), 512 << 20);
        assert_eq!(&bytes[..11], b"boot sector");
        assert_eq!(&bytes[100 << 20..(100 << 20) + 7], b"root fs");
        assert!(
            v.allocated_bytes < 1 << 20,
            "holes filled: {}",
            v.allocated_bytes
        );
        let smaller = VolumeRequest {
            size_bytes: 1 << 20,
            ..clone.clone()
        };
        let smaller = VolumeRequest {
            id: "vm2".into(),
            name: "vm2".into(),
            ..smaller
        };
        assert!(matches!(
            pool.create(&smaller),
            Err(StorageError::Shrink { .. })
        ));
        let missing = VolumeRequest {
            source: VolumeSource::Volume { id: "nope".into() },
            ..req("vm3", "vm3", 1 << 20)
        };
        assert_eq!(
            pool.create(&missing).unwrap_err().to_string(),
            "volume nope not found"
        );
        assert_eq!(pool.grow("vm1", 1 << 30).unwrap().size_bytes, 1 << 30);
        assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 1 << 30);
        let err = pool.grow("vm1", 1 << 20).unwrap_err().to_string();
        assert_eq!(
            err,
            "volume vm1: 1048576 bytes is smaller than its 1073741824; volumes only grow"
        );
        let usage = pool.usage().unwrap();
        assert_eq!(usage.provisioned_bytes, (256 << 20) + (1 << 30));
        assert!(usage.allocated_bytes < 1 << 20 && usage.total_bytes >= usage.free_bytes);
        // Nothing half-made was left by the failed creates.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 4);
    }

    #[test]
    fn deletes_are_idempotent_and_half_made_files_go_when_the_pool_opens() {
        let dir = Dir::new("delete");
        let pool = LocalPool::open("p", &dir.0).unwrap();
        let v = pool.create(&req("a1", "a", 1 << 20)).unwrap();
        pool.delete("a1").unwrap();
        pool.delete("a1").unwrap();
        assert!(!v.path.exists());
        assert_eq!(
            pool.get("a1").unwrap_err().to_string(),
            "volume a1 not found"
        );
        // A crash mid-clone, and one between a record's removal and its data's.
        std::fs::write(dir.0.join("b2.partial"), b"half").unwrap();
        std::fs::write(dir.0.join("c3.raw"), b"orphan").unwrap();
        std::fs::write(dir.0.join("d4.json.partial"), b"{").unwrap();
        let kept = pool.create(&req("e5", "e", 1 << 20)).unwrap();
        drop(pool);
        let pool = LocalPool::open("p", &dir.0).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(pool.get("e5").unwrap(), kept);
    }
}
