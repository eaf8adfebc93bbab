//! `local` pools: a directory on the node, one sparse raw file per volume (`ID.raw`) with a
//! small JSON record beside it (`ID.json`). A volume exists once its record does: a file is
//! made under a temporary name, made durable, renamed, and only then recorded, so files a crash
//! left without a record are half-made and are removed when the pool opens.
//!
//! Snapshots are files too (`ID.snapshots/NAME.raw`): reflinks where the filesystem has them
//! (XFS, Btrfs), so they are taken in an instant even under a running VM; elsewhere sparse
//! copies, taken only while no VMM has the volume open (it holds the file's lock), since a
//! copy of a disk being written is no snapshot.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use triad_api::storage::{Image, PoolUsage, Snapshot, Volume, VolumeRequest, VolumeSource};

use crate::images::{ImageRecord, ImageWriter};

use crate::{
    check_name, check_not_smaller, check_size, sparse, Pool, Record, Result, StorageError,
};

#[derive(Debug)]
pub struct LocalPool {
    name: String,
    dir: PathBuf,
    /// This node's suffix for files being made.
    partial: String,
    /// Changes are made one at a time, so checks (name taken, id exists) hold until done.
    changes: Mutex<()>,
}

const RAW: &str = "raw";
const RECORD: &str = "json";
/// Suffix of a volume's snapshot directory.
const SNAPSHOTS: &str = "snapshots";
/// The directory of the pool's images, kept as volumes are: `ID.raw` and `ID.json`.
const IMAGES: &str = "images";
/// Suffix of files still being made, followed by `-OWNER`: on a shared mount every node
/// removes only its own, and another's once it is `STALE` (that node is gone).
const PARTIAL: &str = "partial";
/// How old another node's unfinished file must be to be taken for a dead node's.
const STALE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// How old a data file without a record must be to be taken for one a crash left (between
/// its rename and its record, which follow within milliseconds).
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

impl LocalPool {
    /// Opens (creating it if needed) the pool in `dir`, removing what an interrupted change
    /// left half-made.
    pub fn open(name: &str, dir: &Path) -> Result<Self> {
        Self::open_as(name, dir, "local")
    }

