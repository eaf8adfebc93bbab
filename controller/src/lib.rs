//! `triad-controller`: the cluster's one HTTP API. It keeps the desired state of every
//! resource in a `Store`, places VMs on nodes and converges each node's hostd to what the
//! store says. It holds nothing in memory that it cannot rebuild from the store: what it
//! caches (each node's VMs as last seen) is read again from the nodes.

pub mod api;
pub mod auth;
pub mod backup;
pub mod events;
pub mod ha;
pub mod ipam;
pub mod leader;
pub mod liveness;
pub mod maintenance;
pub mod model;
pub mod operations;
pub mod reconcile;
pub mod scheduler;
pub mod sealed;
pub mod store;
pub mod tls;
mod validate;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use triad_api::client::HostdClient;
use triad_api::v1::Node;

use crate::api::{ApiError, ApiResult};
use crate::model::{keys, Db, NodeRecord, NodeStatus, VmRecord};

/// `triad-controller --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The API's TCP address (default 0.0.0.0:7300).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The API on a Unix socket too (same tokens), for the CLI on the controller's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Default: a redb file, /var/lib/triad/controller/state.redb.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where the admin token made at the first start is written (mode 0600), besides being
    /// printed once (default /var/lib/triad/controller/admin-token).
    #[serde(
        default = "default_admin_token_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub ha: HaConfig,
    /// The cluster's CA (`ca.pem`, `ca.key`), made at the first start (default
    /// /var/lib/triad/controller/tls).
    #[serde(default = "default_tls_dir")]
    pub tls_dir: PathBuf,
    /// Names and addresses the API's certificate is for, besides every address and the name
    /// of this host (a DNS name clients use, a load balancer's address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
    /// The CLI's config for the admin, written with the admin token at the first start:
    /// the API's URL, the token and the CA (default /var/lib/triad/controller/admin.json;
    /// copy it to `~/.config/triad/config.json` where the CLI runs).
    #[serde(default = "default_cli_config_file")]
    pub cli_config_file: PathBuf,
    /// The key node tokens are sealed with in the store (made at the first start; default:
    /// `store.key` beside a redb store, else /var/lib/triad/controller/store.key). Controllers
    /// sharing an etcd must share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key_file: Option<PathBuf>,
}

impl ControllerConfig {
    /// Where the store key is.
    pub fn store_key_path(&self) -> PathBuf {
        if let Some(path) = &self.store_key_file {
            return path.clone();
        }
        match &self.store {
            StoreConfig::Redb { path } => path.with_file_name("store.key"),
            StoreConfig::Etcd { .. } => PathBuf::from(STATE_DIR).join("store.key"),
        }
    }
}

/// The liveness and fencing timers (docs/ha.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// What every hostd heartbeats and fences by.
    pub heartbeat: triad_api::hostd::HaTimers,
    /// How long a strict majority must miss a node before it is Dead.
    pub confirm_after_ms: u64,
    /// How often the controller asks each node which peers it hears.
    pub poll_ms: u64,
    /// Added to every fencing deadline: the self-fencer's kill and clock rates differ.
    pub margin_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            heartbeat: Default::default(),
            confirm_after_ms: 400,
            poll_ms: 200,
            margin_ms: 200,
        }
    }
}

impl HaConfig {
    /// How long after anybody last heard a node its self-fencer has surely acted, and its
    /// storage heartbeat must have stopped for, before its VMs may run elsewhere.
    pub fn fence_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.heartbeat.suspect_after_ms + self.heartbeat.fence_after_ms + self.margin_ms,
        )
    }
}

impl ControllerConfig {
    /// Where the package's unit reads it from.
    pub const PATH: &'static str = "/etc/triad/controller.json";
}

/// Where the packaged controller keeps its state.
const STATE_DIR: &str = "/var/lib/triad/controller";

fn default_tls_dir() -> PathBuf {
    PathBuf::from(STATE_DIR).join("tls")
}

fn default_cli_config_file() -> PathBuf {
    PathBuf::from(STATE_DIR).join("admin.json")
}

fn default_admin_token_file() -> Option<PathBuf> {
    Some(PathBuf::from(STATE_DIR).join("admin-token"))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7300))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum StoreConfig {
    /// One controller, its state in a redb file.
    Redb { path: PathBuf },
    /// Several controllers sharing an etcd cluster; one leads the reconcilers.
    Etcd { endpoints: Vec<String> },
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Redb {
            path: PathBuf::from(STATE_DIR).join("state.redb"),
        }
    }
}

