//! `ceph` pools: RBD images in a RADOS pool, through librbd (`triad-ceph`).
//!
//! A volume is image `triad-volume-ID`, an image `triad-image-ID` with a protected snapshot `base` that VM
//! root volumes are copy-on-write clones of. Each carries its record as image metadata
//! (`triad.record`), and exists for Triad once it has it. Blank volumes and clones of images
//! get their record within milliseconds of being made, in place; a crash in between leaves an
//! image without a record, which any node removes (and a retried create replaces) once it is
//! `ABANDONED_AFTER` old. What takes long (copies, imports) is made under a name of this
//! node's own (`triad-partial:NODE:…`), given its record, and then renamed into place (a rename
//! costs as much as a clone, so the fast paths skip it); what a crash leaves under that name is
//! this node's to remove, which it does when it connects.
//! Snapshots are RBD snapshots, protected so that volumes can be made from them; those
//! volumes are flattened, so they never depend on the snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use triad_api::storage::{
    BlocklistRequest, Image, PoolUsage, Snapshot, Volume, VolumeClients, VolumeRequest,
    VolumeSource, Watcher,
};
use triad_api::vmm::CephClient;
use triad_ceph::Cluster;

use crate::images::{ImageRecord, ImageWriter};
use crate::{check_name, check_not_smaller, check_size, Pool, Record, Result, StorageError};

/// Triad's images carry its prefix, so that a pool shared with others (OpenStack's Cinder
/// names its images `volume-…`) is never mistaken for Triad's.
const VOLUME: &str = "triad-volume-";
const IMAGE: &str = "triad-image-";
/// Followed by `NODE:`; node names cannot hold a colon, so one node's prefix is never the
/// start of another's.
const PARTIAL: &str = "triad-partial:";
/// The snapshot of an image that volumes are cloned from.
const BASE: &str = "base";
const RECORD_KEY: &str = "triad.record";
/// How old a volume image without a record must be for a node to take it for one a crash
/// left, not one being made (which gets its record within milliseconds).
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);
/// Snapshots Triad takes for itself (copying a volume) start with a dot, which the names
/// users give cannot.
const COPY_SNAPSHOT: &str = ".copy.";

/// How long storaged waits for the cluster before an operation fails (librados' defaults
/// wait minutes, and a request would hang as long).
const CLIENT_OPTIONS: &[(&str, &str)] = &[
    ("client_mount_timeout", "15"),
    ("rados_mon_op_timeout", "15"),
    ("rados_osd_op_timeout", "60"),
];

#[derive(Debug)]
pub struct CephPool {
    name: String,
    rbd_pool: String,
    client: CephClient,
    node: String,
    /// Connected on first use, so that storaged starts (and serves its other pools) while
    /// the cluster is down.
    io: Mutex<Connection>,
    changes: Mutex<()>,
    /// The records of the pool's volumes by image name, as first read: what a create checks
    /// ids and names against without opening every image (neither ever changes).
    known: Mutex<HashMap<String, Record>>,
    /// Whole images' records by id, as read once.
    images_seen: Mutex<HashMap<String, ImageRecord>>,
    /// Images being closed off the request path.
    closing: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

type Io = Arc<triad_ceph::Pool>;

#[derive(Debug)]
enum Connection {
    None,
    Up(Io),
    /// When connecting last failed, and why: calls until `RECONNECT_AFTER` fail at once
    /// rather than each waiting out the connect timeout.
    Failed(std::time::Instant, triad_ceph::Error),
}

const RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

fn is(e: &triad_ceph::Error, errno: i32) -> bool {
    e.errno == errno
}

/// Ignores one errno: the state it reports is the one wanted.
fn unless(result: triad_ceph::Result<()>, errno: i32) -> Result<()> {
    match result {
        Err(e) if !is(&e, errno) => Err(e.into()),
        _ => Ok(()),
    }
}

impl CephPool {
    /// The pool `name`, on RADOS pool `rbd_pool` of the cluster `client` names; `node` is
    /// this node's name, which its half-made images carry. It connects when first used.
    pub fn open(name: &str, rbd_pool: &str, client: CephClient, node: &str) -> Result<Self> {
        check_name("pool name", name)?;
        check_name("node name", node)?;
        Ok(Self {
            name: name.to_owned(),
            rbd_pool: rbd_pool.to_owned(),
            client,
            node: node.to_owned(),
            io: Mutex::new(Connection::None),
            changes: Mutex::new(()),
            known: Mutex::new(HashMap::new()),
            images_seen: Mutex::new(HashMap::new()),
            closing: Mutex::new(Vec::new()),
        })
    }

