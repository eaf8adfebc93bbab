//! Images and snapshots on a local pool, through a `triad-storaged` process: imports from a
//! file and from an HTTP server (python's, started by the test), raw and qcow2 (made by
//! `qemu-img`), checksums, and what bad sources leave behind (nothing).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{ok, Daemon, TempDir};
use triad_api::storage::{Image, ImageFormat, ImageState, Snapshot, Volume};

const MIB: u64 = 1 << 20;

fn start(dir: &Path) -> Daemon {
    Daemon::start(
        dir,
        serde_json::json!([{"name": "local", "kind": "local", "path": dir.join("pool")}]),
    )
}

/// A raw disk of 8 MiB with data at 1 MiB and 6 MiB, the rest holes.
fn raw_disk(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(8 * MIB).unwrap();
    f.write_all_at(b"boot sector", MIB).unwrap();
    f.write_all_at(b"root fs", 6 * MIB).unwrap();
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Waits for an import to end, returning the image as it ended.
fn wait_import(daemon: &Daemon, pool: &str, id: &str) -> Image {
    let start = Instant::now();
    loop {
        let image: Image = ok(daemon.call("GET", &format!("/pools/{pool}/images/{id}"), None));
        if image.state != ImageState::Importing {
            return image;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{image:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn import(daemon: &Daemon, id: &str, source: serde_json::Value, sha: Option<&str>) -> Image {
    let mut req = serde_json::json!({"id": id, "name": id, "source": source});
    if let Some(sha) = sha {
        req["sha256"] = sha.into();
    }
    let resp = daemon.call("POST", "/pools/local/images", Some(req));
    assert!([200, 202].contains(&resp.status), "{}", resp.body);
    wait_import(daemon, "local", id)
}

/// A free TCP port on loopback (nothing listens on it once this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Python's HTTP server for a directory, on a free loopback port, over TLS or not.
struct WebServer {
    child: Child,
    port: u16,
    tls: bool,
}

impl WebServer {
    fn http(dir: &Path) -> Self {
        Self::serve(dir, None)
    }

    /// With a certificate for 127.0.0.1 signed by a CA of its own (`ca.pem` in `certs`).
    fn https(dir: &Path, certs: &Path) -> Self {
        std::fs::create_dir_all(certs).unwrap();
        self_signed(certs, "Triad test CA", "ca.key", "ca.pem");
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            certs,
        );
        std::fs::write(certs.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
            certs,
        );
        Self::serve(dir, Some(certs))
    }

    fn serve(dir: &Path, certs: Option<&Path>) -> Self {
        let port = free_port();
        let tls = certs.map_or(String::new(), |certs| {
            format!(
                "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                 ctx.load_cert_chain({cert:?}, {key:?})\n\
                 server.socket = ctx.wrap_socket(server.socket, server_side=True)\n",
                cert = certs.join("server.pem").to_str().unwrap(),
                key = certs.join("server.key").to_str().unwrap(),
            )
        });
        let script = format!(
            "import functools, http.server, ssl\n\
             handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
             server = http.server.HTTPServer(('127.0.0.1', {port}), handler)\n\
             {tls}\
             server.serve_forever()\n",
            dir = dir.to_str().unwrap(),
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "no web server");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            tls: certs.is_some(),
        }
    }

    fn url(&self, file: &str) -> serde_json::Value {
        let scheme = if self.tls { "https" } else { "http" };
        serde_json::json!({"kind": "url", "url": format!("{scheme}://127.0.0.1:{}/{file}", self.port)})
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            files.extend(files_under(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files.sort();
    files
}

#[test]
fn images_come_from_files_and_urls_raw_or_qcow2_and_root_volumes_from_them() {
    let tmp = TempDir::new("images");
    let dir = tmp.path();
    let web = dir.join("web");
    std::fs::create_dir_all(&web).unwrap();
    let raw = web.join("disk.raw");
    raw_disk(&raw);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        web.join("disk.qcow2").to_str().unwrap(),
    ]);
    let daemon = start(dir);
    let server = WebServer::http(&web);

    // From a file, checked against its checksum.
    let sum = sha256(&raw);
    let file = serde_json::json!({"kind": "file", "path": raw});
    let image = import(&daemon, "debian", file.clone(), Some(&sum.to_uppercase()));
    assert_eq!(image.state, ImageState::Ready, "{image:?}");
    assert_eq!(image.format, Some(ImageFormat::Raw));
    assert_eq!(image.size_bytes, 8 * MIB);
    assert_eq!(image.sha256.as_deref(), Some(sum.as_str()));
    assert!(image.allocated_bytes <= 256 << 10, "thin: {image:?}");
    // A retry returns it as it is; another image may not take its name.
    let again = daemon.call(
        "POST",
        "/pools/local/images",
        Some(serde_json::json!({"id": "debian", "name": "debian", "source": file, "sha256": sum.to_uppercase()})),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    let msg = daemon.error(
        409,
        "POST",
        "/pools/local/images",
        serde_json::json!({"id": "other", "name": "debian", "source": server.url("disk.raw")}),
    );
    assert_eq!(msg, "image name debian is taken by image debian");

    // From a URL, qcow2, converted to raw.
    let q = import(&daemon, "debian-q", server.url("disk.qcow2"), None);
    assert_eq!(
        (q.state, q.format, q.size_bytes),
        (ImageState::Ready, Some(ImageFormat::Qcow2), 8 * MIB),
        "{q:?}"
    );

    // Root volumes from both hold the disk's data, grown to the size asked for.
    for (id, image) in [("root-1", "debian"), ("root-2", "debian-q")] {
        let v: Volume = ok(daemon.call(
            "POST",
            "/pools/local/volumes",
            Some(
                serde_json::json!({"id": id, "name": id, "size_bytes": 16 * MIB,
                "source": {"kind": "image", "id": image}}),
            ),
        ));
        assert_eq!(v.size_bytes, 16 * MIB);
        assert_eq!(read_at(&v.path, MIB, 11), b"boot sector");
        assert_eq!(read_at(&v.path, 6 * MIB, 7), b"root fs");
        assert!(v.allocated_bytes <= 256 << 10, "{v:?}");
    }
    let msg = daemon.error(
        400,
        "POST",
        "/pools/local/volumes",
        serde_json::json!({"id": "small", "name": "small", "size_bytes": MIB,
            "source": {"kind": "image", "id": "debian"}}),
    );
    assert!(msg.contains("volumes only grow"), "{msg}");
    let msg = daemon.error(
        404,
        "POST",
        "/pools/local/volumes",
        serde_json::json!({"id": "x", "name": "x", "size_bytes": MIB,
            "source": {"kind": "image", "id": "nope"}}),
    );
    assert_eq!(msg, "image nope not found");

    // Bad sources fail with a reason and leave nothing in the pool.
    let before = files_under(&dir.join("pool"));
    std::fs::write(web.join("garbage.qcow2"), b"QFI\xfb\0\0\0\x03garbage").unwrap();
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        web.join("backed.qcow2").to_str().unwrap(),
    ]);
    let closed = free_port();
    for (id, source, sha, expect) in [
        (
            "bad-sum",
            server.url("disk.raw"),
            Some("0".repeat(64)),
            "checksum mismatch",
        ),
        (
            "missing",
            server.url("nope.raw"),
            None,
            "the server answered 404",
        ),
        (
            "garbage",
            server.url("garbage.qcow2"),
            None,
            "a broken qcow2 image",
        ),
        ("backed", server.url("backed.qcow2"), None, "backing file"),
        (
            "refused",
            serde_json::json!({"kind": "url", "url": format!("http://127.0.0.1:{closed}/x")}),
            None,
            "Connection refused",
        ),
        (
            "no-file",
            serde_json::json!({"kind": "file", "path": "/nonexistent/disk.raw"}),
            None,
            "opening /nonexistent/disk.raw",
        ),
        (
            "dir",
            serde_json::json!({"kind": "file", "path": "/tmp"}),
            None,
            "not a regular file",
        ),
    ] {
        let image = import(&daemon, id, source, sha.as_deref());
        assert_eq!(image.state, ImageState::Failed, "{id}: {image:?}");
        let error = image.error.unwrap_or_default();
        assert!(error.contains(expect), "{id}: {error}");
    }
    assert_eq!(
        files_under(&dir.join("pool")),
        before,
        "a failed import left files"
    );
    assert_eq!(std::fs::read_dir(dir.join("staging")).unwrap().count(), 0);
    // A failed import is retried with a corrected request.
    let fixed = import(&daemon, "bad-sum", server.url("disk.raw"), Some(&sum));
    assert_eq!(fixed.state, ImageState::Ready);
    assert_eq!(daemon.status("DELETE", "/pools/local/images/missing"), 204);

    // Images survive a restart (the failed imports do not: they were never the pool's).
    drop(daemon);
    let daemon = start(dir);
    let images: Vec<Image> = ok(daemon.call("GET", "/pools/local/images", None));
    let names: Vec<_> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["bad-sum", "debian", "debian-q"]);
    assert_eq!(daemon.status("DELETE", "/pools/local/images/debian"), 204);
    assert_eq!(daemon.status("DELETE", "/pools/local/images/debian"), 204);
    assert_eq!(daemon.status("GET", "/pools/local/images/debian"), 404);
}

/// Holds a volume's file lock as a running VMM does.
fn hold(path: &Path) -> std::fs::File {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    f
}

#[test]
fn snapshots_roll_back_and_a_volume_in_use_is_left_alone() {
    let tmp = TempDir::new("snapshots");
    let dir = tmp.path();
    let daemon = start(dir);
    let v: Volume = ok(daemon.call(
        "POST",
        "/pools/local/volumes",
        Some(serde_json::json!({"id": "v1", "name": "data", "size_bytes": 4 * MIB})),
    ));
    let write = |data: &[u8]| {
        std::fs::File::options()
            .write(true)
            .open(&v.path)
            .unwrap()
            .write_all_at(data, MIB)
            .unwrap()
    };
    write(b"monday");
    let snap = |name: &str| {
        daemon.call(
            "POST",
            "/pools/local/volumes/v1/snapshots",
            Some(serde_json::json!({"name": name})),
        )
    };
    let s: Snapshot = ok(snap("mon"));
    assert_eq!((s.name.as_str(), s.size_bytes), ("mon", 4 * MIB));
    let again: Snapshot = ok(snap("mon"));
    assert_eq!(again, s, "idempotent by name");
    write(b"friday");
    ok::<Volume>(daemon.call(
        "POST",
        "/pools/local/volumes/v1/grow",
        Some(serde_json::json!({"size_bytes": 8 * MIB})),
    ));

    // A volume made from the snapshot has Monday's data.
    let copy: Volume = ok(daemon.call(
        "POST",
        "/pools/local/volumes",
        Some(
            serde_json::json!({"id": "v2", "name": "copy", "size_bytes": 4 * MIB,
            "source": {"kind": "snapshot", "volume": "v1", "snapshot": "mon"}}),
        ),
    ));
    assert_eq!(read_at(&copy.path, MIB, 6), b"monday");

    // While a VMM holds the volume, it is not rolled back, deleted, or copied into a snapshot
    // that would not be one (reflinks are instant and atomic, and allowed).
    let held = hold(&v.path);
    let msg = daemon.error(
        409,
        "POST",
        "/pools/local/volumes/v1/snapshots/mon/rollback",
        serde_json::json!({}),
    );
    assert_eq!(msg, "volume v1 is in use (a VMM has it open)");
    assert_eq!(daemon.status("DELETE", "/pools/local/volumes/v1"), 409);
    let live = snap("live");
    assert!([200, 409].contains(&live.status), "{}", live.body);
    drop(held);

    assert_eq!(
        daemon.status("POST", "/pools/local/volumes/v1/snapshots/mon/rollback"),
        204
    );
    assert_eq!(read_at(&v.path, MIB, 6), b"monday");
    let rolled: Volume = ok(daemon.call("GET", "/pools/local/volumes/v1", None));
    assert_eq!(rolled.size_bytes, 4 * MIB, "the size is the snapshot's too");
    let msg = daemon.error(
        404,
        "POST",
        "/pools/local/volumes/v1/snapshots/nope/rollback",
        serde_json::json!({}),
    );
    assert_eq!(msg, "snapshot nope of volume v1 not found");
    let msg = daemon.error(
        400,
        "POST",
        "/pools/local/volumes/v1/snapshots",
        serde_json::json!({"name": "../x"}),
    );
    assert!(msg.starts_with("snapshot name \"../x\""), "{msg}");

    let snaps: Vec<Snapshot> = ok(daemon.call("GET", "/pools/local/volumes/v1/snapshots", None));
    assert!(snaps.iter().any(|s| s.name == "mon"), "{snaps:?}");
    assert_eq!(
        daemon.status("DELETE", "/pools/local/volumes/v1/snapshots/mon"),
        204
    );
    assert_eq!(
        daemon.status("DELETE", "/pools/local/volumes/v1/snapshots/mon"),
        204
    );
    assert_eq!(daemon.status("DELETE", "/pools/local/volumes/v1"), 204);
    assert!(!v.path.exists());
    assert_eq!(
        read_at(&copy.path, MIB, 6),
        b"monday",
        "the copy does not depend on it"
    );
}

/// A small tmpfs, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self(path.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn random_file(path: &Path, mib: u64) {
    let data: Vec<u8> = (0..mib * MIB)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0] | 1)
        .collect();
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_full_pool_fails_an_import_cleanly_warns_and_stalled_downloads_time_out() {
    let test = "a_full_pool_fails_an_import_cleanly_warns_and_stalled_downloads_time_out";
    let tmp = TempDir::new("full");
    let dir = tmp.path();
    let small = match SmallFs::mount(&dir.join("small"), "4m") {
        Ok(fs) => fs,
        Err(e) => return common::skip(test, &format!("cannot mount a tmpfs here: {e}")),
    };
    let daemon = Daemon::start_with(
        dir,
        serde_json::json!([{"name": "small", "kind": "local", "path": small.0}]),
        serde_json::json!({"usage_check_ms": 50, "download_timeout_ms": 1000}),
        &[],
    );
    let post = |id: &str, source: serde_json::Value| {
        let resp = daemon.call(
            "POST",
            "/pools/small/images",
            Some(serde_json::json!({"id": id, "name": id, "source": source})),
        );
        assert_eq!(resp.status, 202, "{}", resp.body);
        wait_import(&daemon, "small", id)
    };

    // Too big for the pool: the import fails and leaves nothing.
    random_file(&dir.join("big.raw"), 8);
    let big = post(
        "big",
        serde_json::json!({"kind": "file", "path": dir.join("big.raw")}),
    );
    assert_eq!(big.state, ImageState::Failed, "{big:?}");
    assert!(
        big.error
            .as_deref()
            .unwrap_or("")
            .contains("No space left on device"),
        "{big:?}"
    );
    assert_eq!(files_under(&small.0), Vec::<PathBuf>::new());

    // One that fits fills the pool past 70%: a warning event.
    random_file(&dir.join("fits.raw"), 3);
    let fits = post(
        "fits",
        serde_json::json!({"kind": "file", "path": dir.join("fits.raw")}),
    );
    assert_eq!(fits.state, ImageState::Ready, "{fits:?}");
    let start = Instant::now();
    let events = loop {
        let events: Vec<triad_api::storage::Event> = ok(daemon.call("GET", "/events", None));
        if events
            .iter()
            .any(|e| e.kind == triad_api::storage::EventKind::PoolWarning)
        {
            break events;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{events:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    use triad_api::storage::EventKind::*;
    // The pool's own watch may warn while the failing import fills it: the image events
    // are what must come in order.
    let first_image_event = kinds.iter().find(|k| matches!(k, ImageFailed | ImageReady));
    assert_eq!(first_image_event, Some(&ImageFailed), "{kinds:?}");
    assert!(
        kinds.contains(&ImageReady) && kinds.contains(&PoolWarning),
        "{kinds:?}"
    );
    let warning = events.iter().find(|e| e.kind == PoolWarning).unwrap();
    assert!(warning.message.contains("warning above 70%"), "{warning:?}");
    let last = events.last().unwrap().seq;
    let later: Vec<triad_api::storage::Event> =
        ok(daemon.call("GET", &format!("/events?after={last}"), None));
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(daemon.status("GET", "/events?after=x"), 400);

    // A server that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/disk.raw", silent.local_addr().unwrap());
    let stalled = post("stalled", serde_json::json!({"kind": "url", "url": url}));
    assert_eq!(stalled.state, ImageState::Failed, "{stalled:?}");
    let error = stalled.error.unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    drop(daemon);
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A self-signed certificate for `subject` (a CA of its own), written into `dir`.
fn self_signed(dir: &Path, subject: &str, key: &str, cert: &str) {
    let subj = format!("/CN={subject}");
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subj,
            "-keyout", key, "-out", cert,
        ],
        dir,
    );
}

#[test]
fn images_come_over_https_from_servers_the_node_trusts_only() {
    let tmp = TempDir::new("https");
    let dir = tmp.path();
    let web = dir.join("web");
    std::fs::create_dir_all(&web).unwrap();
    raw_disk(&web.join("disk.raw"));
    let certs = dir.join("certs");
    let server = WebServer::https(&web, &certs);
    let url = server.url("disk.raw");
    let pools = serde_json::json!([{"name": "local", "kind": "local", "path": dir.join("pool")}]);

    // The node's trust store (here the test's CA, as SSL_CERT_FILE) vouches for the server.
    let ca = certs.join("ca.pem");
    let daemon = Daemon::start_with(
        dir,
        pools.clone(),
        serde_json::json!({}),
        &[("SSL_CERT_FILE", &ca)],
    );
    let image = import(
        &daemon,
        "tls",
        url.clone(),
        Some(&sha256(&web.join("disk.raw"))),
    );
    assert_eq!(
        (image.state, image.size_bytes),
        (ImageState::Ready, 8 * MIB),
        "{image:?}"
    );
    drop(daemon);

    // A server the node does not trust is refused.
    let other = dir.join("other-ca.pem");
    self_signed(&certs, "Someone else", "other.key", other.to_str().unwrap());
    let daemon = Daemon::start_with(
        dir,
        pools,
        serde_json::json!({}),
        &[("SSL_CERT_FILE", &other)],
    );
    let image = import(&daemon, "untrusted", url, None);
    assert_eq!(image.state, ImageState::Failed, "{image:?}");
    let error = image.error.unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