/// A node's VMs as its hostd last listed them.
#[derive(Debug, Clone)]
pub struct Observed {
    pub vms: Vec<triad_api::hostd::Vm>,
    pub at: Instant,
}

/// The controller: its store and what its loops share.
#[derive(Debug)]
pub struct Ctl {
    pub db: Db,
    pub store_kind: &'static str,
    leader: AtomicBool,
    /// Wakes the reconcilers: something changed.
    pub wake: tokio::sync::Notify,
    pub observed: RwLock<HashMap<String, Observed>>,
    /// VMs (and other keys) with a call to a node in flight, so that one is not made twice.
    pub busy: Mutex<HashSet<String>>,
    /// What a node's daemons last said when asked to make a network or a group there.
    pub realize_errors: NodeNotes,
    /// What was last put on each node: the spec's JSON.
    pub sent: NodeNotes,
    pub ha: HaConfig,
    pub detector: Mutex<liveness::Detector>,
    /// Each (smp pool, node)'s storage heartbeat as last read, and since when it has not
    /// moved, by this controller's clock.
    pub storage_beats: Mutex<HashMap<(String, String), (u64, Instant)>>,
    /// The cluster's CA and the controller's certificates; none with `--insecure-http`.
    pub tls: Option<tls::ClusterTls>,
    /// What node tokens are sealed with in the store.
    pub store_key: sealed::StoreKey,
}

/// A note per (thing, node), where the thing is `network/NAME` or `security-group/NAME`.
#[derive(Debug, Default)]
pub struct NodeNotes(Mutex<HashMap<(String, String), String>>);

impl NodeNotes {
    pub fn get(&self, what: &str, node: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(what.to_owned(), node.to_owned()))
            .cloned()
    }

    pub fn set(&self, what: &str, node: &str, note: Option<String>) {
        let mut notes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (what.to_owned(), node.to_owned());
        match note {
            Some(n) => notes.insert(key, n),
            None => notes.remove(&key),
        };
    }
}

