//! Peer heartbeats and the self-fencer.
//!
//! Every `interval_ms` this node sends each peer one small UDP datagram per probe network
//! (management and storage), signed with HMAC-SHA256 under the cluster key, and notes when
//! each peer's last valid datagram came on each network. A peer is reachable while some
//! network brought one within `suspect_after_ms`. The node hears a majority when it reaches
//! more than half of the cluster's nodes, itself counted; after `fence_after_ms` without one,
//! under `FenceMode::Force`, the self-fencer kills the VMs with disks on shared storage so
//! that the majority may restart them elsewhere.
//!
//! The cluster (peers, key, timers, fence mode) comes from the controller (`PUT /cluster`) and
//! is kept in `cluster.json`, so that all of this goes on while no controller runs.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use triad_api::hostd::{ClusterSpec, FenceMode, PeerSeen, PeerView};

use crate::{Agent, Error};

const MAGIC: &[u8; 4] = b"TRHB";
const TAG_LEN: usize = 32;
const MAX_NAME: usize = 63;
const MAX_PROBES: usize = 4;

/// A heartbeat: who sent it, on which probe network, from which start of its hostd and in
/// which order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub from: String,
    pub probe: u8,
    /// The sender hostd's start time (unix ms): a restarted sender counts its `seq` anew.
    pub boot: u64,
    pub seq: u64,
}

