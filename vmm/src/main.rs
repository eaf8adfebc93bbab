//! `triad-vmm --config vm.json [--api-sock PATH]` boots from a file;
//! `triad-vmm --api-sock PATH` waits for its config over the API.
//!
//! Exit status: the guest's debug-exit status, 0 after an API shutdown, 128+N after signal N,
//! 1 when the VMM fails, 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use triad_api::vmm::VmConfig;
use triad_vmm::api::server::ApiSocket;
use triad_vmm::{error_chain, Event, Vmm, EXIT_VMM_ERROR};

#[derive(Debug, Parser)]
#[command(
    name = "triad-vmm",
    version,
    about = "Triad's virtual machine monitor: one VM per process"
)]
#[command(group(
    clap::ArgGroup::new("mode").required(true).multiple(true).args(["config", "api_sock"])
))]
struct Args {
    /// VM config file (JSON); the VM boots at once.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the control API (HTTP/JSON) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // TRIAD_LOG=error|warn|info|debug|trace; warn by default, so stderr stays quiet.
    let level = std::env::var("TRIAD_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)),
        Err(e) => {
            eprintln!("triad-vmm: error: {}", error_chain(e.as_ref()));
            ExitCode::from(u8::try_from(EXIT_VMM_ERROR).unwrap_or(1))
        }
    }
}

fn run(args: Args) -> anyhow::Result<i32> {
    let config = args.config.as_deref().map(read_config).transpose()?;
    let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
    let (events_tx, events_rx) = mpsc::channel();
    let mut vmm = Vmm::new(kvm, events_tx.clone());
    if let Some(config) = config {
        vmm.configure(config)?;
    }
    // Signals first, so that one arriving later still removes the socket; bind before
    // booting, so that a busy socket path fails without having run the guest.
    forward_signals(events_tx.clone())?;
    let mut socket = args.api_sock.as_deref().map(ApiSocket::bind).transpose()?;
    if args.config.is_some() {
        vmm.start()?;
    }
    if let Some(socket) = &mut socket {
        socket.serve(events_tx).context("starting the API server")?;
    }
    Ok(vmm.run(events_rx))
}

fn read_config(path: &std::path::Path) -> anyhow::Result<VmConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("config {}", path.display()))
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT power the VM off through the event loop, so the socket
/// file goes too.
fn forward_signals(events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || {
            for sig in signals.forever() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