impl Ctl {
    pub fn new(
        db: Db,
        store_kind: &'static str,
        ha: HaConfig,
        tls: Option<tls::ClusterTls>,
        store_key: sealed::StoreKey,
    ) -> Arc<Self> {
        let timers = liveness::Timers {
            confirm_after: std::time::Duration::from_millis(ha.confirm_after_ms),
            report_stale: std::time::Duration::from_millis(
                ha.heartbeat.suspect_after_ms.max(3 * ha.poll_ms),
            ),
        };
        Arc::new(Self {
            db,
            store_kind,
            leader: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            observed: RwLock::default(),
            busy: Mutex::default(),
            realize_errors: NodeNotes::default(),
            sent: NodeNotes::default(),
            ha,
            detector: Mutex::new(liveness::Detector::new(timers)),
            storage_beats: Mutex::default(),
            tls,
            store_key,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// The client of node `name`'s hostd.
    pub async fn hostd(&self, name: &str) -> ApiResult<HostdClient> {
        let record = self
            .db
            .get::<NodeRecord>(&format!("{}{name}", keys::NODES))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no node {name:?}")))?;
        Ok(self.hostd_client(&record.value))
    }

    /// The client of a joined node's hostd: over TLS, verified by the cluster's CA, with the
    /// controller's client certificate; plain HTTP with `--insecure-http`.
    pub fn hostd_client(&self, record: &NodeRecord) -> HostdClient {
        let join = &record.join;
        let token = self.store_key.open(&join.token).unwrap_or_else(|e| {
            tracing::error!("node {}'s token: {e}", join.name);
            String::new()
        });
        match &self.tls {
            Some(tls) => HostdClient::tls(&join.address, tls.hostd.clone(), &token),
            None => HostdClient::tcp(&join.address, &token),
        }
    }

    /// The join as the node gave it: its token unsealed.
    pub fn unsealed(&self, join: &triad_api::v1::NodeJoin) -> triad_api::v1::NodeJoin {
        let mut join = join.clone();
        if let Ok(token) = self.store_key.open(&join.token) {
            join.token = token;
        }
        join
    }

    /// Every node as the API shows it.
    pub async fn nodes(&self) -> Result<Vec<Node>, model::DbError> {
        let records = self.db.list::<NodeRecord>(keys::NODES).await?;
        let statuses: HashMap<String, NodeStatus> = self
            .db
            .keyed_values::<NodeStatus>(keys::NODE_STATUS)
            .await?;
        let vms: Vec<VmRecord> = self.db.values::<VmRecord>(keys::VMS).await?;
        Ok(records
            .iter()
            .map(|r| api::node_view(&r.value, statuses.get(&r.value.join.name), &vms))
            .collect())
    }

    /// Whether the controller reaches node `name`'s hostd.
    pub async fn connected(&self, name: &str) -> ApiResult<bool> {
        Ok(self
            .db
            .get::<NodeStatus>(&format!("{}{name}", keys::NODE_STATUS))
            .await?
            .is_some_and(|s| s.value.connection == triad_api::v1::Connection::Connected))
    }

    /// Marks `key` busy; false when it already was.
    pub fn try_busy(&self, key: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned())
    }

    pub fn done(&self, key: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Makes the secret file at `path` private again, with a warning, if others could read it.
pub fn check_secret(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(mode) = triad_api::secrets::check(path)
        .with_context(|| format!("checking the mode of {}", path.display()))?
    {
        tracing::warn!(
            "{} was mode {mode:o}, readable by others: made it 0600",
            path.display()
        );
    }
    Ok(())
}

/// Starts the controller on `config`: opens the store, makes the first admin token and the
/// default offerings when the store is new, leads (or campaigns to) and serves the API until
/// SIGTERM or SIGINT.
pub async fn serve(config: ControllerConfig, insecure_http: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    if let StoreConfig::Redb { path } = &config.store {
        check_secret(path)?;
    }
    if let Some(file) = &config.admin_token_file {
        check_secret(file)?;
    }
    check_secret(&config.cli_config_file)?;
    check_secret(&config.store_key_path())?;
    let store_key = sealed::StoreKey::load_or_make(&config.store_key_path())?;
    let tls = if insecure_http {
        tracing::warn!("serving plain HTTP and calling nodes over it (--insecure-http)");
        None
    } else {
        let mut names = config.tls_names.clone();
        if !config.listen.ip().is_unspecified() {
            names.push(config.listen.ip().to_string());
        }
        Some(tls::ClusterTls::open(&config.tls_dir, &names)?)
    };
    let (store, kind): (Arc<dyn store::Store>, &'static str) = match &config.store {
        StoreConfig::Redb { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            (
                Arc::new(
                    store::RedbStore::open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                ),
                "redb",
            )
        }
        StoreConfig::Etcd { endpoints } => (
            Arc::new(
                store::EtcdStore::connect(endpoints)
                    .await
                    .context("connecting to etcd")?,
            ),
            "etcd",
        ),
    };
    let ctl = Ctl::new(Db::new(store), kind, config.ha, tls, store_key);
    if let Some(secret) = auth::bootstrap(&ctl.db).await? {
        println!("triad-controller: the admin token (shown this once): {secret}");
        if let Some(file) = &config.admin_token_file {
            triad_api::secrets::write(file, format!("{secret}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        if let Some(tls) = &ctl.tls {
            let cli = cli_config(&config, &secret, tls.ca.cert_pem());
            triad_api::secrets::write(&config.cli_config_file, &cli)
                .with_context(|| format!("writing {}", config.cli_config_file.display()))?;
        }
    }
    for offering in api::default_offerings() {
        ctl.db
            .create(&format!("{}{}", keys::OFFERINGS, offering.name), &offering)
            .await?;
    }
    match kind {
        "redb" => ctl.set_leader(true),
        _ => {
            let me = format!("{}:{}", config.listen, std::process::id());
            tokio::spawn(leader::campaign(ctl.clone(), me));
        }
    }
    tokio::spawn(reconcile::run(ctl.clone()));
    let router = api::router(ctl.clone());
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!("serving the API on {}", config.listen);
    let tcp_router = router.clone();
    let server_tls = ctl
        .tls
        .as_ref()
        .map(|t| triad_api::server::ServerTls::new(t.server.clone()));
    let tcp_task =
        tokio::spawn(
            async move { triad_api::server::serve_tcp(tcp, server_tls, tcp_router).await },
        );
    match &config.socket {
        Some(socket) => triad_api::server::serve_unix(socket, router).await?,
        None => {
            triad_api::server::notify_ready();
            tokio::select! {
                served = tcp_task => served.context("the API's task")??,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    Ok(())
}

/// `triad-controller backup`: a backup from the running controller (over its API, as the
/// admin) into a new file in `dir` (mode 0600), keeping the newest `keep`; the file.
pub fn backup_to(
    config: &ControllerConfig,
    insecure_http: bool,
    dir: &std::path::Path,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let token_file = config
        .admin_token_file
        .as_ref()
        .context("the config names no admin_token_file to take the admin token from")?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the admin token {}", token_file.display()))?;
    let ip = if config.listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        config.listen.ip()
    };
    let addr = std::net::SocketAddr::new(ip, config.listen.port()).to_string();
    let endpoint = if insecure_http {
        triad_api::http::Endpoint::Tcp(addr)
    } else {
        let ca = config.tls_dir.join("ca.pem");
        let ca_pem = std::fs::read_to_string(&ca)
            .with_context(|| format!("reading the cluster's CA {}", ca.display()))?;
        triad_api::http::Endpoint::Tls(addr, triad_api::tls::client_by_ca(&ca_pem, None)?)
    };
    let client = triad_api::client::Client::new(endpoint)
        .with_token(token.trim())
        .with_timeout(std::time::Duration::from_secs(120));
    let backup: backup::Backup = client
        .post("/v1/backup", &serde_json::json!({}))
        .context("asking the controller for a backup")?;
    let path = backup::file_name(dir, backup.taken_unix_ms);
    let text = serde_json::to_string(&backup)?;
    triad_api::secrets::write(&path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    for old in backup::prune(dir, keep.max(1))
        .with_context(|| format!("removing old backups in {}", dir.display()))?
    {
        tracing::info!("removed the old backup {}", old.display());
    }
    Ok(path)
}

/// `triad-controller restore`: the backup in `file` put into the store of a stopped
/// controller, with the cluster's CA; the backup's tokens are back, and a new admin token is
/// made and written where the first start writes it (the admin token file, the CLI config).
pub async fn restore_from(
    config: &ControllerConfig,
    file: &std::path::Path,
    force: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let backup: backup::Backup = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a backup of triad-controller", file.display()))?;
    backup::check_version(&backup, env!("CARGO_PKG_VERSION"))?;
    let store: Arc<dyn store::Store> = match &config.store {
        StoreConfig::Redb { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Arc::new(store::RedbStore::open(path).with_context(|| {
                format!(
                    "opening {} (stop the controller first: systemctl stop triad-controller)",
                    path.display()
                )
            })?)
        }
        StoreConfig::Etcd { endpoints } => Arc::new(
            store::EtcdStore::connect(endpoints)
                .await
                .context("connecting to etcd")?,
        ),
    };
    backup::restore(store.as_ref(), &backup, force).await?;
    if let Some(key) = &backup.store_key {
        let path = config.store_key_path();
        triad_api::secrets::write(&path, format!("{key}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(ca) = &backup.ca {
        for (name, pem) in [("ca.key", &ca.key_pem), ("ca.pem", &ca.cert_pem)] {
            let path = config.tls_dir.join(name);
            triad_api::secrets::write(&path, pem)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let db = Db::new(store);
    let secret = auth::new_secret()?;
    let name = format!("admin-restored-{}", model::now_ms());
    auth::create(&db, &name, triad_api::v1::Role::Admin, &secret).await?;
    if let Some(file) = &config.admin_token_file {
        triad_api::secrets::write(file, format!("{secret}\n"))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if let Some(ca) = &backup.ca {
        triad_api::secrets::write(
            &config.cli_config_file,
            cli_config(config, &secret, &ca.cert_pem),
        )
        .with_context(|| format!("writing {}", config.cli_config_file.display()))?;
    }
    println!(
        "restored {} keys as of {} (Triad {}); a new admin token, {name:?}, is in {}",
        backup.entries.len(),
        backup.taken_unix_ms,
        backup.version,
        config
            .admin_token_file
            .as_ref()
            .map_or("the output above".into(), |f| f.display().to_string())
    );
    Ok(())
}

/// The admin's CLI config: the API's URL (the listen address, or this host's first address
/// when it listens on all), the token and the CA that vouches for the API.
fn cli_config(config: &ControllerConfig, token: &str, ca_pem: &str) -> String {
    let ip = if config.listen.ip().is_unspecified() {
        tls::first_address().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    } else {
        config.listen.ip()
    };
    let url = format!(
        "https://{}",
        std::net::SocketAddr::new(ip, config.listen.port())
    );
    let mut text = serde_json::to_string_pretty(&serde_json::json!({
        "url": url, "token": token, "ca": ca_pem,
    }))
    .expect("JSON");
    text.push('\n');
    text
}
