//! `triad-controller --config FILE`: the cluster's API, scheduler and reconcilers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use triad_controller::ControllerConfig;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's controller: the cluster's HTTP API, scheduler and reconcilers"
)]
struct Args {
    /// JSON: {"listen", "socket", "store": {"kind": "redb", "path"} | {"kind": "etcd",
    /// "endpoints"}, "admin_token_file"}; see docs/api.md.
    #[arg(long, default_value = ControllerConfig::PATH)]
    config: PathBuf,
    /// Serve the API and call nodes plain HTTP instead of TLS: for labs on a network nobody
    /// else reaches.
    #[arg(long)]
    insecure_http: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let result = (|| -> anyhow::Result<()> {
        let config: ControllerConfig =
            triad_api::server::read_config(&args.config, ControllerConfig::PATH.as_ref())?;
        tokio::runtime::Runtime::new()?
            .block_on(triad_controller::serve(config, args.insecure_http))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-controller: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
