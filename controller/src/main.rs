//! `triad-controller --config FILE`: the cluster's API, scheduler and reconcilers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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
    #[arg(long, default_value = "/etc/triad/controller.json")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let result = (|| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("reading {}", args.config.display()))?;
        let config: ControllerConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", args.config.display()))?;
        tokio::runtime::Runtime::new()?.block_on(triad_controller::serve(config))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-controller: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
