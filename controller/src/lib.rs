//! `triad-controller`: the cluster's one HTTP API. It keeps the desired state of every
//! resource in a `Store`, places VMs on nodes and converges each node's hostd to what the
//! store says. It holds nothing in memory that it cannot rebuild from the store.

pub mod scheduler;
pub mod store;
