//! `triad-controller --config FILE`: the cluster's API, scheduler and reconcilers;
//! `triad-controller backup` and `restore`: its state kept in a file and put back.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use triad_controller::ControllerConfig;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's controller: the cluster's HTTP API, scheduler and reconcilers"
)]
struct Args {
    /// JSON: {"listen", "socket", "store": {"kind": "redb", "path"} | {"kind": "etcd",
    /// "endpoints"}, "admin_token_file", "tls_dir", "tls_names", "cli_config_file"}, all
    /// optional; see docs/api.md.
    #[arg(long, global = true, default_value = ControllerConfig::PATH)]
    config: PathBuf,
    /// Serve the API and call nodes plain HTTP instead of TLS: for labs on a network nobody
    /// else reaches.
    #[arg(long, global = true)]
    insecure_http: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a backup from the running controller (as the admin) into a new file in --dir,
    /// mode 0600, and keep only the newest --keep there.
    Backup {
        #[arg(long, default_value = "/var/backups/triad")]
        dir: PathBuf,
        #[arg(long, default_value_t = 14)]
        keep: usize,
    },
    /// Put a backup into this controller's store (stop the controller first), with the
    /// cluster's CA, and make a new admin token. Refused when the store holds a cluster,
    /// unless --force; refused for a backup of a newer Triad.
    Restore {
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let result = (|| -> anyhow::Result<()> {
        let config: ControllerConfig =
            triad_api::server::read_config(&args.config, ControllerConfig::PATH.as_ref())?;
        match args.command {
            None => tokio::runtime::Runtime::new()?
                .block_on(triad_controller::serve(config, args.insecure_http)),
            Some(Command::Backup { dir, keep }) => {
                let file = triad_controller::backup_to(&config, args.insecure_http, &dir, keep)?;
                println!("{}", file.display());
                Ok(())
            }
            Some(Command::Restore { file, force }) => tokio::runtime::Runtime::new()?
                .block_on(triad_controller::restore_from(&config, &file, force)),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-controller: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
