//! What the controller keeps in the store: where each record lives (`keys`), the records
//! themselves, and typed reads and compare-and-swap writes over the `Store`.
//!
//! Every record is JSON under `/triad/`. A record is changed only by a compare-and-swap on
//! the revision it was read at (`Db::modify` retries on a conflict), so that two controllers,
//! or a controller and its own loops, never overwrite each other's change.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use triad_api::hostd::HaLevel;
use triad_api::storage::PoolKind;
use triad_api::v1::{
    AffinityGroupCreate, Connection, ImageCreate, ImageState, Liveness, NetworkCreate, NodeEnable,
    NodeJoin, PowerState, Role, SecurityGroupCreate, VmCreate, VmDisk, VmNic, VmState,
    VolumeCreate,
};

use crate::store::{Expect, Kv, Revision, Store, StoreError, Txn};

/// Where each record lives.
pub mod keys {
    pub const NODES: &str = "/triad/nodes/";
    pub const NODE_STATUS: &str = "/triad/node-status/";
    pub const VMS: &str = "/triad/vms/";
    pub const NETWORKS: &str = "/triad/networks/";
    pub const IPS: &str = "/triad/ips/";
    pub const MACS: &str = "/triad/macs/";
    pub const SECURITY_GROUPS: &str = "/triad/security-groups/";
    pub const IMAGES: &str = "/triad/images/";
    pub const VOLUMES: &str = "/triad/volumes/";
    pub const AFFINITY_GROUPS: &str = "/triad/affinity-groups/";
    pub const EIPS: &str = "/triad/eips/";
    pub const OFFERINGS: &str = "/triad/offerings/";
    pub const SETTINGS: &str = "/triad/settings";
    pub const TOKENS: &str = "/triad/tokens/";
    pub const TOKEN_NAMES: &str = "/triad/token-names/";
    pub const EVENTS: &str = "/triad/events/";
    pub const AUDIT: &str = "/triad/audit/";
    pub const OPERATIONS: &str = "/triad/operations/";
    pub const PLACEMENTS: &str = "/triad/placements/";
    pub const SEQ: &str = "/triad/seq/";
    pub const LEADER: &str = "/triad/leader";
    /// The HMAC key of heartbeats, made at the first start.
    pub const CLUSTER_KEY: &str = "/triad/cluster-key";

    pub fn ip(network: &str, ip: std::net::Ipv4Addr) -> String {
        format!("{IPS}{network}/{ip}")
    }

    /// Sequence numbers sort as text: 20 digits.
    pub fn seq(prefix: &str, seq: u64) -> String {
        format!("{prefix}{seq:020}")
    }
}

/// A joined node: what the operator gave, and whether it takes VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub join: NodeJoin,
    pub enable: NodeEnable,
    pub joined_unix_ms: u64,
    /// `maintenance enter` asked: the node is Locked until its VMs are off, then Maintenance.
    #[serde(default)]
    pub entering_maintenance: bool,
}

/// A pool as a node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePool {
    pub name: String,
    pub kind: PoolKind,
}

/// What the controller last heard from a node's hostd (written when it changes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub connection: Connection,
    pub liveness: Liveness,
    pub version: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub reserved_memory_mib: u64,
    pub pools: Vec<NodePool>,
    pub networks: Vec<String>,
    pub last_seen_unix_ms: Option<u64>,
    pub error: Option<String>,
    /// Where its peers' heartbeats reach it.
    #[serde(default)]
    pub probes: Vec<std::net::SocketAddr>,
}

/// Each pool's kind, as the nodes report them.
pub fn pool_kinds<'a>(
    statuses: impl IntoIterator<Item = &'a NodeStatus>,
) -> std::collections::BTreeMap<String, PoolKind> {
    statuses
        .into_iter()
        .flat_map(|s| s.pools.iter())
        .map(|p| (p.name.clone(), p.kind))
        .collect()
}

/// A VM: what was asked, what was made of it (addresses, disks), where it is placed and in
/// which state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub request: VmCreate,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: String,
    pub cmdline: String,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    pub ha: HaLevel,
    pub power: PowerState,
    pub no_restart: bool,
    /// The stop asked for kills the VMM at once.
    #[serde(default)]
    pub stop_force: bool,
    /// Asked to be destroyed: the node removes it, then the record goes.
    pub destroy: bool,
    pub state: VmState,
    pub node: Option<String>,
    /// Its node is entering maintenance: the VM stops there, then leaves the node to be
    /// placed elsewhere (a running VM is Migrating until it runs again).
    #[serde(default)]
    pub moving_off: bool,
    pub generation: u64,
    pub reason: Option<String>,
    /// The operation that the current change belongs to.
    pub operation: Option<String>,
    pub created_unix_ms: u64,
}

impl VmRecord {
    /// Whether every disk is on a pool that other nodes reach too (`kinds`: each pool's kind,
    /// as the nodes report them), so that the VM can run on another node.
    pub fn on_shared_storage(&self, kinds: &std::collections::BTreeMap<String, PoolKind>) -> bool {
        self.disks
            .iter()
            .all(|d| matches!(kinds.get(&d.pool), Some(PoolKind::Smp | PoolKind::Ceph)))
    }

