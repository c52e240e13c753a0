//! Rust client of the `ipc-server` post office.
//!
//! This crate owns one peer's side of a connection: the handshake (token, TLS), sending every
//! kind of frame, a stream of incoming messages and membership events, request/reply with
//! timeouts, and reconnection with backoff that restores subscriptions. It must not depend on
//! the server crate, and it never buffers without bound: sends wait for queue space, requests
//! always end (reply, typed error, timeout or `Disconnected`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ipc_client::ClientError> {
//! use ipc_client::{Client, ClientOptions, Event};
//! let (client, mut events) = Client::connect(ClientOptions::new("ws://127.0.0.1:9163", "mydb", "worker-1")).await?;
//! client.subscribe("orders.>").await?;
//! client.publish("orders.created", b"{\"id\":1}").await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Published { subject, payload, .. } = event { println!("{subject}: {payload:?}"); }
//! }
//! # Ok(()) }
//! ```

mod client;
mod connect;
mod error;
mod event;
mod options;

pub use client::Client;
pub use error::{ClientError, RequestError};
pub use event::{Event, Events, IncomingRequest};
pub use options::{pm2_peer_id, ClientOptions};
pub use protocol::{ErrorCode, LeaveReason};
