//! Triad's wire types: the JSON every daemon, the CLI and the tests exchange.
//!
//! Daemons never link each other's internals; they meet here. Every type rejects unknown
//! fields so that a typo in a request is an error naming the field, not a silently ignored
//! setting.

pub mod client;
pub mod error;
pub mod hostd;
pub mod http;
pub mod net;
pub mod secrets;
#[cfg(feature = "server")]
pub mod server;
pub mod storage;
pub mod tls;
pub mod tools;
pub mod v1;
pub mod vmm;

pub use error::ErrorBody;
