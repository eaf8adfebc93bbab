//! Typed clients for the daemons: one way to make a request and one error type, for hostd,
//! the controller, the CLI and the tests. A client talks to a Unix socket, or over TCP with a
//! bearer token (hostd for the controller, the controller for the CLI); netd and storaged are
//! also reached through hostd, under its `/netd` and `/storaged` paths.
//!
//! They block (one request per connection, see `http`); async callers run them on a blocking
//! thread.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ErrorBody;
use crate::hostd::{
    ClusterSpec, HostEvent, NodeInfo, PeerView, SerialChunk, StateRequest, Vm, VmSpec,
};
use crate::http::{send, ClientError, Endpoint};
use crate::net::{
    Eip, EipSpec, NetState, Network, NetworkSpec, Port, PortSpec, SecurityGroup, SecurityGroupSpec,
};
use crate::storage::{
    BlocklistRequest, GrowRequest, Heartbeat, Image, ImageRequest, PoolInfo, Snapshot,
    SnapshotRequest, Volume, VolumeClients, VolumeRequest,
};
use crate::vmm::{VmAction, VmActionRequest, VmConfig, VmInfo, VmMetrics};

/// JSON calls to one server.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// Put before every path (a daemon reached through hostd).
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Client {
    /// A client whose calls each give up after 10 s without progress.
    pub fn new(to: impl Into<Endpoint>) -> Self {
        Self {
            endpoint: to.into(),
            prefix: String::new(),
            token: None,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer TOKEN` with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Puts `prefix` before every path.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix.push_str(prefix);
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("PUT", path, Some(body))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// A DELETE; what it answered is not read.
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>("DELETE", path, None)
            .map(drop)
    }

    /// `method path` with `body` as JSON; a 2xx answer's JSON (an empty one reads as null), or
    /// the server's error message with its status.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(ClientError::Encode)?;
        let path = format!("{}{path}", self.prefix);
        let resp = send(
            &self.endpoint,
            method,
            &path,
            body.as_deref(),
            self.token.as_deref(),
            self.timeout,
        )?;
        if !(200..300).contains(&resp.status) {
            let message = serde_json::from_str::<ErrorBody>(&resp.body)
                .map(|e| e.error)
                .unwrap_or(resp.body);
            return Err(ClientError::Status {
                status: resp.status,
                message,
            });
        }
        let text = if resp.body.is_empty() {
            "null"
        } else {
            &resp.body
        };
        serde_json::from_str(text).map_err(ClientError::Decode)
    }
}

/// `s` as one path segment: bytes outside the unreserved set percent-encoded.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `triad-vmm` control socket.
#[derive(Debug, Clone)]
pub struct VmmClient(Client);

impl VmmClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self(Client::new(Endpoint::Unix(socket.into())))
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self(self.0.with_timeout(timeout))
    }

    pub fn info(&self) -> Result<VmInfo, ClientError> {
        self.0.get("/vm")
    }

    pub fn metrics(&self) -> Result<VmMetrics, ClientError> {
        self.0.get("/vm/metrics")
    }

    pub fn put_config(&self, config: &VmConfig) -> Result<VmInfo, ClientError> {
        self.0.put("/vm/config", config)
    }

    pub fn action(&self, action: VmAction) -> Result<VmInfo, ClientError> {
        self.0.put("/vm/actions", &VmActionRequest { action })
    }
}

/// `triad-storaged`'s socket.
#[derive(Debug, Clone)]
pub struct StoragedClient(Client);

impl StoragedClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self(Client::new(Endpoint::Unix(socket.into())))
    }

    /// storaged through the hostd that `hostd` talks to.
    pub fn via_hostd(hostd: &HostdClient) -> Self {
        Self(hostd.0.clone().with_prefix("/storaged"))
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self(self.0.with_timeout(timeout))
    }

    pub fn pools(&self) -> Result<Vec<PoolInfo>, ClientError> {
        self.0.get("/pools")
    }

    pub fn volumes(&self, pool: &str) -> Result<Vec<Volume>, ClientError> {
        self.0.get(&format!("/pools/{}/volumes", segment(pool)))
    }

    /// The volume, or `None` when the pool has no such volume.
    pub fn volume(&self, pool: &str, id: &str) -> Result<Option<Volume>, ClientError> {
        let path = format!("/pools/{}/volumes/{}", segment(pool), segment(id));
        not_found_is_none(self.0.get(&path))
    }

    /// Creates a volume, or returns it when the same request made it before.
    pub fn create_volume(&self, pool: &str, req: &VolumeRequest) -> Result<Volume, ClientError> {
        self.0
            .post(&format!("/pools/{}/volumes", segment(pool)), req)
    }

    /// Deletes a volume; one already gone is no error.
    pub fn delete_volume(&self, pool: &str, id: &str) -> Result<(), ClientError> {
        self.0
            .delete(&format!("/pools/{}/volumes/{}", segment(pool), segment(id)))
    }

    /// Every node's storage heartbeat on a shared-mount pool.
    pub fn heartbeats(&self, pool: &str) -> Result<Vec<Heartbeat>, ClientError> {
        self.0.get(&format!("/pools/{}/heartbeats", segment(pool)))
    }

    /// Fences a Ceph client of the pool's cluster.
    pub fn blocklist(&self, pool: &str, req: &BlocklistRequest) -> Result<(), ClientError> {
        self.0
            .post::<_, serde_json::Value>(&format!("/pools/{}/blocklist", segment(pool)), req)
            .map(drop)
    }

    pub fn volume_clients(&self, pool: &str, id: &str) -> Result<VolumeClients, ClientError> {
        self.0.get(&format!(
            "/pools/{}/volumes/{}/clients",
            segment(pool),
            segment(id)
        ))
    }

    pub fn images(&self, pool: &str) -> Result<Vec<Image>, ClientError> {
        self.0.get(&format!("/pools/{}/images", segment(pool)))
    }

    /// The image (or its import's progress), or `None` when the pool has no such image.
    pub fn image(&self, pool: &str, id: &str) -> Result<Option<Image>, ClientError> {
        let path = format!("/pools/{}/images/{}", segment(pool), segment(id));
        not_found_is_none(self.0.get(&path))
    }

    /// Starts an import (or returns the one under way or done for the same request).
    pub fn delete_image(&self, pool: &str, id: &str) -> Result<(), ClientError> {
        self.0
            .delete(&format!("/pools/{}/images/{}", segment(pool), segment(id)))
    }

    pub fn grow_volume(
        &self,
        pool: &str,
        id: &str,
        size_bytes: u64,
    ) -> Result<Volume, ClientError> {
        self.0.post(
            &format!("/pools/{}/volumes/{}/grow", segment(pool), segment(id)),
            &GrowRequest { size_bytes },
        )
    }

    pub fn snapshots(&self, pool: &str, id: &str) -> Result<Vec<Snapshot>, ClientError> {
        self.0.get(&format!(
            "/pools/{}/volumes/{}/snapshots",
            segment(pool),
            segment(id)
        ))
    }

    pub fn snapshot(&self, pool: &str, id: &str, name: &str) -> Result<Snapshot, ClientError> {
        self.0.post(
            &format!("/pools/{}/volumes/{}/snapshots", segment(pool), segment(id)),
            &SnapshotRequest { name: name.into() },
        )
    }

    pub fn rollback(&self, pool: &str, id: &str, snapshot: &str) -> Result<(), ClientError> {
        self.0
            .call::<(), serde_json::Value>(
                "POST",
                &format!(
                    "/pools/{}/volumes/{}/snapshots/{}/rollback",
                    segment(pool),
                    segment(id),
                    segment(snapshot)
                ),
                None,
            )
            .map(drop)
    }

    pub fn import_image(&self, pool: &str, req: &ImageRequest) -> Result<Image, ClientError> {
        self.0
            .post(&format!("/pools/{}/images", segment(pool)), req)
    }
}

/// `triad-netd`'s socket.
#[derive(Debug, Clone)]
pub struct NetdClient(Client);

impl NetdClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self(Client::new(Endpoint::Unix(socket.into())))
    }

    /// netd through the hostd that `hostd` talks to.
    pub fn via_hostd(hostd: &HostdClient) -> Self {
        Self(hostd.0.clone().with_prefix("/netd"))
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self(self.0.with_timeout(timeout))
    }

    /// The network, or `None` when this host has no such network.
    pub fn network(&self, id: &str) -> Result<Option<Network>, ClientError> {
        not_found_is_none(self.0.get(&format!("/networks/{}", segment(id))))
    }

    pub fn put_network(&self, id: &str, spec: &NetworkSpec) -> Result<Network, ClientError> {
        self.0.put(&format!("/networks/{}", segment(id)), spec)
    }

    pub fn delete_network(&self, id: &str) -> Result<(), ClientError> {
        self.0.delete(&format!("/networks/{}", segment(id)))
    }

    /// The port, or `None` when this host has no such port.
    pub fn port(&self, id: &str) -> Result<Option<Port>, ClientError> {
        not_found_is_none(self.0.get(&format!("/ports/{}", segment(id))))
    }

    /// Makes the port (and its TAP) as `spec` says; the same spec again changes nothing.
    pub fn put_port(&self, id: &str, spec: &PortSpec) -> Result<Port, ClientError> {
        self.0.put(&format!("/ports/{}", segment(id)), spec)
    }

    /// Removes the port and its TAP; one already gone is no error.
    pub fn delete_port(&self, id: &str) -> Result<(), ClientError> {
        self.0.delete(&format!("/ports/{}", segment(id)))
    }

    pub fn put_eip(&self, id: &str, spec: &EipSpec) -> Result<Eip, ClientError> {
        self.0.put(&format!("/eips/{}", segment(id)), spec)
    }

    pub fn delete_eip(&self, id: &str) -> Result<(), ClientError> {
        self.0.delete(&format!("/eips/{}", segment(id)))
    }

    pub fn put_group(
        &self,
        id: &str,
        spec: &SecurityGroupSpec,
    ) -> Result<SecurityGroup, ClientError> {
        self.0
            .put(&format!("/security-groups/{}", segment(id)), spec)
    }

    pub fn delete_group(&self, id: &str) -> Result<(), ClientError> {
        self.0.delete(&format!("/security-groups/{}", segment(id)))
    }

    pub fn state(&self) -> Result<NetState, ClientError> {
        self.0.get("/state")
    }
}

/// `triad-hostd`'s Unix socket.
#[derive(Debug, Clone)]
pub struct HostdClient(Client);

impl HostdClient {
    /// A client whose calls may take a minute: an ensure clones volumes and boots a VM.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self(Client::new(Endpoint::Unix(socket.into())).with_timeout(Duration::from_secs(60)))
    }

    /// hostd's TCP port over TLS with `tls` (the controller's client of a joined node, or a
    /// join's pinned one), with the node's token.
    pub fn tls(addr: impl Into<String>, tls: crate::tls::ClientTls, token: &str) -> Self {
        Self(
            Client::new(Endpoint::Tls(addr.into(), tls))
                .with_token(token)
                .with_timeout(Duration::from_secs(60)),
        )
    }

    /// hostd's TCP port (`host:port`), as the controller reaches it, with the node's token.
    pub fn tcp(addr: impl Into<String>, token: &str) -> Self {
        Self(
            Client::new(Endpoint::Tcp(addr.into()))
                .with_token(token)
                .with_timeout(Duration::from_secs(60)),
        )
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self(self.0.with_timeout(timeout))
    }

    pub fn node(&self) -> Result<NodeInfo, ClientError> {
        self.0.get("/node")
    }

    /// `PUT /tls`: the node's certificate from the cluster's CA (at its join).
    pub fn install_tls(&self, install: &crate::hostd::TlsInstall) -> Result<(), ClientError> {
        self.0
            .put::<_, serde_json::Value>("/tls", install)
            .map(drop)
    }

    pub fn ensure(&self, uuid: &str, spec: &VmSpec) -> Result<Vm, ClientError> {
        self.0.put(&format!("/vms/{}", segment(uuid)), spec)
    }

    pub fn remove(&self, uuid: &str) -> Result<(), ClientError> {
        self.0.delete(&format!("/vms/{}", segment(uuid)))
    }

    pub fn set_state(&self, uuid: &str, req: &StateRequest) -> Result<Vm, ClientError> {
        self.0.put(&format!("/vms/{}/state", segment(uuid)), req)
    }

    pub fn vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.0.get("/vms")
    }

    /// The VM with its VMM's counters, or `None` when this node has no such VM.
    pub fn vm(&self, uuid: &str) -> Result<Option<Vm>, ClientError> {
        not_found_is_none(self.0.get(&format!("/vms/{}", segment(uuid))))
    }

    pub fn events(&self, after: u64) -> Result<Vec<HostEvent>, ClientError> {
        self.0.get(&format!("/events?after={after}"))
    }

    /// The events after `after`, waiting up to `wait` for one when there is none yet.
    pub fn wait_events(&self, after: u64, wait: Duration) -> Result<Vec<HostEvent>, ClientError> {
        self.0.get(&format!(
            "/events?after={after}&wait_ms={}",
            wait.as_millis()
        ))
    }

    pub fn serial(&self, uuid: &str, after: u64) -> Result<SerialChunk, ClientError> {
        self.0
            .get(&format!("/vms/{}/serial?after={after}", segment(uuid)))
    }

    /// The peers the node hears, and whether it hears a majority.
    pub fn peers(&self) -> Result<PeerView, ClientError> {
        self.0.get("/peers")
    }

    /// The cluster the node heartbeats by, or `None` when none has been set.
    pub fn cluster(&self) -> Result<Option<ClusterSpec>, ClientError> {
        not_found_is_none(self.0.get("/cluster"))
    }

    pub fn set_cluster(&self, spec: &ClusterSpec) -> Result<(), ClientError> {
        self.0
            .put::<_, serde_json::Value>("/cluster", spec)
            .map(drop)
    }
}

fn not_found_is_none<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_plain_ids_and_encode_the_rest() {
        assert_eq!(segment("vm-1_a.b~"), "vm-1_a.b~");
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
    }
}
