//! `triad-hostd --config FILE`: the node agent, serving its API on a Unix socket (and on TCP
//! for the controller); `triad-hostd diag`: this node's state from its daemons' sockets.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use triad_api::hostd::HostdConfig;
use triad_api::server::{serve_tcp, ServerTls};
use triad_hostd::tls::NodeTls;
use triad_hostd::{diag, init, server, Agent};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's node agent: VMs made, run and supervised over the VMM, storaged and netd"
)]
struct Args {
    /// JSON: {"socket", "listen", "state_dir", "node", "netd_socket", "storaged_socket", ...},
    /// all optional; see docs/hostd.md.
    #[arg(long, global = true, default_value = HostdConfig::PATH)]
    config: PathBuf,
    /// Serve the controller plain HTTP on TCP instead of TLS: for labs on a network nobody
    /// else reaches.
    #[arg(long)]
    insecure_http: bool,
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
    /// Write this node's configs: hostd's (at --config), and netd's and storaged's beside it.
    Init {
        /// The node's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The management network: an interface (eno1) or an address of this host. hostd
        /// serves the controller there (port 7301) and heartbeats its peers (UDP 7302).
        #[arg(long)]
        management: String,
        /// The storage network, heartbeated too (default: management only).
        #[arg(long)]
        storage: Option<String>,
        /// A pool besides `local` (/var/lib/triad/pools/local): NAME=local:DIR, NAME=smp:DIR
        /// (a shared mount, at the same path on every node) or NAME=ceph:RBD_POOL. Repeatable.
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Replace config files that exist.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Diag { json }) => run_diag(&args.config, json),
        Some(Command::Token) => print_token(&args.config),
        Some(Command::Init {
            name,
            management,
            storage,
            pools,
            force,
        }) => init(
            &args.config,
            &init::InitRequest {
                node: name,
                management,
                storage,
                pools,
            },
            force,
        ),
        None => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            serve(&args.config, args.insecure_http)
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
    // The diagnosis works on a node that has no config file yet: its defaults.
    let config: HostdConfig = triad_api::server::read_config(config, config)?;
    let diagnosis = diag::gather(&config);
    if json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print!("{}", diag::render(&diagnosis));
    }
    Ok(())
}

fn init(path: &std::path::Path, request: &init::InitRequest, force: bool) -> anyhow::Result<()> {
    let configs = init::configs(request, &init::host_addresses())?;
    init::write(path, &configs, force)?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    println!(
        "wrote {}, {} and {}",
        path.display(),
        dir.join("netd.json").display(),
        dir.join("storaged.json").display()
    );
    if let Some(listen) = configs.hostd.listen {
        println!("hostd will serve the controller on {listen}; start or restart the node with");
        println!("  systemctl restart triad-node.target");
    }
    Ok(())
}

fn print_token(config: &std::path::Path) -> anyhow::Result<()> {
    // The diagnosis works on a node that has no config file yet: its defaults.
    let config: HostdConfig = triad_api::server::read_config(config, config)?;
    let Some(token) = triad_hostd::token::read(&config.state_dir)? else {
        anyhow::bail!(
            "{} has no node token: start triad-hostd once to make it",
            config.state_dir.display()
        );
    };
    println!("token        {token}");
    let fingerprint = NodeTls::new(&config.state_dir).fingerprint()?;
    if let Some(fingerprint) = &fingerprint {
        println!("fingerprint  {fingerprint}");
    }
    if let Some(listen) = config.listen {
        let name = config.node.clone().unwrap_or_else(|| "NAME".into());
        let pin = fingerprint
            .map(|f| format!(" --fingerprint {f}"))
            .unwrap_or_default();
        println!("join it with:");
        println!("  triad node join {name} --address {listen} --node-token {token}{pin}");
    }
    Ok(())
}

fn serve(path: &std::path::Path, insecure_http: bool) -> anyhow::Result<()> {
    let config: HostdConfig = triad_api::server::read_config(path, HostdConfig::PATH.as_ref())?;
    let listen = config.listen;
    let socket = config.socket.clone();
    tokio::runtime::Runtime::new()?.block_on(async move {
        let agent = tokio::task::spawn_blocking(move || Agent::open(config)).await??;
        let router = server::router(agent.clone());
        tracing::info!("node {}", agent.node_name());
        if let Some(addr) = listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen: {addr}"))?;
            let tls = if insecure_http {
                tracing::warn!("serving the controller plain HTTP on {addr} (--insecure-http)");
                None
            } else {
                let files = NodeTls::new(&agent.config().state_dir);
                let names = vec![agent.node_name().to_owned(), addr.ip().to_string()];
                let config = files.server_config(&names)?;
                tracing::info!("serving the controller over TLS on {addr}");
                Some((files, ServerTls::new(config)))
            };
            let router = server::tcp_router(agent.clone(), tls.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_tcp(tcp, tls.map(|(_, s)| s), router).await {
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
