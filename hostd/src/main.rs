//! `triad-hostd --config FILE`: the node agent, serving its API on a Unix socket (and on TCP
//! for the controller); `triad-hostd diag`: this node's state from its daemons' sockets.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use triad_api::hostd::HostdConfig;
use triad_hostd::{diag, server, Agent};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's node agent: VMs made, run and supervised over the VMM, storaged and netd"
)]
struct Args {
    /// JSON: {"socket", "listen", "state_dir", "node", "netd_socket", "storaged_socket", ...},
    /// all optional; see docs/hostd.md.
    #[arg(long, global = true, default_value = "/etc/triad/hostd.json")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this node's VMs, TAPs, leases, volumes and their holders, and each daemon's
    /// health, from the local sockets only.
    Diag {
        /// Print the diagnosis as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the node's token, which joins the node to a controller (`triad node join`).
    Token,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Diag { json }) => run_diag(&args.config, json),
        Some(Command::Token) => print_token(&args.config),
        None => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            serve(&args.config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad-hostd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_diag(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let config = diag::config_or_default(config).map_err(anyhow::Error::msg)?;
    let diagnosis = diag::gather(&config);
    if json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print!("{}", diag::render(&diagnosis));
    }
    Ok(())
}

fn print_token(config: &std::path::Path) -> anyhow::Result<()> {
    let config = diag::config_or_default(config).map_err(anyhow::Error::msg)?;
    match triad_hostd::token::read(&config.state_dir)? {
        Some(token) => {
            println!("{token}");
            Ok(())
        }
        None => anyhow::bail!(
            "{} has no node token: start triad-hostd once to make it",
            config.state_dir.display()
        ),
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: HostdConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let listen = config.listen;
    let socket = config.socket.clone();
    tokio::runtime::Runtime::new()?.block_on(async move {
        let agent = tokio::task::spawn_blocking(move || Agent::open(config)).await??;
        let router = server::router(agent.clone());
        tracing::info!("node {}", agent.node_name());
        if let Some(addr) = listen {
            let router = server::tcp_router(agent.clone());
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!("serving the controller on {addr}");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tcp, router).await {
                    tracing::error!("serving on {addr}: {e}");
                }
            });
        }
        triad_api::server::serve_unix(&socket, router).await?;
        // VMMs live on in their own process groups: a hostd stopped or restarted leaves its
        // VMs running, and the next one adopts them.
        Ok(())
    })
}
