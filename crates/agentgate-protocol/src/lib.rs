//! The agentgate wire vocabulary, v1 (`shared/PROTOCOL.md`).
//!
//! This crate holds only data: reason codes with their HTTP statuses and close codes,
//! the messages a client sends and the server answers, agent event types, and the
//! server's identifiers. It knows nothing of sockets or tokio, so every other crate (and
//! any Rust client) can depend on it.
//!
//! # Layout
//! - [`code`]: [`ErrorCode`], the closed set of reason codes, each mapped to its HTTP
//!   status and WebSocket close code in exactly one place.
//! - [`advice`]: each code's client class, retryability and advice (the source of
//!   `docs/errors.json`).
//! - [`client`]: parsing of client frames into [`ClientMessage`], with the exact
//!   reason code for each malformed frame.
//! - [`server`]: the messages the server sends ([`Welcome`], [`EventFrame`], ...).
//! - [`id`]: opaque identifiers with their prefixes (`s_`, `r_`, `t_`, `req_`).

pub mod advice;
pub mod client;
pub mod code;
pub mod id;
pub mod server;

pub use advice::{ClientClass, errors_json};
pub use client::{ClientMessage, FrameError};
pub use code::ErrorCode;
pub use server::{EventFrame, EventType, PrincipalInfo, Reply, Welcome};

/// The protocol name, offered as a subprotocol and echoed in the welcome.
pub const PROTOCOL_V1: &str = "agentgate.v1";

/// Prefix of a bearer token carried in `Sec-WebSocket-Protocol`.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "agentgate.bearer.";

/// Prefix of a bearer token carried in `Sec-WebSocket-Protocol` by MCP clients.
pub const MCP_AUTH_SUBPROTOCOL_PREFIX: &str = "mcp.auth.";

/// The subprotocol of hosted MCP servers.
pub const MCP_SUBPROTOCOL: &str = "mcp";
