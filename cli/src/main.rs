//! `triad`: the cluster from the command line, through the controller's API; and
//! `triad node diag`, which reads this node's daemons directly and works with the controller
//! down.

mod commands;
mod connect;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Triad's command line: VMs, nodes, networks, storage and events"
)]
pub struct Cli {
    /// The controller: https://HOST:PORT or unix:PATH (else TRIAD_URL, the config file, or
    /// https://127.0.0.1:7300).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The cluster's CA certificate (PEM), which vouches for the controller (else the
    /// config file's "ca", "ca_file" or "fingerprint").
    #[arg(long, global = true)]
    ca: Option<std::path::PathBuf>,
    /// Allow an http:// URL: plain HTTP to a controller run with --insecure-http.
    #[arg(long, global = true)]
    insecure_http: bool,
    /// A bearer token (else TRIAD_TOKEN or the config file).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the controller's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Networks.
    #[command(subcommand)]
    Net(NetCommand),
    /// Security groups.
    #[command(subcommand)]
    Sg(SgCommand),
    /// Public addresses on VMs' NICs.
    #[command(subcommand)]
    Eip(EipCommand),
    /// Images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Data volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Affinity groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// What happened.
    #[command(subcommand)]
    Event(EventCommand),
    /// Storage pools.
    Pools,
    /// Instance offerings.
    Offerings,
    /// Cluster settings: show them, or set KEY=VALUE ...
    Settings { set: Vec<String> },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: every change asked for.
    Audit {
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Debug, Args)]
pub struct Wait {
    /// Wait until it is done (prints progress).
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
pub struct VmCreate {
    name: String,
    #[arg(long)]
    image: String,
    /// Size by name (1C2G, 2C4G, 4C8G, 8C16G, …).
    #[arg(long)]
    offering: Option<String>,
    #[arg(long)]
    vcpus: Option<u32>,
    #[arg(long)]
    memory_mib: Option<u64>,
    /// A NIC: NETWORK, or NETWORK=IP (repeat for more).
    #[arg(long = "net")]
    nets: Vec<String>,
    /// A security group for every NIC (repeat).
    #[arg(long = "sg")]
    sgs: Vec<String>,
    /// A data volume to attach (repeat).
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// An affinity group (repeat).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// none or never_stop.
    #[arg(long, default_value = "none")]
    ha: String,
    /// Appended to the image's kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long)]
    user_data: Option<PathBuf>,
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<String>,
    /// Make it stopped.
    #[arg(long)]
    no_start: bool,
    #[command(flatten)]
    wait: Wait,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image.
    Create(Box<VmCreate>),
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    Show {
        vm: String,
    },
    Start {
        vm: String,
        #[command(flatten)]
        wait: Wait,
    },
    Stop {
        vm: String,
        /// Kill it instead of asking the guest to power off.
        #[arg(long)]
        force: bool,
        /// A NeverStop VM stays stopped.
        #[arg(long)]
        no_restart: bool,
        #[command(flatten)]
        wait: Wait,
    },
    Reboot {
        vm: String,
    },
    Destroy {
        vm: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Set the HA level: none or never_stop.
    Ha {
        vm: String,
        level: String,
    },
    /// Why the VM is where it is (or pending): every node and what kept it out.
    Why {
        vm: String,
    },
    /// The serial console's output.
    Console {
        vm: String,
        /// Keep printing what comes.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MaintenanceStep {
    /// Lock it, move its shared-storage VMs to other nodes, stop its local-storage VMs.
    Enter,
    /// Locked again: `unlock` gives it new VMs.
    Exit,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Join a node: its hostd's address and token (`triad-hostd token` on it).
    Join {
        name: String,
        #[arg(long)]
        address: String,
        /// The node's token, which `triad-hostd token` prints on it.
        #[arg(long)]
        node_token: String,
        /// The fingerprint of the node's certificate, which `triad-hostd token` prints on it
        /// (not needed by a controller run with --insecure-http).
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long)]
        data_address: Option<String>,
    },
    List,
    Show {
        node: String,
    },
    Lock {
        node: String,
    },
    Unlock {
        node: String,
    },
    Enable {
        node: String,
    },
    Disable {
        node: String,
    },
    /// Give the node a new certificate from the cluster's CA (they last a year).
    RenewCert {
        node: String,
    },
    /// Empty the node for work on it (`enter`), or take it back, locked (`exit`).
    Maintenance {
        step: MaintenanceStep,
        node: String,
    },
    Remove {
        node: String,
    },
    /// This node's VMs, TAPs, leases, volumes and daemons, from its local sockets (no
    /// controller needed).
    Diag {
        /// hostd's config file.
        #[arg(long, default_value = "/etc/triad/hostd.json")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Create a network: --vxlan VNI --underlay IF, --vlan VID --uplink IF, or --novlan.
    Create {
        name: String,
        #[arg(long)]
        vxlan: Option<u32>,
        #[arg(long)]
        underlay: Option<String>,
        #[arg(long)]
        vlan: Option<u16>,
        #[arg(long)]
        novlan: bool,
        #[arg(long)]
        uplink: Option<String>,
        /// Addressing, with DHCP for VMs.
        #[arg(long)]
        cidr: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        dns: Vec<String>,
        /// START-END (repeat).
        #[arg(long = "range")]
        ranges: Vec<String>,
        #[arg(long)]
        mtu: Option<u32>,
    },
    List,
    Show {
        network: String,
    },
    Delete {
        network: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    /// Create a group. A rule: "DIRECTION PROTOCOL [PORTS] [CIDR] [ACTION]", e.g.
    /// "ingress tcp 22 0.0.0.0/0 accept".
    Create {
        name: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Replace a group's rules.
    Rules {
        name: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EipCommand {
    /// Map a public address of NETWORK to a VM's NIC (wherever the VM runs).
    Create {
        name: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        vm: String,
        /// Taken from the network's ranges when absent.
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        nic: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image (a file on the nodes or a URL) into a pool, with progress.
    Import {
        name: String,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        file: Option<PathBuf>,
        /// An http(s) URL each importing node fetches.
        #[arg(long)]
        source_url: Option<String>,
        #[arg(long)]
        sha256: Option<String>,
        /// The kernel its VMs boot (a file on every node).
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Return at once instead of showing the progress.
        #[arg(long)]
        no_wait: bool,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    Create {
        name: String,
        #[arg(long)]
        pool: String,
        /// Bytes, or with K, M, G or T.
        #[arg(long)]
        size: String,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    Attach {
        name: String,
        vm: String,
    },
    Detach {
        name: String,
    },
    Grow {
        name: String,
        #[arg(long)]
        size: String,
    },
    Snapshot {
        name: String,
        snapshot: String,
    },
    Rollback {
        name: String,
        snapshot: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// RULE: vm-affinity, vm-anti-affinity, node-affinity or node-anti-affinity.
    Create {
        name: String,
        #[arg(long)]
        rule: String,
        /// For node rules (repeat).
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[arg(long)]
        soft: bool,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    List {
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only resources starting with this (vm/, vm/UUID, node/NAME, …).
        #[arg(long)]
        resource: Option<String>,
        /// Keep printing events as they come.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// ROLE: admin or read_only. The secret is printed once.
    Create {
        name: String,
        #[arg(long, default_value = "read_only")]
        role: String,
    },
    List,
    Delete {
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triad: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_do_not_swallow_a_subcommand_s_own() {
        let cli = Cli::try_parse_from([
            "triad",
            "--url",
            "unix:/c.sock",
            "--token",
            "admin-secret",
            "node",
            "join",
            "n1",
            "--address",
            "10.0.0.1:7301",
            "--node-token",
            "node-secret",
        ])
        .unwrap();
        assert_eq!(cli.token.as_deref(), Some("admin-secret"));
        match cli.command {
            Command::Node(NodeCommand::Join { node_token, .. }) => {
                assert_eq!(node_token, "node-secret")
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "triad",
            "--url",
            "http://ctl:7300",
            "image",
            "import",
            "g",
            "--pool",
            "p",
            "--file",
            "/f",
            "--kernel",
            "/k",
        ])
        .unwrap();
        match cli.command {
            Command::Image(ImageCommand::Import {
                file, source_url, ..
            }) => {
                assert_eq!((file.is_some(), source_url), (true, None));
            }
            other => panic!("{other:?}"),
        }
    }
}