    /// As `open`, for a directory other nodes share: `owner` (this node) tags the files it
    /// makes until they are whole.
    pub fn open_as(name: &str, dir: &Path, owner: &str) -> Result<Self> {
        check_name("pool name", name)?;
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io(format!("creating {}", dir.display())))?;
        let pool = Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            partial: format!("{PARTIAL}-{owner}"),
            changes: Mutex::new(()),
        };
        pool.clean_up()?;
        Ok(pool)
    }

    fn clean_up(&self) -> Result<()> {
        self.clean_up_in(&self.dir)?;
        self.clean_up_in(&self.dir.join(IMAGES))
    }

    fn clean_up_in(&self, dir: &Path) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let orphan = match ext {
                Some(RAW | SNAPSHOTS) => {
                    !path.with_extension(RECORD).exists() && older(&path, ABANDONED_AFTER)
                }
                _ => self.unfinished(&path),
            };
            if orphan {
                tracing::warn!("pool {}: removing half-made {}", self.name, path.display());
                remove(&path)?;
            } else if ext == Some(SNAPSHOTS) {
                for snap in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if self.unfinished(&snap.path()) {
                        remove(&snap.path())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `path` is a file this node was making, or one a node that is gone was.
    fn unfinished(&self, path: &Path) -> bool {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext == self.partial => true,
            Some(ext) if ext.starts_with(PARTIAL) => older(path, STALE),
            _ => false,
        }
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn record(&self, id: &str) -> Result<Option<Record>> {
        read_json(&self.path(id, RECORD))
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

    fn write_record(&self, record: &Record) -> Result<()> {
        write_json(&self.path(&record.id, RECORD), record, &self.partial)
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
            ceph: None,
            qos: record.qos,
        })
    }

    fn snapshot_path(&self, id: &str, snapshot: &str) -> PathBuf {
        self.path(id, SNAPSHOTS).join(format!("{snapshot}.{RAW}"))
    }

    /// Fails with `InUse` while a VMM has volume `id` open (it holds the file's lock); the
    /// returned file holds the lock until dropped.
    fn claim(&self, id: &str) -> Result<File> {
        let path = self.path(id, RAW);
        // Opened for writing: on NFS an exclusive flock needs it.
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StorageError::io(format!("opening {}", path.display())))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StorageError::InUse(id.to_owned()));
            }
            return Err(StorageError::io(format!("locking {}", path.display()))(e));
        }
        Ok(file)
    }

    /// Where a new volume's data comes from: a file and how many of its bytes.
    fn source_data(&self, req: &VolumeRequest) -> Result<Option<(PathBuf, u64)>> {
        let (path, size) = match &req.source {
            VolumeSource::Blank => return Ok(None),
            VolumeSource::Volume { id } => {
                let source = self
                    .record(id)?
                    .ok_or_else(|| StorageError::NotFound(id.clone()))?;
                (self.path(id, RAW), source.size_bytes)
            }
            VolumeSource::Snapshot { volume, snapshot } => {
                let path = self.snapshot_path(volume, snapshot);
                let size = std::fs::metadata(&path)
                    .map_err(|_| StorageError::SnapshotNotFound {
                        volume: volume.clone(),
                        snapshot: snapshot.clone(),
                    })?
                    .len();
                (path, size)
            }
            VolumeSource::Image { id } => self.image_data(id)?,
        };
        check_not_smaller(&req.id, req.size_bytes, size)?;
        Ok(Some((path, size)))
    }

    /// Makes the data file of a new volume: blank, or a sparse copy of its source.
    fn make_data(&self, req: &VolumeRequest) -> Result<()> {
        let source = self.source_data(req)?;
        let partial = self.path(&req.id, &self.partial);
        let make = || -> std::io::Result<()> {
            let data = File::create(&partial)?;
            if let Some((path, size)) = &source {
                sparse::copy(&File::open(path)?, &data, *size)?;
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

    fn image_path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(IMAGES).join(format!("{id}.{ext}"))
    }

    /// An image's data file and size, for a volume made from it.
    fn image_data(&self, id: &str) -> Result<(PathBuf, u64)> {
        let record = self
            .image_record(id)?
            .ok_or_else(|| StorageError::ImageNotFound(id.to_owned()))?;
        Ok((self.image_path(id, RAW), record.size_bytes))
    }

    fn existing(&self, id: &str) -> Result<Record> {
        check_name("volume id", id)?;
        self.record(id)?
            .ok_or_else(|| StorageError::NotFound(id.to_owned()))
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
        let wanted = Record::wanted(req)?;
        let _changes = self.lock();
        if let Some(existing) = wanted.existing(&self.records()?)? {
            return self.volume(existing);
        }
        self.make_data(req)?;
        self.write_record(&wanted)?;
        self.volume(&wanted)
    }

    fn get(&self, id: &str) -> Result<Volume> {
        self.volume(&self.existing(id)?)
    }

    fn list(&self) -> Result<Vec<Volume>> {
        self.records()?.iter().map(|r| self.volume(r)).collect()
    }

    fn delete(&self, id: &str) -> Result<()> {
        check_name("volume id", id)?;
        let _changes = self.lock();
        if self.record(id)?.is_none() {
            return Ok(());
        }
        let _claim = self.claim(id)?;
        // The record goes first: from then on the volume does not exist, and a crash before
        // its files go leaves orphans the next open removes.
        for ext in [RECORD, RAW, SNAPSHOTS] {
            remove(&self.path(id, ext))?;
        }
        Ok(())
    }

    fn grow(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        let _changes = self.lock();
        let mut record = self.existing(id)?;
        check_not_smaller(id, size_bytes, record.size_bytes)?;
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

    fn images(&self) -> Result<Vec<Image>> {
        let dir = self.dir.join(IMAGES);
        let mut images = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD) {
                continue;
            }
            if let Some(id) = path.file_stem().and_then(|s| s.to_str()) {
                images.push(self.image(id)?);
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    fn image_record(&self, id: &str) -> Result<Option<ImageRecord>> {
        check_name("image id", id)?;
        read_json(&self.image_path(id, RECORD))
    }

    fn image(&self, id: &str) -> Result<Image> {
        let record = self
            .image_record(id)?
            .ok_or_else(|| StorageError::ImageNotFound(id.to_owned()))?;
        let data = self.image_path(id, RAW);
        let meta = std::fs::metadata(&data)
            .map_err(StorageError::io(format!("reading {}", data.display())))?;
        Ok(record.image(&self.name, meta.blocks() * 512))
    }

    fn delete_image(&self, id: &str) -> Result<()> {
        check_name("image id", id)?;
        let _changes = self.lock();
        // Volumes made from it are copies: nothing depends on it.
        for ext in [RECORD, RAW] {
            remove(&self.image_path(id, ext))?;
        }
        Ok(())
    }

    fn image_writer(&self, id: &str, size: u64) -> Result<Box<dyn ImageWriter>> {
        check_name("image id", id)?;
        let dir = self.dir.join(IMAGES);
        std::fs::create_dir_all(&dir)
            .map_err(StorageError::io(format!("creating {}", dir.display())))?;
        let partial = self.image_path(id, &format!("{RAW}.{}", self.partial));
        let file = File::create(&partial)
            .and_then(|f| f.set_len(size).map(|()| f))
            .map_err(StorageError::io(format!("creating {}", partial.display())))?;
        Ok(Box::new(LocalImageWriter {
            pool: self.name.clone(),
            file,
            partial,
            suffix: self.partial.clone(),
            data: self.image_path(id, RAW),
            record: self.image_path(id, RECORD),
            committed: false,
        }))
    }

    fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        let record = self.existing(id)?;
        let path = self.snapshot_path(id, name);
        if let Ok(meta) = std::fs::metadata(&path) {
            return Ok(Snapshot {
                name: name.to_owned(),
                size_bytes: meta.len(),
            });
        }
        let dir = self.path(id, SNAPSHOTS);
        std::fs::create_dir_all(&dir)
            .map_err(StorageError::io(format!("creating {}", dir.display())))?;
        let partial = path.with_extension(format!("{RAW}.{}", self.partial));
        let data = self.path(id, RAW);
        let src =
            File::open(&data).map_err(StorageError::io(format!("opening {}", data.display())))?;
        let made = File::create(&partial).and_then(|dst| {
            if sparse::reflink(&src, &dst)? {
                return Ok(dst);
            }
            Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
        });
        let made = match made {
            Ok(dst) => Ok(dst),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                // No reflinks here: a copy, and only of a disk no VMM is writing.
                let _claim = self.claim(id)?;
                File::create(&partial)
                    .and_then(|dst| sparse::copy(&src, &dst, record.size_bytes).map(|()| dst))
            }
            Err(e) => Err(e),
        };
        made.and_then(|dst| {
            dst.sync_all()?;
            std::fs::rename(&partial, &path)?;
            File::open(&dir)?.sync_all()
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            StorageError::io(format!("making {}", path.display()))(e)
        })?;
        Ok(Snapshot {
            name: name.to_owned(),
            size_bytes: record.size_bytes,
        })
    }

    fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>> {
        self.existing(id)?;
        let dir = self.path(id, SNAPSHOTS);
        let mut snaps: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                (path.extension()? == RAW).then_some(())?;
                Some(Snapshot {
                    name: path.file_stem()?.to_str()?.to_owned(),
                    size_bytes: e.metadata().ok()?.len(),
                })
            })
            .collect();
        snaps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snaps)
    }

    fn rollback(&self, id: &str, name: &str) -> Result<()> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        let mut record = self.existing(id)?;
        let _claim = self.claim(id)?;
        let snap = self.snapshot_path(id, name);
        let src = File::open(&snap).map_err(|_| StorageError::SnapshotNotFound {
            volume: id.to_owned(),
            snapshot: name.to_owned(),
        })?;
        let size = src
            .metadata()
            .map_err(StorageError::io(format!("reading {}", snap.display())))?
            .len();
        // A new file renamed over the volume's: a crash leaves the old data or the new.
        let partial = self.path(id, &self.partial);
        File::create(&partial)
            .and_then(|dst| {
                if !sparse::reflink(&src, &dst)? {
                    sparse::copy(&src, &dst, size)?;
                }
                dst.sync_all()?;
                std::fs::rename(&partial, self.path(id, RAW))
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                StorageError::io(format!("rolling {id} back to {name}"))(e)
            })?;
        if record.size_bytes != size {
            record.size_bytes = size;
            self.write_record(&record)?;
        }
        Ok(())
    }

    fn delete_snapshot(&self, id: &str, name: &str) -> Result<()> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        self.existing(id)?;
        remove(&self.snapshot_path(id, name))
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
/// Whether `path` was last changed longer than `age` ago.
fn older(path: &Path, age: std::time::Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > age))
}

