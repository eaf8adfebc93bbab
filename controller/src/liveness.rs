//! The failure detector: which nodes are Alive, Suspect or Dead, by majority vote.
//!
//! Every node reports which peers it hears (hostd's `GET /peers`); the controller also notes
//! whether it reaches each node itself. A node is Suspect when the controller or any peer
//! misses it, and Dead only when a strict majority of its watchers' total (the node itself
//! counted) report it unreachable, continuously, for `confirm_after`. A controller that hears
//! from fewer than a majority of the nodes decides nothing: it may be the one cut off.
//!
//! Pure: time is given, never read, so that the simulator can replay any history. Every
//! node watches every other one; `watchers` is the one place that says so, so that a large
//! cluster can give each node a fixed odd number of watchers instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use triad_api::hostd::PeerView;
use triad_api::v1::Liveness;

/// The detector's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How long a strict majority must report a node unreachable before it is Dead.
    pub confirm_after: Duration,
    /// A node's report older than this counts for nothing (its vote is unknown).
    pub report_stale: Duration,
}

/// A change of a node's liveness, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub node: String,
    pub liveness: Liveness,
    pub why: String,
}

#[derive(Debug, Clone)]
struct Track {
    liveness: Liveness,
    /// What the node last said of each peer (reachable?), and when that came.
    report: Option<(Instant, BTreeMap<String, bool>)>,
    /// Whether the controller's last call to the node was answered, and when it was made.
    answered: Option<(Instant, bool)>,
    /// Since when a strict majority has reported it unreachable.
    majority_since: Option<Instant>,
    /// The last time anybody (the controller or a peer) heard from it.
    last_heard: Option<Instant>,
}

impl Track {
    fn new() -> Self {
        Self {
            liveness: Liveness::Alive,
            report: None,
            answered: None,
            majority_since: None,
            last_heard: None,
        }
    }
}

/// The detector's state over the cluster's nodes.
#[derive(Debug, Clone)]
pub struct Detector {
    timers: Timers,
    nodes: BTreeMap<String, Track>,
}

impl Detector {
    pub fn new(timers: Timers) -> Self {
        Self {
            timers,
            nodes: BTreeMap::new(),
        }
    }

    /// Makes the detector's nodes `names`: new ones start Alive, gone ones are forgotten.
    pub fn set_nodes(&mut self, names: &[String]) {
        self.nodes.retain(|n, _| names.contains(n));
        for n in names {
            self.nodes.entry(n.clone()).or_insert_with(Track::new);
        }
    }

    /// A node whose liveness the store already held (a restarted controller goes on from it).
    pub fn restore(&mut self, node: &str, liveness: Liveness) {
        if let Some(t) = self.nodes.get_mut(node) {
            t.liveness = liveness;
        }
    }

    pub fn liveness(&self, node: &str) -> Liveness {
        self.nodes.get(node).map_or(Liveness::Alive, |t| t.liveness)
    }

    /// The last time anybody heard from `node`.
    pub fn last_heard(&self, node: &str) -> Option<Instant> {
        self.nodes.get(node).and_then(|t| t.last_heard)
    }

    /// The controller called `node` at `at`: `Some(view)` is its answer, `None` no answer.
    pub fn observe(&mut self, at: Instant, node: &str, answer: Option<&PeerView>) {
        let Some(track) = self.nodes.get_mut(node) else {
            return;
        };
        track.answered = Some((at, answer.is_some()));
        let Some(view) = answer else {
            return;
        };
        track.last_heard = Some(at);
        track.report = Some((
            at,
            view.peers
                .iter()
                .map(|p| (p.name.clone(), p.reachable))
                .collect(),
        ));
        for peer in &view.peers {
            let heard = peer
                .heard_ms_ago
                .iter()
                .flatten()
                .min()
                .and_then(|ms| at.checked_sub(Duration::from_millis(*ms)));
            if let (Some(heard), Some(t)) = (heard, self.nodes.get_mut(&peer.name)) {
                if t.last_heard.is_none_or(|l| l < heard) {
                    t.last_heard = Some(heard);
                }
            }
        }
    }

