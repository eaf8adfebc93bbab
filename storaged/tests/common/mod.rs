//! A `triad-storaged` process for tests, and calls to its API.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use triad_api::http::{request, Response};
use triad_api::ErrorBody;

#[allow(unused_imports)] // each test binary uses its own subset
pub use triad_tests::{skip, TempDir};

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts storaged with `pools`, as node `node-1`, everything else under `dir`.
    pub fn start(dir: &Path, pools: serde_json::Value) -> Self {
        Self::start_with(dir, pools, serde_json::json!({}), &[])
    }

    /// As `start`, with the config's other fields in `extra` and environment variables `env`.
    pub fn start_with(
        dir: &Path,
        pools: serde_json::Value,
        extra: serde_json::Value,
        env: &[(&str, &Path)],
    ) -> Self {
        let socket = dir.join("storaged.sock");
        let config = dir.join("storaged.json");
        let mut json = serde_json::json!({
            "socket": socket,
            "node": "node-1",
            "heartbeat_ms": 20,
            "staging_dir": dir.join("staging"),
            "pools": pools,
        });
        for (key, value) in extra.as_object().into_iter().flatten() {
            json[key] = value.clone();
        }
        std::fs::write(&config, json.to_string()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_triad-storaged"))
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        // Killed on drop, also when it does not come up.
        let daemon = Self { child, socket };
        let start = Instant::now();
        while !daemon.socket.exists()
            || std::os::unix::net::UnixStream::connect(&daemon.socket).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "storaged did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Response {
        let body = body.map(|b| b.to_string());
        request(
            &self.socket,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(120),
        )
        .unwrap()
    }

    /// The status of a call without a body.
    pub fn status(&self, method: &str, path: &str) -> u16 {
        self.call(method, path, None).status
    }

    /// The error message of a failed call, checking its status.
    pub fn error(&self, status: u16, method: &str, path: &str, body: serde_json::Value) -> String {
        let resp = self.call(method, path, Some(body));
        assert_eq!(resp.status, status, "{}", resp.body);
        serde_json::from_str::<ErrorBody>(&resp.body).unwrap().error
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok<T: serde::de::DeserializeOwned>(resp: Response) -> T {
    assert!(
        (200..300).contains(&resp.status),
        "{}: {}",
        resp.status,
        resp.body
    );
    serde_json::from_str(&resp.body).unwrap()
}
