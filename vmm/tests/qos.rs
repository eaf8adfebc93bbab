//! QoS under real KVM: the test guest reads its disk as fast as it can, and the rate the VMM
//! lets through matches the configured limit, set at boot or changed while running.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use triad_api::client::VmmClient;
use triad_api::vmm::{DevicePatch, Qos};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Requests per second the guest completes, from the `TRIAD-BLK-IOS <total>` lines it prints,
/// timed by this process as they appear, over `window` after `settle` (which lets the burst
/// allowance drain).
fn measure_iops(serial: &Path, settle: Duration, window: Duration) -> f64 {
    // Complete lines only: the guest writes a byte at a time, so the last line may be partial.
    let total = |text: &str| {
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter_map(|l| l.strip_prefix("TRIAD-BLK-IOS "))
            .filter_map(|v| v.parse::<u64>().ok())
            .next_back()
    };
    wait_for_serial(serial, "TRIAD-BLK-IOS ", 1, TIMEOUT);
    std::thread::sleep(settle);
    // Poll until a new line lands, so each sample is timed at a line's arrival.
    let sample = || {
        let before = total(&std::fs::read_to_string(serial).unwrap()).unwrap();
        loop {
            let now = total(&std::fs::read_to_string(serial).unwrap()).unwrap();
            if now != before {
                return (Instant::now(), now);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (t0, n0) = sample();
    std::thread::sleep(window);
    let (t1, n1) = sample();
    (n1 - n0) as f64 / (t1 - t0).as_secs_f64()
}

fn flood_config(dir: &TempDir, image: &Path, qos: serde_json::Value) -> std::path::PathBuf {
    let disk = serde_json::json!([{"id": "d", "path": image, "cache": "writeback", "qos": qos}]);
    guest_config(
        dir,
        "triad.blk=flood",
        serde_json::json!({ "drives": disk }),
    )
}

fn image(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    path
}

fn assert_near(measured: f64, limit: f64, what: &str) {
    eprintln!("{what}: {measured:.1}/s against a limit of {limit}/s");
    let error = (measured - limit).abs() / limit;
    assert!(
        error <= 0.10,
        "{what}: {measured:.1}/s against a limit of {limit}/s"
    );
}

#[test]
fn disk_iops_and_bandwidth_are_capped() {
    if !kvm_available("disk_iops_and_bandwidth_are_capped") {
        return;
    }
    for (name, qos, limit) in [
        ("iops", serde_json::json!({"iops": 200}), 200.0),
        // 800 KiB/s of 4 KiB reads is 200 requests per second.
        (
            "bytes",
            serde_json::json!({"bytes_per_sec": 819_200}),
            200.0,
        ),
    ] {
        let dir = TempDir::new(&format!("qos-{name}"));
        let vm = flood_config(&dir, &image(&dir), qos);
        let _vmm = VmmProcess::spawn(&["--config", vm.to_str().unwrap()]);
        let iops = measure_iops(
            &dir.join("serial.log"),
            Duration::from_millis(500),
            Duration::from_secs(2),
        );
        assert_near(iops, limit, name);
    }
}

#[test]
fn a_running_disk_takes_new_limits() {
    if !kvm_available("a_running_disk_takes_new_limits") {
        return;
    }
    let dir = TempDir::new("qos-patch");
    let vm = flood_config(&dir, &image(&dir), serde_json::json!({"iops": 150}));
    let sock = dir.join("api.sock");
    let _vmm = VmmProcess::spawn(&[
        "--config",
        vm.to_str().unwrap(),
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let serial = dir.join("serial.log");
    assert_near(
        measure_iops(&serial, Duration::from_millis(500), Duration::from_secs(2)),
        150.0,
        "before",
    );
    let api = VmmClient::new(&sock);
    let patch = DevicePatch {
        qos: Some(Qos {
            iops: Some(300),
            bytes_per_sec: None,
            burst: None,
        }),
    };
    let body = serde_json::to_string(&patch).unwrap();
    let resp = triad_api::http::request(&sock, "PATCH", "/drives/d", Some(&body), TIMEOUT).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_near(
        measure_iops(&serial, Duration::from_millis(500), Duration::from_secs(2)),
        300.0,
        "after",
    );
    // The config remembers it, and throttling is counted.
    let info = api.info().unwrap();
    assert_eq!(info.config.unwrap().drives[0].qos.unwrap().iops, Some(300));
    assert!(api.metrics().unwrap().drives["d"]["throttled"] > 0);
    // Unknown devices and bad limits are refused by name.
    let resp =
        triad_api::http::request(&sock, "PATCH", "/drives/nope", Some(&body), TIMEOUT).unwrap();
    assert_eq!(resp.status, 404, "{}", resp.body);
    let bad = r#"{"qos":{"iops":10,"burst":-1}}"#;
    let resp = triad_api::http::request(&sock, "PATCH", "/drives/d", Some(bad), TIMEOUT).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("qos.burst"), "{}", resp.body);
}