/// A JSON record, or `None` when its file is not there.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
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

/// Writes a record durably: a temporary file, synced, renamed over the old one.
fn write_json<T: serde::Serialize>(path: &Path, record: &T, partial: &str) -> Result<()> {
    let tmp = path.with_extension(format!("{RECORD}.{partial}"));
    let context = format!("writing {}", path.display());
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| StorageError::Io {
        context: context.clone(),
        source: e.into(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    };
    write().map_err(StorageError::io(context))
}

/// An image being imported into a local pool: a partial file, renamed and recorded on commit.
struct LocalImageWriter {
    pool: String,
    /// The pool's suffix for files being made.
    suffix: String,
    file: File,
    partial: PathBuf,
    data: PathBuf,
    record: PathBuf,
    committed: bool,
}

impl ImageWriter for LocalImageWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(data, offset)
            .map_err(StorageError::io(format!(
                "writing {}",
                self.partial.display()
            )))
    }

    fn commit(mut self: Box<Self>, record: &ImageRecord) -> Result<Image> {
        self.file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.partial, &self.data))
            .map_err(StorageError::io(format!("saving {}", self.data.display())))?;
        self.committed = true;
        write_json(&self.record, record, &self.suffix)?;
        let allocated = self.file.metadata().map_or(0, |m| m.blocks() * 512);
        Ok(record.image(&self.pool, allocated))
    }
}