    pub fn view(&self) -> triad_api::v1::Vm {
        triad_api::v1::Vm {
            id: self.id.clone(),
            name: self.request.name.clone(),
            state: self.state,
            node: self.node.clone(),
            generation: self.generation,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            image: self.request.image.clone(),
            nics: self.nics.clone(),
            disks: self.disks.clone(),
            ha: self.ha,
            power: self.power,
            no_restart: self.no_restart,
            affinity_groups: self.request.affinity_groups.clone(),
            reason: self.reason.clone(),
            created_unix_ms: self.created_unix_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub spec: NetworkCreate,
    /// Asked to be deleted: the nodes drop it, then the record goes.
    #[serde(default)]
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRecord {
    pub spec: SecurityGroupCreate,
    #[serde(default)]
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub spec: ImageCreate,
    pub state: ImageState,
    pub size_bytes: u64,
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
    pub error: Option<String>,
    /// The nodes it was imported through: one for a shared pool, each that has a local one.
    pub nodes: Vec<String>,
    pub operation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub spec: VolumeCreate,
    /// Its id in the pool.
    pub volume: String,
    pub vm: Option<String>,
}

/// A public address on a VM's NIC: its node's netd maps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipRecord {
    pub name: String,
    pub network: String,
    pub ip: std::net::Ipv4Addr,
    pub vm: String,
    pub nic: String,
    #[serde(default)]
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityGroupRecord {
    pub spec: AffinityGroupCreate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_unix_ms: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the record at {key} is not what this controller reads: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Typed access to the store.
#[derive(Debug, Clone)]
pub struct Db {
    pub store: Arc<dyn Store>,
}

/// A record with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: Revision,
}

fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<Versioned<T>, DbError> {
    Ok(Versioned {
        value: serde_json::from_slice(&kv.value).map_err(|source| DbError::Decode {
            key: kv.key.clone(),
            source,
        })?,
        revision: kv.mod_revision,
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialise")
}

impl Db {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, DbError> {
        self.store.get(key).await?.as_ref().map(decode).transpose()
    }

    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, DbError> {
        self.store
            .range(prefix)
            .await?
            .kvs
            .iter()
            .map(decode)
            .collect()
    }

    /// The rest of each key under `prefix` (an address, a MAC): for sets kept as keys.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, DbError> {
        Ok(self
            .store
            .range(prefix)
            .await?
            .kvs
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_owned())
            .collect())
    }

    pub async fn exists(&self, key: &str) -> Result<bool, DbError> {
        Ok(self.store.get(key).await?.is_some())
    }

    /// The records under `prefix`, without their revisions.
    pub async fn values<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, DbError> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// The records under `prefix` by the rest of their key (a name, an id), without revisions.
    pub async fn keyed_values<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<std::collections::HashMap<String, T>, DbError> {
        Ok(self
            .list_keyed(prefix)
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect())
    }

    /// The records under `prefix` with the rest of their key (a name, an id).
    pub async fn list_keyed<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<T>)>, DbError> {
        self.store
            .range(prefix)
            .await?
            .kvs
            .iter()
            .map(|kv| Ok((kv.key[prefix.len()..].to_owned(), decode(kv)?)))
            .collect()
    }

    /// Puts `value` at `key` if nothing is there; false if something is.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool, DbError> {
        let txn = Txn::new()
            .expect(key, Expect::Absent)
            .put(key, encode(value));
        Ok(self.store.txn(txn).await?.is_some())
    }

    /// Puts `value` at `key` if it is still at `revision`; false if it changed.
    pub async fn update<T: Serialize>(
        &self,
        key: &str,
        revision: Revision,
        value: &T,
    ) -> Result<bool, DbError> {
        let txn = Txn::new()
            .expect(key, Expect::ModRevision(revision))
            .put(key, encode(value));
        Ok(self.store.txn(txn).await?.is_some())
    }

    /// `txn` on the store: the new revision, or `None` when an expectation failed.
    pub async fn txn(&self, txn: Txn) -> Result<Option<Revision>, DbError> {
        Ok(self.store.txn(txn).await?)
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), DbError> {
        self.store.txn(Txn::new().put(key, encode(value))).await?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), DbError> {
        self.store.txn(Txn::new().delete(key)).await?;
        Ok(())
    }

    /// Reads the record at `key`, lets `change` edit it and writes it back if nobody changed it
    /// in between, retrying on a conflict. `None` when there is no record; `change`'s error
    /// leaves the record as it was.
    pub async fn modify<T, E>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> Result<(), E>,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<DbError>,
    {
        loop {
            let Some(Versioned {
                mut value,
                revision,
            }) = self.get::<T>(key).await?
            else {
                return Ok(None);
            };
            change(&mut value)?;
            if self.update(key, revision, &value).await? {
                return Ok(Some(value));
            }
        }
    }

    /// The next number of the counter `name` (1, 2, …), taken with compare-and-swap.
    pub async fn next_seq(&self, name: &str) -> Result<u64, DbError> {
        let key = format!("{}{name}", keys::SEQ);
        loop {
            let current = self.get::<u64>(&key).await?;
            let next = current.as_ref().map_or(1, |c| c.value + 1);
            let expect = match &current {
                Some(c) => Expect::ModRevision(c.revision),
                None => Expect::Absent,
            };
            let txn = Txn::new().expect(&key, expect).put(&key, encode(&next));
            if self.store.txn(txn).await?.is_some() {
                return Ok(next);
            }
        }
    }
}
