//! `popek run --api PATH`: a REST API on a unix socket, in the style of Firecracker's, so
//! scripts can watch and steer a running machine: `GET /machine`, `PUT /machine/pause`,
//! `PUT /machine/resume`, `PUT /machine/shutdown`, `PUT /machine/migrate`. `docs/api.yaml` is its OpenAPI document.
//!
//! One request per connection (HTTP/1.1 with `Connection: close`), parsed with `httparse`;
//! errors are `{"error": "..."}` with 400, 404 or 405 and never touch the machine. The API
//! thread only flips flags the hart loops check between slices: it never blocks a vCPU.

mod client;
mod server;

pub use client::request;
pub use server::{handle, spawn, ApiListener, Response};

use serde::Serialize;

/// Why the API socket or a client request failed; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket path exists already.
    #[error("--api {0}: the path exists: remove it or pick another path")]
    PathExists(String),
    /// Binding the socket failed.
    #[error("--api {path}: cannot listen: {reason}")]
    Bind {
        /// The path as given.
        path: String,
        /// The host's reason.
        reason: std::io::Error,
    },
    /// The client could not reach the socket.
    #[error("{path}: cannot connect: {reason} (is popek run --api {path} running?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The host's reason.
        reason: std::io::Error,
    },
    /// The connection failed mid-request, or the answer was not HTTP.
    #[error("{path}: {why}")]
    Protocol {
        /// The socket path.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// What `GET /machine` reports.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MachineStatus {
    /// `running` or `paused`.
    pub status: &'static str,
    /// Harts.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Milliseconds since the machine started.
    pub uptime_ms: u64,
    /// Guest instructions retired so far (updated at the end of each hart's run slice).
    pub instructions: u64,
    /// The last migration asked of the machine, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
}

/// How a migration goes, in [`MachineStatus`]: `popek ctl SOCKET migrate` waits on it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MigrationStatus {
    /// `migrating`, `failed` (the machine runs on here) or `migrated` (the destination has it;
    /// this popek exits).
    pub state: &'static str,
    /// The destination, as asked.
    pub to: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The machine as the API sees it: implemented by the board's handle. Every method returns
/// at once (flags and counters only).
pub trait Control: Send + Sync {
    /// Current state.
    fn status(&self) -> MachineStatus;
    /// Park every hart at its next slice boundary.
    fn pause(&self);
    /// Let parked harts go on.
    fn resume(&self);
    /// Stop the machine; popek exits with status 0.
    fn shutdown(&self);
    /// Start moving the machine to another popek listening at `to` (`tcp:HOST:PORT`); the
    /// machine stops here once the destination has it. [`Control::status`] tells how it goes.
    fn migrate(&self, to: &str) -> Result<(), Refusal>;
    /// An answer was written and its connection closed: what the answer said has reached
    /// the asker (a machine that moved away waits for that before it exits).
    fn answered(&self) {}
}

/// Why the machine refused a request (the API answers 400 with it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);
