//! Images: imported once per pool from a file on the node or an http(s) URL, raw or qcow2
//! (converted to raw; `imago` reads it), checked against the SHA-256 the caller gives, kept
//! sparse. Imports run in the background ([`Imports`]); a pool sees an image only once it is
//! whole and verified, so a failed or interrupted import leaves nothing behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use triad_api::storage::{EventKind, Image, ImageFormat, ImageRequest, ImageSource, ImageState};

use crate::events::Events;
use crate::{check_name, sparse, Pool, Result, StorageError};

/// What a pool keeps of an image besides its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    pub source: ImageSource,
    /// The checksum the request asked for, kept so that a retried request can be matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_sha256: Option<String>,
    pub format: ImageFormat,
    pub size_bytes: u64,
    pub sha256: String,
}

impl ImageRecord {
    /// The image as the API shows it.
    pub fn image(&self, pool: &str, allocated_bytes: u64) -> Image {
        Image {
            id: self.id.clone(),
            name: self.name.clone(),
            pool: pool.to_owned(),
            state: ImageState::Ready,
            source: self.source.clone(),
            format: Some(self.format),
            size_bytes: self.size_bytes,
            allocated_bytes,
            sha256: Some(self.sha256.clone()),
            done_bytes: 0,
            total_bytes: None,
            error: None,
        }
    }

    fn same_request(&self, req: &ImageRequest) -> bool {
        self.name == req.name
            && self.source == req.source
            && self.requested_sha256 == req.sha256.as_ref().map(|s| s.to_ascii_lowercase())
    }
}

/// A pool's new image, written by an import; invisible until committed, and removed when
/// dropped uncommitted.
pub trait ImageWriter: Send {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes the image, with `record`, part of the pool.
    fn commit(self: Box<Self>, record: &ImageRecord) -> Result<Image>;
}

/// Checks an import request before anything is started.
pub fn check_request(req: &ImageRequest) -> Result<()> {
    check_name("image id", &req.id)?;
    check_name("image name", &req.name)?;
    if let Some(sha) = &req.sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StorageError::Invalid {
                what: "sha256",
                value: sha.clone(),
                why: "must be 64 hexadecimal digits",
            });
        }
    }
    match &req.source {
        ImageSource::File { path } if !path.is_absolute() => Err(StorageError::Invalid {
            what: "source path",
            value: path.display().to_string(),
            why: "must be absolute",
        }),
        ImageSource::Url { url }
            if !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Err(StorageError::Invalid {
                what: "source url",
                value: url.clone(),
                why: "must be an http:// or https:// URL",
            })
        }
        _ => Ok(()),
    }
}

/// How far an import is: bytes handled of how many (0: not known yet).
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

fn failed(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    StorageError::io(context)
}

/// Reads all of `reader` into `out` (when given), hashing it; returns the hex SHA-256.
fn hash_copy(
    reader: &mut dyn Read,
    mut out: Option<&mut File>,
    progress: &Progress,
    what: &str,
) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(format!("reading {what}"))(e)),
        };
        hasher.update(&buf[..n]);
        if let Some(out) = out.as_deref_mut() {
            out.write_all(&buf[..n])
                .map_err(failed(format!("saving {what}")))?;
        }
        progress.add(n as u64);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Where an import's source is while it is converted: the file itself, or a download that
/// is removed when this is dropped.
struct Staged {
    path: PathBuf,
    remove: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where imports stage downloads, and how long a download may wait for its server, to
/// connect and for each read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub staging: PathBuf,
    pub timeout: Duration,
}

/// Downloads `url` into a new file `to`; returns it, open, and the SHA-256 of what came.
fn download(
    url: &str,
    to: &Path,
    timeout: Duration,
    progress: &Progress,
) -> Result<(File, String)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => StorageError::Import(format!(
            "GET {url}: the server answered {code} {}",
            r.status_text()
        )),
        // Its message names the URL.
        ureq::Error::Transport(t) => StorageError::Import(format!("GET {t}")),
    })?;
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        progress.total.store(len, Ordering::Relaxed);
    }
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(failed(format!("creating {}", to.display())))?;
    let mut body = response.into_reader();
    let sha = hash_copy(&mut body, Some(&mut file), progress, url)?;
    Ok((file, sha))
}

