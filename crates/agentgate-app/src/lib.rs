//! The agentgate gateway: configuration, the HTTP/WebSocket server, connections,
//! sessions, runs and agents. The binary and the integration tests both run this
//! crate's [`serve`], so tests exercise exactly what ships.
//!
//! # Layout
//! A request travels top-down through these files:
//! - [`config`]: file, environment overrides, validation into [`Config`].
//! - [`server`]: [`serve`], the accept loop (TLS, trusted proxies, head limits),
//!   one task per TCP connection, graceful shutdown; [`state`]: the node's shared
//!   [`AppState`].
//! - `upgrade.rs`: a connection's first request head; a WebSocket upgrade for `/v1/ws`
//!   or `/v1/mcp/{server}` is decided and answered there on the raw stream (the 101 or
//!   the refusal), anything else goes to hyper and the router.
//! - [`routes`]: the router, health endpoints, and the `/v1/ws` decisions: it puts the
//!   checks of [`admission`] (rate, connections, `Origin`, backend, credential,
//!   principal caps, resume) in the contract's order.
//! - [`credentials`]: finding the one credential on a request.
//! - [`limits`]: handshake rate and connection caps.
//! - [`tls`] and [`client_ip`]: TLS termination with reload on SIGHUP; the client
//!   address behind `server.trusted_proxies`.
//! - [`api`]: `POST /v1/tickets` and `POST /v1/admin/revoke`, over [`tickets`] (ticket
//!   policy) and [`revocation`] (this node's revocation cache).
//! - [`error`]: a [`Rejection`] as an HTTP response or close frame.
//! - [`connection`] (and [`mcp`]): the life of one WebSocket after the upgrade;
//!   `interrupts.rs`: shutdown, revocation, expiry and write timeouts on time.
//! - [`session`]: sessions, seq numbers, replay buffer, per-connection delivery.
//! - [`runs`] and [`agents`]: the run driver with exactly one terminal event; the demo
//!   and HTTP upstream agents.
//! - [`backend`]: everything several nodes share, behind one seam: the memory backend
//!   and the Redis backend.
//! - [`telemetry`] and [`metrics`]: logs that never carry a secret; Prometheus metrics.

pub mod admission;
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
pub mod state;
pub mod telemetry;
pub mod tickets;
pub mod tls;
mod upgrade;

pub use config::{Config, ConfigError, Env};
pub use error::Rejection;
pub use server::serve;
pub use state::AppState;
