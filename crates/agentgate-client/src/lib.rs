//! A Rust client for the agentgate gateway (`/v1/ws`, PROTOCOL.md sections 2-6).
//!
//! It connects with any of the credential transports, hands out the gateway's messages
//! in order, tracks event `seq` numbers, answers `auth.expiring` with `auth.refresh`
//! from a [`TokenProvider`], and with [`ResumingClient`] reconnects with backoff and
//! resumes the session so that every event is seen exactly once.
//!
//! Every failure is one [`ClientError`] that keeps apart an HTTP refusal (status and
//! reason code), a close frame (close code and reason code), a network fault, a
//! timeout and a protocol fault; [`ClientError::class`] says what to do about it and
//! [`ClientError::is_retryable`] whether to try again. Nothing here ever falls back to
//! a substitute when the gateway cannot be reached, and no error, log line or `Debug`
//! output contains a token.
//!
//! ```no_run
//! use agentgate_client::{Client, Credential};
//!
//! # async fn demo() -> Result<(), agentgate_client::ClientError> {
//! let token = std::env::var("AGENTGATE_TOKEN").unwrap_or_default();
//! let client = Client::new("ws://127.0.0.1:8079/v1/ws", Credential::Header(token));
//! let mut conn = client.connect().await?;
//! let mut run = conn.run("demo", serde_json::json!({"prompt": "count these words"})).await?;
//! while let Some(event) = run.next_event().await? {
//!     println!("{event}");
//! }
//! println!("{:?}", run.outcome());
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`credential`]: [`Credential`] (header, subprotocol, query, ticket, first
//!   message), [`Resume`], [`TokenProvider`], and the handshake request.
//! - [`connection`]: [`Client`] and [`Connection`]: handshake, welcome, send, receive
//!   with `seq` tracking and automatic refresh.
//! - [`message`]: [`ServerMessage`], one frame as exact text and parsed JSON.
//! - [`run`]: [`Run`] follows one `run.start` to its terminal event; [`RunOutcome`].
//! - [`retry`]: [`RetryPolicy`] (exponential backoff, full jitter) and
//!   [`ResumingClient`].
//! - [`tls`]: `wss://` with rustls, verified against the system's roots or a CA file.
//! - [`error`]: [`ClientError`] and [`ErrorClass`] (the exit statuses of
//!   `agentgate connect`).

pub mod connection;
pub mod credential;
pub mod error;
pub mod message;
pub mod retry;
pub mod run;
pub mod tls;

pub use connection::{Client, Connection, connect_raw};
pub use credential::{Credential, Resume, TokenProvider};
pub use error::{ClientError, ErrorClass};
pub use message::ServerMessage;
pub use retry::{ResumingClient, RetryPolicy};
pub use run::{Run, RunOutcome};
