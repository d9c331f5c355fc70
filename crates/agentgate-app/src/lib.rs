//! The agentgate gateway: configuration, the HTTP/WebSocket server, connections,
//! sessions, runs and agents. The binary and the integration tests both run this
//! crate's [`serve`], so tests exercise exactly what ships.
//!
//! # Layout
//! A request travels top-down through these files:
//! - [`config`]: file, environment overrides, validation into [`Config`].
//! - [`server`]: shared [`AppState`], [`serve`], graceful shutdown.
//! - [`routes`]: the pre-upgrade decisions for `/v1/ws`, health endpoints.
//! - [`credentials`]: finding the one credential on a request.
//! - [`limits`]: handshake rate and connection caps.
//! - [`tls`] and [`client_ip`]: TLS termination with reload on SIGHUP; the client
//!   address behind `server.trusted_proxies`.
//! - [`tickets`], [`revocation`], [`api`]: one-time tickets, the revocation list,
//!   and their HTTP endpoints.
//! - [`error`]: a [`Rejection`] as an HTTP response or close frame.
//! - [`connection`]: the life of one WebSocket after the upgrade.
//! - [`session`]: sessions, seq numbers, replay buffer, delivery.
//! - [`runs`] and [`agents`]: runs with exactly one terminal event; the demo agent.
//! - [`telemetry`] and [`metrics`]: logs that never carry a secret; Prometheus metrics.

pub mod agents;
pub mod api;
pub mod backend;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod doctor;
pub mod error;
pub mod head_limit;
mod interrupts;
pub mod jwks;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod revocation;
pub mod routes;
pub mod runs;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod tickets;
pub mod tls;

pub use config::{Config, ConfigError, Env};
pub use error::Rejection;
pub use server::{AppState, serve};