impl Drop for LocalImageWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Removes a file or a directory tree; one that is not there is not an error.
fn remove(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(StorageError::io(format!("removing {}", path.display())))
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
            qos: None,
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
        // A crash mid-clone, one between a record's removal and its data's (long ago), and one
        // mid-record.
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::write(dir.0.join("b2.partial-local"), b"half").unwrap();
        std::fs::write(dir.0.join("c3.raw"), b"orphan").unwrap();
        File::options()
            .write(true)
            .open(dir.0.join("c3.raw"))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        std::fs::write(dir.0.join("d4.json.partial-local"), b"{").unwrap();
        // Another node's file being made on a shared mount stays; one of a day ago goes.
        std::fs::write(dir.0.join("f6.partial-node-b"), b"theirs").unwrap();
        std::fs::write(dir.0.join("g7.partial-node-c"), b"dead").unwrap();
        File::options()
            .write(true)
            .open(dir.0.join("g7.partial-node-c"))
            .unwrap()
            .set_modified(long_ago - std::time::Duration::from_secs(24 * 3600))
            .unwrap();
        // A data file a moment old without its record yet: another node may be recording it.
        std::fs::write(dir.0.join("h8.raw"), b"new").unwrap();
        let kept = pool.create(&req("e5", "e", 1 << 20)).unwrap();
        drop(pool);
        let pool = LocalPool::open("p", &dir.0).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["e5.json", "e5.raw", "f6.partial-node-b", "h8.raw"]);
        assert_eq!(pool.get("e5").unwrap(), kept);
    }
}