    fn io(&self) -> Result<Io> {
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        match &*io {
            Connection::Up(pool) => return Ok(pool.clone()),
            Connection::Failed(at, e) if at.elapsed() < RECONNECT_AFTER => {
                return Err(unreachable(&self.name, e.clone()))
            }
            _ => {}
        }
        let connected = Cluster::connect(&self.client.conf, &self.client.client, CLIENT_OPTIONS)
            .and_then(|cluster| cluster.pool(&self.rbd_pool));
        match connected {
            Ok(pool) => {
                // Best effort: a leftover that cannot go now does not make the pool unusable.
                if let Err(e) = self.clean_up(&pool) {
                    tracing::warn!("pool {}: cleaning up: {e}", self.name);
                }
                *io = Connection::Up(pool.clone());
                Ok(pool)
            }
            Err(e) => {
                *io = Connection::Failed(std::time::Instant::now(), e.clone());
                Err(unreachable(&self.name, e))
            }
        }
    }

    fn partial_prefix(&self) -> String {
        format!("{PARTIAL}{}:", self.node)
    }

    /// Removes what this node left half-made.
    fn clean_up(&self, io: &Io) -> Result<()> {
        let prefix = self.partial_prefix();
        for name in io.images()? {
            let abandoned = name.starts_with(&prefix)
                || (name.starts_with(VOLUME) && self.abandoned(io, &name)?);
            if abandoned {
                tracing::warn!("pool {}: removing half-made image {name}", self.name);
                if let Err(e) = purge(io, &name) {
                    tracing::warn!("pool {}: {e}", self.name);
                }
            }
        }
        Ok(())
    }

    /// Whether image `name` has no record and is old enough to be a crash's leftover.
    fn abandoned(&self, io: &Io, name: &str) -> Result<bool> {
        let image = match io.open_read_only(name, None) {
            Err(e) if is(&e, libc::ENOENT) => return Ok(false),
            other => other?,
        };
        if image.metadata(RECORD_KEY)?.is_some() {
            return Ok(false);
        }
        Ok(image
            .created()?
            .elapsed()
            .is_ok_and(|age| age > ABANDONED_AFTER))
    }

    /// Takes the pool's change lock, once images still being closed are closed (an open
    /// handle of ours would make a removal see the image in use).
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let closing = std::mem::take(&mut *self.closing.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in closing {
            let _ = handle.join();
        }
        changes
    }

