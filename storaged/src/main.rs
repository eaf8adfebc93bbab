//! `triad-storaged --config FILE`: serves the pools the config names on a Unix socket.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use triad_api::storage::{PoolKind, StoragedConfig};
use triad_storaged::ceph::CephPool;
use triad_storaged::events::{self, Events};
use triad_storaged::images::{Imports, Settings};
use triad_storaged::local::LocalPool;
use triad_storaged::server::{router, Daemon};
use triad_storaged::smp::SmpPool;
use triad_storaged::Pool;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's storage daemon: pools and volumes over HTTP on a Unix socket"
)]
struct Args {
    /// JSON: {"socket": PATH, "node": NAME, "pools": [{"name", "kind": "local"|"smp", "path"}
    /// or {"name", "kind": "ceph", "rbd_pool", "ceph": {"conf", "client"}}]}; see
    /// docs/storaged.md.
    #[arg(long, default_value = StoragedConfig::PATH)]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-storaged: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config: StoragedConfig =
        triad_api::server::read_config(&args.config, StoragedConfig::PATH.as_ref())?;
    let node = match &config.node {
        Some(node) => node.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_owned(),
    };
    let beat = std::time::Duration::from_millis(config.heartbeat_ms.max(1));
    let mut pools = BTreeMap::new();
    for p in &config.pools {
        let context = || format!("pool {}", p.name);
        let path = || {
            p.path
                .as_deref()
                .with_context(|| format!("pool {}: a {:?} pool needs a \"path\"", p.name, p.kind))
        };
        anyhow::ensure!(
            p.kind == PoolKind::Ceph || (p.ceph.is_none() && p.rbd_pool.is_none()),
            "pool {}: \"ceph\" and \"rbd_pool\" are for Ceph pools",
            p.name
        );
        let pool: Arc<dyn Pool> = match p.kind {
            PoolKind::Local => Arc::new(LocalPool::open(&p.name, path()?).with_context(context)?),
            PoolKind::Smp => {
                Arc::new(SmpPool::open(&p.name, path()?, &node, beat).with_context(context)?)
            }
            PoolKind::Ceph => {
                anyhow::ensure!(
                    p.path.is_none(),
                    "pool {}: a Ceph pool has no \"path\"",
                    p.name
                );
                let rbd_pool = p.rbd_pool.as_deref().unwrap_or(&p.name);
                let client = p.ceph.clone().unwrap_or_default();
                Arc::new(CephPool::open(&p.name, rbd_pool, client, &node).with_context(context)?)
            }
        };
        if pools.insert(p.name.clone(), (p.kind, pool)).is_some() {
            anyhow::bail!("pool {} is named twice", p.name);
        }
    }
    let events = Arc::new(Events::new());
    let settings = Settings {
        staging: config.staging_dir.clone(),
        timeout: std::time::Duration::from_millis(config.download_timeout_ms.max(1)),
    };
    events::watch(
        pools.values().map(|(_, pool)| pool.clone()).collect(),
        events.clone(),
        std::time::Duration::from_millis(config.usage_check_ms.max(1)),
    );
    let daemon = Daemon {
        pools: Arc::new(pools),
        imports: Arc::new(Imports::new(settings, events.clone())),
        events,
    };
    tracing::info!("serving {} pools", daemon.pools.len());
    tokio::runtime::Runtime::new()?.block_on(triad_api::server::serve_unix(
        &config.socket,
        router(daemon),
    ))?;
    Ok(())
}
