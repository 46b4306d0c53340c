//! connstate: the client-connection-state service of an MQTT platform.
//!
//! For every MQTT client it knows whether it is connected, when it last
//! connected, disconnected and did something, and — when it dropped — who
//! ended the connection and with which MQTT reason code. It keeps a
//! connection log per client and a change feed that watchers follow live.
//!
//! # Layout
//!
//! - [`domain`]: plain types — client ids, lifecycle events, reason and close
//!   codes, state records, log entries, changes.
//! - [`rules`]: the lifecycle rules (event → new state, log entry, change),
//!   pure functions over domain types. The only place those rules live.
//! - [`store`]: sled behind one writer thread (group commit) that applies
//!   the rules, indexes, listings, the change feed and retention.
//! - [`tracker`]: the front door of lifecycle events: activity coalescing
//!   and broker leases.
//! - [`query`]: the query service every API edge uses, including watches.
//! - [`api`]: gRPC edges; generated types stop there.
//! - [`registry`]: API keys (hashed tokens, roles) that every API checks.
//! - [`mqtt`]: the embedded MQTT 3.1/3.1.1/5.0 broker, which reports every
//!   client lifecycle event to the tracker.
//! - [`source`]: connections to external brokers (Mosquitto) that turn
//!   their lifecycle signals into events for the tracker.
//! - [`metrics`]: Prometheus metrics of all of the above.
//! - [`config`]: one validated configuration.
//! - [`idle`]: the hook a thread runs when it runs out of work (the
//!   binaries' allocator gives memory back there).
//! - `lock`: taking the shared locks of the connect path, so that a panic
//!   under one does not poison it for every later connect.
//! - [`accept`]: every listener's connection cap and accept back-off;
//!   [`http`]: HTTP/1.1 serving with header and idle timeouts over it.
//! - [`server`]: wires it all together: [`server::run`] takes bound
//!   listeners, a configuration and a shutdown future.
//! - [`cli`]: the command-line client of a running server (`connstate
//!   clients list`, ...), over gRPC and, for the registry, REST.
//!
//! # The import rule
//!
//! A module uses only modules below it, from the bottom up: `domain` ←
//! `metrics` ← `rules` ← `store` ← `tracker`, `registry` ← `query`, `mqtt`
//! ← `api` ← `server` ← `cli`; `config`, `idle`, `lock`, `accept` and `http` sit beside them and
//! use nothing above them. A pure function (the rules) sits below
//! everything that calls it, so the store applies the rules without knowing
//! the tracker that feeds it.
#![forbid(unsafe_code)]

pub mod accept;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod http;
pub mod idle;
mod lock;
pub mod metrics;
pub mod mqtt;
pub mod query;
pub mod registry;
pub mod rules;
pub mod server;
pub mod source;
pub mod store;
pub mod tracker;

/// Code generated from `proto/connstate/v1/connstate.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("connstate.v1");

    /// The encoded descriptor set of the API, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/connstate_descriptor.bin"));
}

pub use config::Config;
pub use server::{Listeners, ServerError, run};