    /// The record kept on image `name`; `None` when the image is not there.
    fn read<T: serde::de::DeserializeOwned>(&self, io: &Io, name: &str) -> Result<Option<T>> {
        let image = match io.open_read_only(name, None) {
            Ok(image) => image,
            Err(e) if is(&e, libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(json) = image.metadata(RECORD_KEY)? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StorageError::Io {
                context: format!("reading the record of {}/{name}", self.rbd_pool),
                source: e.into(),
            })
    }

    fn records(&self, io: &Io) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for name in io.images()? {
            if name.starts_with(VOLUME) {
                // One deleted meanwhile is simply not listed.
                if let Some(record) = self.read::<Record>(io, &name)? {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// The pool's image names, and every volume's id and name (the rest of each record as
    /// first read): one listing, and a read of each volume not seen before.
    fn known(&self, io: &Io) -> Result<(Vec<String>, Vec<Record>)> {
        let names = io.images()?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|name, _| names.contains(name));
        for name in names.iter().filter(|n| n.starts_with(VOLUME)) {
            if !known.contains_key(name) {
                if let Some(record) = self.read::<Record>(io, name)? {
                    known.insert(name.clone(), record);
                }
            }
        }
        let records = known.values().cloned().collect();
        Ok((names, records))
    }

    fn existing(&self, io: &Io, id: &str) -> Result<Record> {
        check_name("volume id", id)?;
        self.read(io, &format!("{VOLUME}{id}"))?
            .ok_or_else(|| StorageError::NotFound(id.to_owned()))
    }

    fn volume(&self, io: &Io, record: &Record) -> Result<Volume> {
        let image = io.open_read_only(&format!("{VOLUME}{}", record.id), None)?;
        self.describe(&image, record)
    }

    /// Volume `record` as the API shows it, measured on `image` (its own, or the one it is
    /// being made under).
    fn describe(&self, image: &triad_ceph::Image, record: &Record) -> Result<Volume> {
        Ok(Volume {
            id: record.id.clone(),
            name: record.name.clone(),
            pool: self.name.clone(),
            size_bytes: image.size()?,
            allocated_bytes: image.allocated_bytes()?,
            path: format!("rbd:{}/{VOLUME}{}", self.rbd_pool, record.id).into(),
            ceph: Some(self.client.clone()),
            qos: record.qos,
        })
    }

    /// Opens a volume to change it; `InUse` while a VMM holds it.
    fn open_unused(&self, io: &Io, id: &str) -> Result<triad_ceph::Image> {
        let image = io.open(&format!("{VOLUME}{id}"))?;
        if !image.watchers()?.iter().all(|w| is_self(io, w)) {
            return Err(StorageError::InUse(id.to_owned()));
        }
        Ok(image)
    }

    fn images_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, ImageRecord>> {
        self.images_seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Image `id`'s record, read once: images never change once whole.
    fn image_record_cached(&self, io: &Io, id: &str) -> Result<ImageRecord> {
        if let Some(record) = self.images_seen().get(id) {
            return Ok(record.clone());
        }
        let record: ImageRecord = self
            .read(io, &format!("{IMAGE}{id}"))?
            .ok_or_else(|| StorageError::ImageNotFound(id.to_owned()))?;
        self.images_seen().insert(id.to_owned(), record.clone());
        Ok(record)
    }

    /// Makes image `tmp` with the data `req` asks for, and describes it; returns it still
    /// open.
    fn make_data(
        &self,
        io: &Io,
        req: &VolumeRequest,
        tmp: &str,
    ) -> Result<(Volume, triad_ceph::Image)> {
        match &req.source {
            VolumeSource::Blank => io.create_image(tmp, req.size_bytes)?,
            VolumeSource::Image { id } => {
                let record = self.image_record_cached(io, id)?;
                check_not_smaller(&req.id, req.size_bytes, record.size_bytes)?;
                match io.clone_image(&format!("{IMAGE}{id}"), BASE, tmp) {
                    Err(e) if is(&e, libc::ENOENT) => {
                        // Deleted since it was read (by another node).
                        self.images_seen().remove(id);
                        return Err(StorageError::ImageNotFound(id.clone()));
                    }
                    other => other?,
                }
            }
            VolumeSource::Volume { id } => {
                let source = self.existing(io, id)?;
                check_not_smaller(&req.id, req.size_bytes, source.size_bytes)?;
                let parent = io.open(&format!("{VOLUME}{id}"))?;
                let snap = format!("{COPY_SNAPSHOT}{}", req.id);
                unless(parent.create_snapshot(&snap), libc::EEXIST)?;
                unless(parent.protect(&snap), libc::EBUSY)?;
                let copied = self.clone_flat(io, &format!("{VOLUME}{id}"), &snap, tmp);
                if copied.is_err() {
                    // A half-made clone keeps the snapshot protected: it goes first.
                    purge(io, tmp)?;
                }
                let released = unless(parent.unprotect(&snap), libc::EINVAL)
                    .and_then(|()| unless(parent.remove_snapshot(&snap), libc::ENOENT));
                copied.and(released)?;
            }
            VolumeSource::Snapshot { volume, snapshot } => {
                let source = self.existing(io, volume)?;
                let parent = io.open_read_only(&format!("{VOLUME}{volume}"), None)?;
                let snap = parent
                    .snapshots()?
                    .into_iter()
                    .find(|s| &s.name == snapshot)
                    .ok_or_else(|| StorageError::SnapshotNotFound {
                        volume: volume.clone(),
                        snapshot: snapshot.clone(),
                    })?;
                check_not_smaller(&req.id, req.size_bytes, snap.size.min(source.size_bytes))?;
                self.clone_flat(io, &format!("{VOLUME}{volume}"), snapshot, tmp)?;
            }
        }
        let image = io.open(tmp)?;
        if image.size()? < req.size_bytes {
            image.resize(req.size_bytes)?;
        }
        let record = Record::wanted(req)?;
        image.set_metadata(RECORD_KEY, &to_json(&record))?;
        Ok((self.describe(&image, &record)?, image))
    }

    /// Clones `parent@snap` to `child` and copies the parent's data in, so that the child
    /// depends on nothing.
    fn clone_flat(&self, io: &Io, parent: &str, snap: &str, child: &str) -> Result<()> {
        io.clone_image(parent, snap, child)?;
        io.open(child)?.flatten()?;
        Ok(())
    }
}

/// A cluster that cannot be connected to, or a RADOS pool that is not there: the pool is out
/// of reach (503), whatever the errno (a missing config is ENOENT, not a missing volume).
fn unreachable(pool: &str, e: triad_ceph::Error) -> StorageError {
    StorageError::Unreachable(format!("pool {pool}: {e}"))
}

/// Removes image `name` with its snapshots; one that is not there is not an error.
fn purge(io: &Io, name: &str) -> Result<()> {
    let image = match io.open(name) {
        Err(e) if is(&e, libc::ENOENT) => return Ok(()),
        other => other?,
    };
    let snaps = image.snapshots()?;
    // Unprotecting loses nothing; a snapshot that clones still depend on stops it all before
    // any snapshot is removed.
    for (i, snap) in snaps.iter().enumerate() {
        match image.unprotect(&snap.name) {
            Err(e) if is(&e, libc::EBUSY) => {
                for earlier in &snaps[..i] {
                    let _ = image.protect(&earlier.name);
                }
                return Err(StorageError::Busy(format!(
                    "snapshot {} of {name} has clones being made from it",
                    snap.name
                )));
            }
            other => unless(other, libc::EINVAL)?,
        }
    }
    for snap in &snaps {
        unless(image.remove_snapshot(&snap.name), libc::ENOENT)?;
    }
    drop(image);
    unless(io.remove_image(name), libc::ENOENT)
}

/// Whether watcher `w` is this process's own connection (the image storaged just opened).
fn is_self(io: &Io, w: &triad_ceph::Watcher) -> bool {
    i64::try_from(io.cluster().instance_id()).is_ok_and(|id| id == w.id)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl Pool for CephPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, req: &VolumeRequest) -> Result<Volume> {
        let wanted = Record::wanted(req)?;
        let _changes = self.lock();
        let io = self.io()?;
        let name = format!("{VOLUME}{}", req.id);
        // Names from what is known; the id's own record read afresh (it may have grown).
        let (images, mut known) = self.known(&io)?;
        known.retain(|r| r.id != req.id);
        let own = match images.contains(&name) {
            true => self.read::<Record>(&io, &name)?,
            false => None,
        };
        let half_made = images.contains(&name) && own.is_none();
        known.extend(own);
        if let Some(existing) = wanted.existing(&known)? {
            return self.volume(&io, existing);
        }
        if half_made {
            // Made by an earlier try that did not finish, or being made right now by another
            // node (it gets its record within milliseconds): only the first is removed.
            if !self.abandoned(&io, &name)? {
                return Err(StorageError::Busy(format!(
                    "volume {} is being made (or a crash left it half-made: it is removed \
                     once it is {} s old; retry then)",
                    req.id,
                    ABANDONED_AFTER.as_secs()
                )));
            }
            purge(&io, &name)?;
        }
        let fast = matches!(req.source, VolumeSource::Blank | VolumeSource::Image { .. });
        let target = match fast {
            true => name.clone(),
            false => format!("{}{name}", self.partial_prefix()),
        };
        if !fast && images.contains(&target) {
            purge(&io, &target)?;
        }
        let made = self
            .make_data(&io, req, &target)
            .and_then(|(volume, image)| {
                if fast {
                    // Closing (releasing the lock the record's write took) need not hold up the
                    // answer.
                    let closing = std::thread::Builder::new()
                        .name("close-image".into())
                        .spawn(move || drop(image));
                    if let Ok(handle) = closing {
                        self.closing
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(handle);
                    }
                } else {
                    drop(image);
                    io.rename_image(&target, &name)?;
                }
                Ok(volume)
            });
        match made {
            Ok(volume) => {
                self.known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, wanted);
                Ok(volume)
            }
            // Someone else made it meanwhile: theirs, not ours to remove.
            Err(StorageError::Ceph(e)) if is(&e, libc::EEXIST) => Err(StorageError::Busy(format!(
                "volume {} is being made by another node",
                req.id
            ))),
            Err(e) => {
                if let Err(left) = purge(&io, &target) {
                    tracing::warn!("pool {}: {left}", self.name);
                }
                Err(e)
            }
        }
    }

    fn get(&self, id: &str) -> Result<Volume> {
        let io = self.io()?;
        let record = self.existing(&io, id)?;
        self.volume(&io, &record)
    }

    fn list(&self) -> Result<Vec<Volume>> {
        let io = self.io()?;
        self.records(&io)?
            .iter()
            .map(|r| self.volume(&io, r))
            .collect()
    }

    fn delete(&self, id: &str) -> Result<()> {
        check_name("volume id", id)?;
        let _changes = self.lock();
        let io = self.io()?;
        match self.open_unused(&io, id) {
            Err(StorageError::Ceph(e)) if is(&e, libc::ENOENT) => return Ok(()),
            other => drop(other?),
        }
        match purge(&io, &format!("{VOLUME}{id}")) {
            Err(StorageError::Ceph(e)) if is(&e, libc::EBUSY) => {
                Err(StorageError::InUse(id.to_owned()))
            }
            other => other,
        }
    }

    fn grow(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        let _changes = self.lock();
        let io = self.io()?;
        let mut record = self.existing(&io, id)?;
        check_not_smaller(id, size_bytes, record.size_bytes)?;
        check_size(size_bytes)?;
        // Also while a VMM holds it: librbd has the lock's owner do the resize. The guest
        // sees the new size when its VMM next opens the disk.
        let image = io.open(&format!("{VOLUME}{id}"))?;
        image.resize(size_bytes)?;
        record.size_bytes = size_bytes;
        image.set_metadata(RECORD_KEY, &to_json(&record))?;
        drop(image);
        self.volume(&io, &record)
    }

    fn usage(&self) -> Result<PoolUsage> {
        let io = self.io()?;
        let volumes = self.list()?;
        let images = self.images()?;
        let (total, _, free) = io.cluster().capacity()?;
        Ok(PoolUsage {
            provisioned_bytes: volumes.iter().map(|v| v.size_bytes).sum(),
            allocated_bytes: volumes.iter().map(|v| v.allocated_bytes).sum::<u64>()
                + images.iter().map(|i| i.allocated_bytes).sum::<u64>(),
            total_bytes: total,
            free_bytes: free,
            warning: crate::use_warning(&self.name, total, free),
        })
    }

    fn images(&self) -> Result<Vec<Image>> {
        let io = self.io()?;
        let mut images = Vec::new();
        for name in io.images()? {
            if let Some(id) = name.strip_prefix(IMAGE) {
                match self.image(id) {
                    Ok(image) => images.push(image),
                    Err(StorageError::ImageNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    fn image_record(&self, id: &str) -> Result<Option<ImageRecord>> {
        check_name("image id", id)?;
        self.read(&self.io()?, &format!("{IMAGE}{id}"))
    }

    fn image(&self, id: &str) -> Result<Image> {
        let record = self
            .image_record(id)?
            .ok_or_else(|| StorageError::ImageNotFound(id.to_owned()))?;
        let image = self.io()?.open_read_only(&format!("{IMAGE}{id}"), None)?;
        Ok(record.image(&self.name, image.allocated_bytes()?))
    }

    fn delete_image(&self, id: &str) -> Result<()> {
        check_name("image id", id)?;
        let _changes = self.lock();
        let io = self.io()?;
        let name = format!("{IMAGE}{id}");
        self.images_seen().remove(id);
        let image = match io.open(&name) {
            Err(e) if is(&e, libc::ENOENT) => return Ok(()),
            other => other?,
        };
        match image.unprotect(BASE) {
            Err(e) if is(&e, libc::EBUSY) => {
                return Err(StorageError::Busy(format!(
                    "image {id} has volumes cloned from it; delete them first"
                )))
            }
            other => unless(other, libc::EINVAL)?,
        }
        unless(image.remove_snapshot(BASE), libc::ENOENT)?;
        drop(image);
        unless(io.remove_image(&name), libc::ENOENT)
    }

    fn image_writer(&self, id: &str, size: u64) -> Result<Box<dyn ImageWriter>> {
        check_name("image id", id)?;
        let io = self.io()?;
        let tmp = format!("{}{IMAGE}{id}", self.partial_prefix());
        purge(&io, &tmp)?;
        io.create_image(&tmp, size)?;
        let image = io.open(&tmp)?;
        Ok(Box::new(CephImageWriter {
            pool: self.name.clone(),
            io,
            image: Some(image),
            tmp,
            name: format!("{IMAGE}{id}"),
            committed: false,
        }))
    }

    fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        let io = self.io()?;
        let record = self.existing(&io, id)?;
        let image = io.open(&format!("{VOLUME}{id}"))?;
        if let Some(snap) = image.snapshots()?.into_iter().find(|s| s.name == name) {
            // A retry after an earlier try that did not get to protect it.
            unless(image.protect(name), libc::EBUSY)?;
            return Ok(Snapshot {
                name: snap.name,
                size_bytes: snap.size,
            });
        }
        match image.create_snapshot(name) {
            Err(e) if is(&e, libc::EROFS) => return Err(StorageError::InUse(id.to_owned())),
            other => other?,
        }
        image.protect(name)?;
        Ok(Snapshot {
            name: name.to_owned(),
            size_bytes: record.size_bytes,
        })
    }

    fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>> {
        let io = self.io()?;
        self.existing(&io, id)?;
        let image = io.open_read_only(&format!("{VOLUME}{id}"), None)?;
        let mut snaps: Vec<_> = image
            .snapshots()?
            .into_iter()
            .filter(|s| !s.name.starts_with(COPY_SNAPSHOT))
            .map(|s| Snapshot {
                name: s.name,
                size_bytes: s.size,
            })
            .collect();
        snaps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snaps)
    }

    fn rollback(&self, id: &str, name: &str) -> Result<()> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        let io = self.io()?;
        let mut record = self.existing(&io, id)?;
        let image = self.open_unused(&io, id)?;
        let snap = image
            .snapshots()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StorageError::SnapshotNotFound {
                volume: id.to_owned(),
                snapshot: name.to_owned(),
            })?;
        match image.lock_exclusive() {
            Err(e) if is(&e, libc::EBUSY) => return Err(StorageError::InUse(id.to_owned())),
            other => other?,
        }
        image.rollback(name)?;
        if record.size_bytes != snap.size {
            record.size_bytes = snap.size;
            image.set_metadata(RECORD_KEY, &to_json(&record))?;
        }
        Ok(())
    }

    fn delete_snapshot(&self, id: &str, name: &str) -> Result<()> {
        check_name("snapshot name", name)?;
        let _changes = self.lock();
        let io = self.io()?;
        self.existing(&io, id)?;
        let image = io.open(&format!("{VOLUME}{id}"))?;
        unless(image.unprotect(name), libc::EINVAL).or_else(|e| match e {
            StorageError::Ceph(c) if is(&c, libc::ENOENT) => Ok(()),
            e => Err(e),
        })?;
        unless(image.remove_snapshot(name), libc::ENOENT)
    }

    fn clients(&self, id: &str) -> Result<VolumeClients> {
        let io = self.io()?;
        self.existing(&io, id)?;
        // Read-only handles cannot ask for the lock's owners; opening does not take the lock.
        let image = io.open(&format!("{VOLUME}{id}"))?;
        Ok(VolumeClients {
            watchers: image
                .watchers()?
                .into_iter()
                .filter(|w| !is_self(&io, w))
                .map(|w| Watcher {
                    addr: w.addr,
                    id: w.id,
                })
                .collect(),
            lock_owners: image.lock_owners()?,
        })
    }

    fn blocklist(&self, req: &BlocklistRequest) -> Result<()> {
        let addr = req.addr.trim();
        if addr.is_empty() || addr.contains(char::is_whitespace) {
            return Err(StorageError::Invalid {
                what: "addr",
                value: req.addr.clone(),
                why: "must be a client address such as 10.0.0.5:0/123456",
            });
        }
        let io = self.io()?;
        io.cluster()
            .blocklist_add(addr, req.expire_seconds.unwrap_or(3600))?;
        tracing::warn!("pool {}: blocklisted Ceph client {addr}", self.name);
        Ok(())
    }
}

/// An image being imported into a Ceph pool: written under this node's partial name, then
/// snapshotted, recorded and renamed into place on commit.
struct CephImageWriter {
    pool: String,
    io: Io,
    image: Option<triad_ceph::Image>,
    tmp: String,
    name: String,
    committed: bool,
}

impl ImageWriter for CephImageWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match &self.image {
            Some(image) => Ok(image.write_at(offset, data)?),
            None => Err(StorageError::Import("the image is closed".into())),
        }
    }

    fn commit(mut self: Box<Self>, record: &ImageRecord) -> Result<Image> {
        let image = self
            .image
            .take()
            .ok_or_else(|| StorageError::Import("the image is closed".into()))?;
        image.flush()?;
        image.set_metadata(RECORD_KEY, &to_json(record))?;
        image.create_snapshot(BASE)?;
        image.protect(BASE)?;
        let allocated = image.allocated_bytes()?;
        drop(image);
        self.io.rename_image(&self.tmp, &self.name)?;
        self.committed = true;
        Ok(record.image(&self.pool, allocated))
    }
}

impl Drop for CephImageWriter {
    fn drop(&mut self) {
        self.image = None;
        if !self.committed {
            if let Err(e) = purge(&self.io, &self.tmp) {
                tracing::warn!("removing the unfinished image {}: {e}", self.tmp);
            }
        }
    }
}