fn detect(file: &File) -> Result<ImageFormat> {
    let mut magic = [0u8; 4];
    let n = file
        .read_at(&mut magic, 0)
        .map_err(failed("reading the image header"))?;
    Ok(if n == 4 && &magic == b"QFI\xfb" {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// The granularity at which zeroes are left out, so images stay thin.
const ZERO_BLOCK: usize = 64 << 10;
const CHUNK: usize = 4 << 20;

/// Writes the parts of `buf` (at `offset`) that are not all zero.
fn write_data(writer: &mut dyn ImageWriter, offset: u64, buf: &[u8]) -> Result<()> {
    let mut run: Option<usize> = None;
    for (i, block) in buf.chunks(ZERO_BLOCK).enumerate() {
        let zero = block.iter().all(|&b| b == 0);
        match (run, zero) {
            (None, false) => run = Some(i * ZERO_BLOCK),
            (Some(start), true) => {
                writer.write_at(offset + start as u64, &buf[start..i * ZERO_BLOCK])?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        writer.write_at(offset + start as u64, &buf[start..])?;
    }
    Ok(())
}

fn convert_raw(
    file: &File,
    size: u64,
    writer: &mut dyn ImageWriter,
    progress: &Progress,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut covered = 0;
    for (start, len) in sparse::data_extents(file, size).map_err(failed("reading the image"))? {
        progress.add(start - covered);
        let mut at = start;
        while at < start + len {
            let n = usize::try_from((start + len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            file.read_exact_at(&mut buf[..n], at)
                .map_err(failed("reading the image"))?;
            write_data(writer, at, &buf[..n])?;
            at += n as u64;
            progress.add(n as u64);
        }
        covered = start + len;
    }
    Ok(())
}

/// Opens a qcow2 image as imago reads it, refusing what would make it reach past the file:
/// a backing file or an external data file (host paths the image names), and encryption,
/// which imago does not decrypt.
fn open_qcow2(
    source: &File,
    path: &Path,
) -> std::io::Result<imago::FormatAccess<imago::file::File>> {
    use imago::qcow2::Qcow2;
    use imago::{DenyImplicitOpenGate, FormatAccess, StorageOpenOptions};
    let unsupported = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut crypt = [0u8; 4];
    source.read_exact_at(&mut crypt, 32)?;
    if u32::from_be_bytes(crypt) != 0 {
        return Err(unsupported(
            "encrypted qcow2 images are not supported".into(),
        ));
    }
    // The very file that was hashed, not whatever the path names by now.
    let file = imago::file::File::from_open_file(
        source.try_clone()?,
        StorageOpenOptions::new().filename(path).write(false),
    )?;
    let mut qcow2 = Qcow2::<imago::file::File>::open_image(file, false)?;
    if let Some(backing) = qcow2.implicit_backing_file() {
        return Err(unsupported(format!(
            "qcow2 images with a backing file ({backing:?}) are not supported"
        )));
    }
    if qcow2.requires_external_data_file() {
        return Err(unsupported(
            "qcow2 images with an external data file are not supported".into(),
        ));
    }
    qcow2.open_implicit_dependencies_gated(DenyImplicitOpenGate::default())?;
    Ok(FormatAccess::new(qcow2))
}

fn convert_qcow2(
    image: &imago::FormatAccess<imago::file::File>,
    writer: &mut dyn ImageWriter,
    progress: &Progress,
) -> Result<()> {
    use imago::Mapping;
    let size = image.size();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let (mapping, len) = image
            .get_mapping(at, (size - at).min(CHUNK as u64))
            .map_err(|e| StorageError::Import(format!("reading the qcow2 image: {e}")))?;
        let len = len.min(size - at);
        if len == 0 {
            break;
        }
        match mapping {
            Mapping::Zero { .. } => {}
            Mapping::Eof { .. } => break,
            _ => {
                let n = usize::try_from(len).unwrap_or(CHUNK);
                image
                    .read(&mut buf[..n], at)
                    .map_err(|e| StorageError::Import(format!("reading the qcow2 image: {e}")))?;
                write_data(writer, at, &buf[..n])?;
            }
        }
        at += len;
        progress.add(len);
    }
    Ok(())
}

/// Runs one import to the end: the source is fetched (a URL into the staging directory) and
/// hashed, the checksum checked, the format found, and the disk written into `pool` and
/// committed.
pub fn import(
    pool: &dyn Pool,
    req: &ImageRequest,
    settings: &Settings,
    progress: &Progress,
) -> Result<Image> {
    let staging = &settings.staging;
    let (staged, file, sha256) = match &req.source {
        ImageSource::File { path } => {
            let mut file =
                File::open(path).map_err(failed(format!("opening {}", path.display())))?;
            let meta = file
                .metadata()
                .map_err(failed(format!("reading {}", path.display())))?;
            if !meta.is_file() {
                return Err(StorageError::Import(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            progress.total.store(meta.len(), Ordering::Relaxed);
            let sha = hash_copy(&mut file, None, progress, &path.display().to_string())?;
            let staged = Staged {
                path: path.clone(),
                remove: false,
            };
            (staged, file, sha)
        }
        ImageSource::Url { url } => {
            std::fs::create_dir_all(staging)
                .map_err(failed(format!("creating {}", staging.display())))?;
            let staged = Staged {
                path: staging.join(format!("{}-{}.download", pool.name(), req.id)),
                remove: true,
            };
            let (file, sha) = download(url, &staged.path, settings.timeout, progress)?;
            (staged, file, sha)
        }
    };
    if let Some(expected) = &req.sha256 {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(StorageError::Import(format!(
                "checksum mismatch: the source's SHA-256 is {sha256}, not {expected}"
            )));
        }
    }
    let source_len = file.metadata().map_err(failed("reading the source"))?.len();
    let format = detect(&file)?;
    let qcow2 = match format {
        ImageFormat::Qcow2 => Some(
            open_qcow2(&file, &staged.path)
                .map_err(|e| StorageError::Import(format!("a broken qcow2 image: {e}")))?,
        ),
        ImageFormat::Raw => None,
    };
    let size = qcow2.as_ref().map_or(source_len, |q| q.size());
    if size == 0 || !size.is_multiple_of(512) {
        return Err(StorageError::Import(format!(
            "a disk image of {size} bytes: disks are whole 512-byte sectors, at least one"
        )));
    }
    // Hashing is done; conversion counts on from there.
    progress.total.store(source_len + size, Ordering::Relaxed);
    progress.done.store(source_len, Ordering::Relaxed);
    let mut writer = pool.image_writer(&req.id, size)?;
    match &qcow2 {
        Some(image) => convert_qcow2(image, writer.as_mut(), progress)?,
        None => convert_raw(&file, size, writer.as_mut(), progress)?,
    }
    let record = ImageRecord {
        id: req.id.clone(),
        name: req.name.clone(),
        source: req.source.clone(),
        requested_sha256: req.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
        format,
        size_bytes: size,
        sha256,
    };
    writer.commit(&record)
}

/// An import under way, or one that failed (kept so its error can be read).
#[derive(Debug)]
struct Job {
    request: ImageRequest,
    progress: Progress,
    error: Mutex<Option<String>>,
}

impl Job {
    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn image(&self, pool: &str) -> Image {
        let error = self.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let total = self.progress.total.load(Ordering::Relaxed);
        Image {
            id: self.request.id.clone(),
            name: self.request.name.clone(),
            pool: pool.to_owned(),
            state: if error.is_some() {
                ImageState::Failed
            } else {
                ImageState::Importing
            },
            source: self.request.source.clone(),
            format: None,
            size_bytes: 0,
            allocated_bytes: 0,
            sha256: None,
            done_bytes: self.progress.done.load(Ordering::Relaxed),
            total_bytes: (total > 0).then_some(total),
            error,
        }
    }
}

/// The daemon's imports, by pool and image id.
#[derive(Debug)]
pub struct Imports {
    settings: Settings,
    events: Arc<Events>,
    jobs: Mutex<HashMap<(String, String), Arc<Job>>>,
}

impl Imports {
    /// Imports that download stage their files in the staging directory, emptied here of
    /// what an earlier run left; each import's end is an event.
    pub fn new(settings: Settings, events: Arc<Events>) -> Self {
        if let Ok(entries) = std::fs::read_dir(&settings.staging) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Self {
            settings,
            events,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts importing `req` into `pool`, or reports the import or image it already made.
    pub fn start(self: &Arc<Self>, pool: Arc<dyn Pool>, mut req: ImageRequest) -> Result<Image> {
        check_request(&req)?;
        req.sha256 = req.sha256.map(|s| s.to_ascii_lowercase());
        let key = (pool.name().to_owned(), req.id.clone());
        // An import under way answers for itself; a failed one is retried with whatever the
        // request says now.
        let running = |jobs: &HashMap<(String, String), Arc<Job>>| -> Option<Result<Image>> {
            let job = jobs.get(&key).filter(|job| !job.failed())?;
            Some(if job.request == req {
                Ok(job.image(pool.name()))
            } else {
                Err(StorageError::Conflict {
                    id: req.id.clone(),
                    what: "request (an import with this id is under way)",
                })
            })
        };
        if let Some(answer) = running(&self.jobs()) {
            return answer;
        }
        // The pool is asked without holding the imports' lock (on Ceph it opens every image).
        if let Some(record) = pool.image_record(&req.id)? {
            if !record.same_request(&req) {
                return Err(StorageError::Conflict {
                    id: req.id,
                    what: "name, source or checksum (image)",
                });
            }
            return pool.image(&req.id);
        }
        if let Some(other) = pool.images()?.into_iter().find(|i| i.name == req.name) {
            return Err(StorageError::NameTaken {
                what: "image",
                name: req.name,
                by: other.id,
            });
        }
        let mut jobs = self.jobs();
        if let Some(answer) = running(&jobs) {
            return answer; // started by a request that came meanwhile
        }
        let job = Arc::new(Job {
            request: req.clone(),
            progress: Progress::default(),
            error: Mutex::new(None),
        });
        jobs.insert(key.clone(), job.clone());
        drop(jobs);
        let this = self.clone();
        let answer = job.image(pool.name());
        std::thread::Builder::new()
            .name(format!("import-{}", key.1))
            .spawn(move || {
                // A panic (a format parser's bug) fails this import, not the daemon; where
                // panics abort (release builds), the restarted daemon cleans up as after a
                // crash.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    import(pool.as_ref(), &job.request, &this.settings, &job.progress)
                }))
                .unwrap_or_else(|_| {
                    Err(StorageError::Import(
                        "the import stopped on an internal error (see the log)".into(),
                    ))
                });
                match result {
                    Ok(image) => {
                        this.events.push(
                            EventKind::ImageReady,
                            &key.0,
                            format!("image {} imported ({} bytes)", key.1, image.size_bytes),
                        );
                        this.jobs().remove(&key);
                    }
                    Err(e) => {
                        this.events.push(
                            EventKind::ImageFailed,
                            &key.0,
                            format!("importing image {}: {e}", key.1),
                        );
                        *job.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    }
                }
            })
            .map_err(failed("starting an import"))?;
        Ok(answer)
    }

    /// The pool's images, with those still importing or failed.
    pub fn list(&self, pool: &dyn Pool) -> Result<Vec<Image>> {
        let mut images = pool.images()?;
        let jobs = self.jobs();
        for ((p, _), job) in jobs.iter() {
            if p == pool.name() {
                images.push(job.image(p));
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    pub fn get(&self, pool: &dyn Pool, id: &str) -> Result<Image> {
        if let Some(job) = self.jobs().get(&(pool.name().to_owned(), id.to_owned())) {
            return Ok(job.image(pool.name()));
        }
        pool.image(id)
    }

    /// Deletes an image (not while it is importing); a failed import is forgotten.
    pub fn delete(&self, pool: &dyn Pool, id: &str) -> Result<()> {
        let key = (pool.name().to_owned(), id.to_owned());
        let mut jobs = self.jobs();
        if let Some(job) = jobs.get(&key) {
            if !job.failed() {
                return Err(StorageError::Busy(format!(
                    "image {id} is being imported; delete it once the import is done"
                )));
            }
            jobs.remove(&key);
        }
        drop(jobs);
        pool.delete_image(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(u64, usize)>);

    impl ImageWriter for Collect {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
            self.0.push((offset, data.len()));
            Ok(())
        }
        fn commit(self: Box<Self>, _: &ImageRecord) -> Result<Image> {
            unreachable!()
        }
    }

    #[test]
    fn only_blocks_holding_data_are_written() {
        let mut buf = vec![0u8; 8 * ZERO_BLOCK];
        buf[ZERO_BLOCK + 5] = 1;
        buf[2 * ZERO_BLOCK] = 1;
        buf[8 * ZERO_BLOCK - 1] = 1;
        let mut out = Collect::default();
        write_data(&mut out, 1000, &buf).unwrap();
        assert_eq!(
            out.0,
            vec![
                (1000 + ZERO_BLOCK as u64, 2 * ZERO_BLOCK),
                (1000 + 7 * ZERO_BLOCK as u64, ZERO_BLOCK)
            ]
        );
    }

    #[test]
    fn requests_are_checked_before_anything_starts() {
        let req = |source, sha256: Option<&str>| ImageRequest {
            id: "i1".into(),
            name: "debian".into(),
            source,
            sha256: sha256.map(str::to_owned),
        };
        let file = |p: &str| ImageSource::File { path: p.into() };
        let url = |u: &str| ImageSource::Url { url: u.into() };
        assert!(check_request(&req(file("/x.img"), Some(&"aB".repeat(32)))).is_ok());
        assert!(check_request(&req(url("https://example.org/x.qcow2"), None)).is_ok());
        for (bad, expect) in [
            (
                req(file("x.img"), None),
                "source path \"x.img\": must be absolute",
            ),
            (
                req(url("ftp://h/x"), None),
                "source url \"ftp://h/x\": must be an http",
            ),
            (
                req(file("/x"), Some("abc")),
                "sha256 \"abc\": must be 64 hexadecimal digits",
            ),
        ] {
            let e = check_request(&bad).unwrap_err().to_string();
            assert!(e.starts_with(expect), "{e}");
        }
    }
}