    /// The nodes whose reports count in `node`'s vote: every other node.
    fn watchers(&self, node: &str) -> Vec<&String> {
        self.nodes.keys().filter(|n| *n != node).collect()
    }

    fn fresh(&self, node: &str, now: Instant) -> Option<&BTreeMap<String, bool>> {
        let (at, report) = self.nodes.get(node)?.report.as_ref()?;
        (now.saturating_duration_since(*at) < self.timers.report_stale).then_some(report)
    }

    /// Whether the controller hears from a strict majority of the nodes now.
    pub fn hears_majority(&self, now: Instant) -> bool {
        let heard = self
            .nodes
            .keys()
            .filter(|n| self.fresh(n, now).is_some())
            .count();
        2 * heard > self.nodes.len()
    }

    /// Decides at `now`: the nodes whose liveness changed.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        if !self.hears_majority(now) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for node in &names {
            let watchers = self.watchers(node);
            let total = watchers.len() + 1;
            let mut missing: Vec<&String> = Vec::new();
            for w in &watchers {
                if let Some(report) = self.fresh(w, now) {
                    if report.get(node.as_str()) == Some(&false) {
                        missing.push(w);
                    }
                }
            }
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            let track = &self.nodes[node];
            let controller_misses = match track.answered {
                Some((_, ok)) => !ok,
                None => false,
            };
            let majority = 2 * missing.len() > total;
            let since = if majority {
                Some(track.majority_since.unwrap_or(now))
            } else {
                None
            };
            let next = match (since, track.liveness) {
                (Some(s), _) if now.saturating_duration_since(s) >= self.timers.confirm_after => {
                    Liveness::Dead
                }
                // A dead node stays dead until it answers again and no majority misses it.
                (_, Liveness::Dead) if controller_misses || majority => Liveness::Dead,
                _ if controller_misses || !missing.is_empty() => Liveness::Suspect,
                _ => Liveness::Alive,
            };
            let why = match next {
                Liveness::Dead if track.liveness != Liveness::Dead => format!(
                    "{} of its {total} report it unreachable ({}) for {} ms",
                    missing.len(),
                    missing.join(", "),
                    self.timers.confirm_after.as_millis()
                ),
                Liveness::Suspect => match (controller_misses, missing.is_empty()) {
                    (true, true) => "the controller does not reach it".to_owned(),
                    (false, _) => format!("{} report it unreachable", missing.join(", ")),
                    (true, false) => format!(
                        "the controller does not reach it, and {} report it unreachable",
                        missing.join(", ")
                    ),
                },
                Liveness::Alive if track.liveness == Liveness::Dead => {
                    "it answers again and its peers hear it".to_owned()
                }
                _ => "the controller and its peers hear it".to_owned(),
            };
            let track = self.nodes.get_mut(node).unwrap_or_else(|| unreachable!());
            track.majority_since = since;
            if next != track.liveness {
                track.liveness = next;
                changes.push(Change {
                    node: node.clone(),
                    liveness: next,
                    why,
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::hostd::PeerSeen;

    fn view(node: &str, unreachable: &[&str], all: &[&str]) -> PeerView {
        PeerView {
            node: node.into(),
            peers: all
                .iter()
                .filter(|p| **p != node)
                .map(|p| PeerSeen {
                    name: (*p).into(),
                    reachable: !unreachable.contains(p),
                    heard_ms_ago: vec![Some(if unreachable.contains(p) { 5000 } else { 50 })],
                })
                .collect(),
            hears: 0,
            of: all.len(),
            minority_for_ms: None,
            fenced: None,
        }
    }

    const ALL: [&str; 3] = ["a", "b", "c"];

    fn detector() -> (Detector, Instant) {
        let mut d = Detector::new(Timers {
            confirm_after: Duration::from_millis(400),
            report_stale: Duration::from_millis(1000),
        });
        d.set_nodes(&ALL.map(String::from));
        (d, Instant::now())
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_node_missed_by_a_majority_for_confirm_after_is_dead() {
        let (mut d, t0) = detector();
        for ms in [0, 200, 400, 600] {
            d.observe(at(t0, ms), "a", Some(&view("a", &["c"], &ALL)));
            d.observe(at(t0, ms), "b", Some(&view("b", &["c"], &ALL)));
            d.observe(at(t0, ms), "c", None);
            let changes = d.tick(at(t0, ms));
            match ms {
                0 => assert_eq!(changes[0].liveness, Liveness::Suspect),
                400 => {
                    assert_eq!(changes[0].liveness, Liveness::Dead);
                    assert!(changes[0].why.contains("2 of its 3"), "{}", changes[0].why);
                }
                _ => assert!(changes.is_empty(), "{ms}: {changes:?}"),
            }
        }
        assert_eq!(d.liveness("c"), Liveness::Dead);
        assert_eq!(d.liveness("a"), Liveness::Alive);
    }

    #[test]
    fn one_peer_alone_makes_a_suspect_never_a_dead_node() {
        let (mut d, t0) = detector();
        for ms in (0..3000).step_by(200) {
            d.observe(at(t0, ms), "a", Some(&view("a", &["c"], &ALL)));
            d.observe(at(t0, ms), "b", Some(&view("b", &[], &ALL)));
            d.observe(at(t0, ms), "c", Some(&view("c", &["a"], &ALL)));
            d.tick(at(t0, ms));
        }
        assert_eq!(d.liveness("c"), Liveness::Suspect);
        assert_eq!(d.liveness("a"), Liveness::Suspect);
    }

    #[test]
    fn a_controller_that_hears_a_minority_decides_nothing() {
        let (mut d, t0) = detector();
        for ms in (0..3000).step_by(200) {
            d.observe(at(t0, ms), "a", Some(&view("a", &["b", "c"], &ALL)));
            d.observe(at(t0, ms), "b", None);
            d.observe(at(t0, ms), "c", None);
            assert!(d.tick(at(t0, ms)).is_empty());
        }
        assert!(!d.hears_majority(at(t0, 3000)));
    }

    #[test]
    fn a_dead_node_that_answers_again_is_alive() {
        let (mut d, t0) = detector();
        d.restore("c", Liveness::Dead);
        d.observe(at(t0, 0), "a", Some(&view("a", &["c"], &ALL)));
        d.observe(at(t0, 0), "b", Some(&view("b", &["c"], &ALL)));
        d.observe(at(t0, 0), "c", Some(&view("c", &["a", "b"], &ALL)));
        let changes = d.tick(at(t0, 0));
        assert!(
            changes.iter().all(|c| c.node != "c"),
            "still missed by a majority: {changes:?}"
        );
        d.observe(at(t0, 200), "a", Some(&view("a", &[], &ALL)));
        d.observe(at(t0, 200), "b", Some(&view("b", &[], &ALL)));
        d.observe(at(t0, 200), "c", Some(&view("c", &[], &ALL)));
        let changes = d.tick(at(t0, 200));
        let c = changes.iter().find(|c| c.node == "c").unwrap();
        assert_eq!(c.liveness, Liveness::Alive);
        assert!(c.why.contains("answers again"), "{}", c.why);
    }

    #[test]
    fn last_heard_takes_the_freshest_word_of_anybody() {
        let (mut d, t0) = detector();
        let mut v = view("a", &[], &ALL);
        v.peers[1].heard_ms_ago = vec![Some(300), Some(100)];
        d.observe(at(t0, 1000), "a", Some(&v));
        assert_eq!(d.last_heard("c"), Some(at(t0, 900)));
        d.observe(at(t0, 1200), "c", None);
        assert_eq!(d.last_heard("c"), Some(at(t0, 900)));
    }
}
