//! `triad-netd --config FILE`: makes this host's networks and VM ports, and serves them on a
//! Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use triad_api::net::NetdConfig;
use triad_netd::host::Host;
use triad_netd::server::router;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's network daemon: bridges, VXLAN and VM TAPs over HTTP on a Unix socket"
)]
struct Args {
    /// JSON: {"socket": PATH, "state_dir": DIR, "node": NAME, "ovs_db": DB}, all optional; see docs/netd.md.
    #[arg(long, default_value = NetdConfig::PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-netd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    triad_api::tools::require(&triad_netd::REQUIRED_TOOLS)?;
    for tool in triad_netd::OPTIONAL_TOOLS {
        if tool.find().is_none() {
            tracing::warn!("{}", tool.missing());
        }
    }
    let config: NetdConfig =
        triad_api::server::read_config(&args.config, NetdConfig::PATH.as_ref())?;
    let node = match &config.node {
        Some(node) => node.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_owned(),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let host = Arc::new(Host::open(
            node,
            config.state_dir.clone(),
            config.ovs_db.clone(),
        )?);
        // What could not be brought back is logged; the API serves either way, so that an
        // operator can see and fix it.
        if let Err(e) = host.reconcile().await {
            tracing::error!("reconciling the host: {e}");
        }
        let retrying = host.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                retrying.retry_unsettled().await;
            }
        });
        Ok(triad_api::server::serve_unix(&config.socket, router(host)).await?)
    })
}