impl Beat {
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + self.from.len() + 1 + 16 + TAG_LEN);
        out.extend_from_slice(MAGIC);
        // Names past MAX_NAME bytes are refused by every receiver.
        out.push(u8::try_from(self.from.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.from.as_bytes());
        out.push(self.probe);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        let tag = mac(key).chain_update(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out
    }

    /// The heartbeat in `bytes`, when it is well formed and signed with `key`.
    pub fn decode(bytes: &[u8], key: &[u8]) -> Option<Self> {
        let body_len = bytes.len().checked_sub(TAG_LEN)?;
        let (body, tag) = bytes.split_at(body_len);
        mac(key).chain_update(body).verify_slice(tag).ok()?;
        let rest = body.strip_prefix(MAGIC)?;
        let (&name_len, rest) = rest.split_first()?;
        let name_len = usize::from(name_len);
        if name_len > MAX_NAME || rest.len() != name_len + 1 + 16 {
            return None;
        }
        let (name, rest) = rest.split_at(name_len);
        let from = std::str::from_utf8(name).ok()?.to_owned();
        let probe = rest[0];
        let boot = u64::from_be_bytes(rest[1..9].try_into().ok()?);
        let seq = u64::from_be_bytes(rest[9..17].try_into().ok()?);
        Some(Self {
            from,
            probe,
            boot,
            seq,
        })
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// What this node has heard from each peer: pure bookkeeping on given instants, so that
/// the rules can be tested on a made-up clock.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    peers: BTreeMap<String, Heard>,
    probes: usize,
    suspect_after: Duration,
    /// Since when this node has heard less than a majority.
    minority_since: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Heard {
    last: Vec<Option<Instant>>,
    boot: u64,
    seq: u64,
}

impl PeerTable {
    /// A table for `peers` (this node left out) on `probes` networks; what was heard of
    /// the peers that stay is kept.
    pub fn reset(&mut self, peers: &[String], probes: usize, suspect_after: Duration) {
        self.peers.retain(|name, _| peers.contains(name));
        for name in peers {
            let heard = self.peers.entry(name.clone()).or_default();
            heard.last.resize(probes, None);
        }
        self.probes = probes;
        self.suspect_after = suspect_after;
    }

    /// Notes `beat`, heard at `at`; false when it is from no peer, on no probe network, or
    /// not newer than the last one of its sender (a replay).
    pub fn heard(&mut self, beat: &Beat, at: Instant) -> bool {
        let Some(heard) = self.peers.get_mut(&beat.from) else {
            return false;
        };
        let probe = usize::from(beat.probe);
        let newer = (beat.boot, beat.seq) > (heard.boot, heard.seq);
        if probe >= heard.last.len() || !newer {
            return false;
        }
        heard.boot = beat.boot;
        heard.seq = beat.seq;
        heard.last[probe] = Some(at);
        true
    }

    fn reachable(&self, heard: &Heard, now: Instant) -> bool {
        heard
            .last
            .iter()
            .flatten()
            .any(|t| now.saturating_duration_since(*t) < self.suspect_after)
    }

    /// Updates the minority clock at `now` and says how long the node has been in a minority.
    pub fn minority_for(&mut self, now: Instant) -> Option<Duration> {
        let of = self.peers.len() + 1;
        let hears = 1 + self
            .peers
            .values()
            .filter(|h| self.reachable(h, now))
            .count();
        if 2 * hears > of {
            self.minority_since = None;
            return None;
        }
        let since = *self.minority_since.get_or_insert(now);
        Some(now.saturating_duration_since(since))
    }

    pub fn view(&self, node: &str, now: Instant) -> PeerView {
        let peers: Vec<PeerSeen> = self
            .peers
            .iter()
            .map(|(name, h)| PeerSeen {
                name: name.clone(),
                reachable: self.reachable(h, now),
                heard_ms_ago: h
                    .last
                    .iter()
                    .map(|t| t.map(|t| millis(now.saturating_duration_since(t))))
                    .collect(),
            })
            .collect();
        PeerView {
            node: node.to_owned(),
            hears: 1 + peers.iter().filter(|p| p.reachable).count(),
            of: peers.len() + 1,
            peers,
            minority_for_ms: self
                .minority_since
                .map(|s| millis(now.saturating_duration_since(s))),
            fenced: None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The heartbeats of one node: its sockets, the cluster it is in, and what it heard.
#[derive(Debug)]
pub struct Peers {
    node: String,
    file: PathBuf,
    sockets: Vec<UdpSocket>,
    boot: u64,
    cluster: RwLock<Option<Cluster>>,
    table: Mutex<PeerTable>,
    /// What the self-fencer did since the node lost its majority.
    fenced: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
struct Cluster {
    spec: ClusterSpec,
    key: Vec<u8>,
}

impl Peers {
    /// Binds the probe addresses and reads the cluster kept in `state_dir`.
    pub fn open(node: &str, state_dir: &Path, probes: &[SocketAddr]) -> Result<Arc<Self>, Error> {
        if probes.len() > MAX_PROBES {
            return Err(Error::invalid(
                "probes",
                format!("at most {MAX_PROBES} probe networks"),
            ));
        }
        let sockets = probes
            .iter()
            .map(|addr| {
                let socket = UdpSocket::bind(addr).map_err(|e| {
                    Error::System(format!("binding the heartbeat socket {addr}: {e}"))
                })?;
                socket
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .map_err(|e| Error::System(format!("heartbeat socket {addr}: {e}")))?;
                Ok(socket)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let peers = Arc::new(Self {
            node: node.to_owned(),
            file: state_dir.join("cluster.json"),
            sockets,
            boot: crate::events::unix_ms(),
            cluster: RwLock::new(None),
            table: Mutex::default(),
            fenced: Mutex::default(),
        });
        if let Some(spec) = peers.load()? {
            peers.set_cluster(spec)?;
        }
        Ok(peers)
    }

    fn load(&self) -> Result<Option<ClusterSpec>, Error> {
        match std::fs::read_to_string(&self.file) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::System(format!("parsing {}: {e}", self.file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::System(format!(
                "reading {}: {e}",
                self.file.display()
            ))),
        }
    }

    /// `PUT /cluster`: checks the spec, keeps it on disk, and heartbeats by it from now on.
    pub fn set_cluster(&self, spec: ClusterSpec) -> Result<(), Error> {
        let key = check(&spec, &self.node, self.sockets.len())?;
        let unchanged = self.read_cluster().as_ref().is_some_and(|c| c.spec == spec);
        if unchanged {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::System(format!("encoding the cluster: {e}")))?;
        crate::state::write_atomically(&self.file, &text)?;
        let names: Vec<String> = spec
            .nodes
            .iter()
            .filter(|n| n.name != self.node)
            .map(|n| n.name.clone())
            .collect();
        self.lock_table().reset(
            &names,
            self.sockets.len(),
            Duration::from_millis(spec.timers.suspect_after_ms),
        );
        *self.cluster.write().unwrap_or_else(|e| e.into_inner()) = Some(Cluster { spec, key });
        Ok(())
    }

    pub fn cluster(&self) -> Option<ClusterSpec> {
        self.read_cluster().map(|c| c.spec)
    }

    fn read_cluster(&self) -> Option<Cluster> {
        self.cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, PeerTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `GET /peers`.
    pub fn view(&self) -> PeerView {
        let mut view = self.lock_table().view(&self.node, Instant::now());
        view.fenced = self
            .fenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        view
    }

    /// Starts the sender, one receiver per probe network, and the self-fencer.
    pub fn start(self: &Arc<Self>, agent: Weak<Agent>) {
        for index in 0..self.sockets.len() {
            let me = self.clone();
            std::thread::spawn(move || me.receive(index));
        }
        let me = self.clone();
        std::thread::spawn(move || me.send());
        let me = self.clone();
        std::thread::spawn(move || me.watch_quorum(agent));
    }

    fn interval(&self) -> Duration {
        let ms = self
            .read_cluster()
            .map_or(200, |c| c.spec.timers.interval_ms);
        Duration::from_millis(ms)
    }

    fn send(&self) {
        let mut seq = 0u64;
        loop {
            if let Some(cluster) = self.read_cluster() {
                seq += 1;
                for (probe, socket) in self.sockets.iter().enumerate() {
                    let beat = Beat {
                        from: self.node.clone(),
                        probe: u8::try_from(probe).unwrap_or(u8::MAX),
                        boot: self.boot,
                        seq,
                    }
                    .encode(&cluster.key);
                    for peer in cluster.spec.nodes.iter().filter(|n| n.name != self.node) {
                        if let Some(addr) = peer.probes.get(probe) {
                            // A peer that cannot be reached is what heartbeats find out.
                            let _ = socket.send_to(&beat, addr);
                        }
                    }
                }
            }
            std::thread::sleep(self.interval());
        }
    }

    fn receive(&self, index: usize) {
        let mut buf = [0u8; 256];
        loop {
            let Ok((n, _)) = self.sockets[index].recv_from(&mut buf) else {
                continue;
            };
            let at = Instant::now();
            let Some(cluster) = self.read_cluster() else {
                continue;
            };
            match Beat::decode(&buf[..n], &cluster.key) {
                // A datagram on probe socket i must say probe i: a beat cannot be moved from
                // one network to another.
                Some(beat) if usize::from(beat.probe) == index => {
                    self.lock_table().heard(&beat, at);
                }
                _ => tracing::debug!("dropped a heartbeat that is not the cluster's"),
            }
        }
    }

    /// Every half interval: the minority clock, and the self-fencer when it runs out.
    fn watch_quorum(&self, agent: Weak<Agent>) {
        let mut was_minority = false;
        loop {
            std::thread::sleep(self.interval() / 2);
            let Some(agent) = agent.upgrade() else {
                return;
            };
            let Some(cluster) = self.read_cluster() else {
                continue;
            };
            let minority = self.lock_table().minority_for(Instant::now());
            match minority {
                None if was_minority => {
                    was_minority = false;
                    *self.fenced.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    agent.quorum_event("the node hears a majority of its cluster again");
                }
                None => {}
                Some(for_) => {
                    if !was_minority {
                        was_minority = true;
                        agent.quorum_event(&format!(
                            "the node hears less than a majority of its cluster ({})",
                            self.view().hears
                        ));
                    }
                    let deadline = Duration::from_millis(cluster.spec.timers.fence_after_ms);
                    let fenced = self
                        .fenced
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if cluster.spec.fence == FenceMode::Force
                        && for_ >= deadline
                        && fenced.is_none()
                    {
                        let what = agent.fence(&format!(
                            "the node heard less than a majority of its cluster for {} ms",
                            millis(for_)
                        ));
                        *self.fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
                    }
                }
            }
        }
    }
}

/// The spec's key, when the spec is one this node can heartbeat by.
fn check(spec: &ClusterSpec, node: &str, probes: usize) -> Result<Vec<u8>, Error> {
    let key = decode_hex(&spec.key)
        .filter(|k| k.len() == 32)
        .ok_or_else(|| Error::invalid("key", "must be 64 hex digits"))?;
    if !spec.nodes.iter().any(|n| n.name == node) {
        return Err(Error::invalid(
            "nodes",
            format!("must include this node ({node})"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for n in &spec.nodes {
        if n.name.is_empty() || n.name.len() > MAX_NAME {
            return Err(Error::invalid(
                "nodes",
                format!("node names are 1 to {MAX_NAME} bytes"),
            ));
        }
        if !names.insert(&n.name) {
            return Err(Error::invalid(
                "nodes",
                format!("{} is named twice", n.name),
            ));
        }
        if n.probes.len() > MAX_PROBES {
            return Err(Error::invalid(
                "nodes",
                format!("{} has more than {MAX_PROBES} probe addresses", n.name),
            ));
        }
    }
    let t = spec.timers;
    if t.interval_ms == 0 || t.suspect_after_ms < 2 * t.interval_ms || t.fence_after_ms == 0 {
        return Err(Error::invalid(
            "timers",
            "interval_ms must be above 0, suspect_after_ms at least twice it, fence_after_ms above 0",
        ));
    }
    if probes == 0 && spec.fence != FenceMode::Off {
        tracing::warn!("this node has no probe addresses: it hears no peer and never fences");
    }
    Ok(key)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn beat(from: &str, probe: u8, seq: u64) -> Beat {
        Beat {
            from: from.into(),
            probe,
            boot: 1,
            seq,
        }
    }

    #[test]
    fn a_beat_round_trips_and_a_changed_byte_or_key_is_refused() {
        let b = beat("node-2", 1, 42);
        let bytes = b.encode(&KEY);
        assert_eq!(Beat::decode(&bytes, &KEY), Some(b));
        assert_eq!(
            Beat::decode(&bytes, &[8; 32]),
            None,
            "another cluster's key"
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(Beat::decode(&bad, &KEY), None, "byte {i} changed");
        }
        assert_eq!(Beat::decode(&bytes[..bytes.len() - 1], &KEY), None);
        assert_eq!(Beat::decode(&[], &KEY), None);
    }

    fn table() -> PeerTable {
        let mut t = PeerTable::default();
        t.reset(&["b".into(), "c".into()], 2, Duration::from_millis(800));
        t
    }

    #[test]
    fn a_peer_is_reachable_while_any_probe_network_brings_its_beats() {
        let t0 = Instant::now();
        let mut t = table();
        assert!(t.heard(&beat("b", 0, 1), t0));
        assert!(t.heard(&beat("b", 1, 2), t0 + Duration::from_millis(500)));
        let at = |ms| t0 + Duration::from_millis(ms);
        let b = |t: &PeerTable, ms| t.view("a", at(ms)).peers[0].reachable;
        assert!(b(&t, 900), "the storage network still brings beats");
        assert!(!b(&t, 1300), "nothing for 800 ms on any network");
        assert_eq!(
            t.view("a", at(1300)).peers[0].heard_ms_ago,
            vec![Some(1300), Some(800)]
        );
        assert!(!t.view("a", at(0)).peers[1].reachable, "never heard");
    }

    #[test]
    fn replays_and_strangers_are_not_heard() {
        let t0 = Instant::now();
        let mut t = table();
        assert!(t.heard(&beat("b", 0, 5), t0));
        assert!(!t.heard(&beat("b", 0, 5), t0), "the same beat again");
        assert!(!t.heard(&beat("b", 0, 4), t0), "an older beat");
        assert!(!t.heard(&beat("x", 0, 9), t0), "not a peer");
        assert!(!t.heard(&beat("b", 2, 9), t0), "no such probe network");
        let restarted = Beat {
            boot: 2,
            seq: 1,
            ..beat("b", 0, 1)
        };
        assert!(t.heard(&restarted, t0), "a restarted peer counts anew");
    }

    #[test]
    fn the_minority_clock_runs_only_while_less_than_a_majority_is_heard() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = table();
        assert_eq!(t.minority_for(at(0)), Some(Duration::ZERO), "alone: 1 of 3");
        assert!(t.heard(&beat("b", 0, 1), at(100)));
        assert_eq!(t.minority_for(at(100)), None, "2 of 3 is a majority");
        assert_eq!(t.minority_for(at(1000)), Some(Duration::ZERO));
        assert_eq!(t.minority_for(at(1600)), Some(Duration::from_millis(600)));
        assert!(t.heard(&beat("c", 1, 1), at(1700)));
        assert_eq!(t.minority_for(at(1700)), None);
    }

    #[test]
    fn a_cluster_spec_needs_a_key_this_node_and_sane_timers() {
        let spec = |key: &str, nodes: &[&str], interval| ClusterSpec {
            key: key.into(),
            nodes: nodes
                .iter()
                .map(|n| triad_api::hostd::ClusterNode {
                    name: (*n).into(),
                    probes: vec![],
                })
                .collect(),
            timers: triad_api::hostd::HaTimers {
                interval_ms: interval,
                ..Default::default()
            },
            fence: FenceMode::Force,
        };
        let good = "ab".repeat(32);
        assert_eq!(
            check(&spec(&good, &["a", "b"], 200), "a", 2).unwrap(),
            vec![0xab; 32]
        );
        let err = |s: ClusterSpec| check(&s, "a", 2).unwrap_err().to_string();
        assert!(err(spec("abc", &["a"], 200)).contains("key"));
        assert!(err(spec(&"zz".repeat(32), &["a"], 200)).contains("key"));
        assert!(err(spec(&good, &["b"], 200)).contains("this node"));
        assert!(err(spec(&good, &["a", "a"], 200)).contains("twice"));
        assert!(err(spec(&good, &["a"], 0)).contains("interval_ms"));
    }
}
