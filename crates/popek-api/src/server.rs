//! The API's listener, HTTP/1.1 parsing and routing.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::{ApiError, Control};

/// Requests larger than this (head plus body) are refused.
const MAX_REQUEST: usize = 64 << 10;

/// The API socket, bound (mode 0600) before popek confines itself.
#[derive(Debug)]
pub struct ApiListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiListener {
    /// Create the socket at `path`, readable and writable by its owner only.
    pub fn bind(path: &Path) -> Result<ApiListener, ApiError> {
        let shown = path.display().to_string();
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::PathExists(shown));
        }
        // The socket is created with the umask's mode: make it 0600 from the start rather
        // than chmod afterwards (no window where others could connect).
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|reason| ApiError::Bind {
            path: shown,
            reason,
        })?;
        Ok(ApiListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An HTTP answer: status and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// JSON text.
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    fn ok(v: serde_json::Value) -> Response {
        Response {
            status: 200,
            body: v.to_string(),
            allow: None,
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Response {
        Response {
            status,
            body: json!({ "error": msg.into() }).to_string(),
            allow: None,
        }
    }
}

/// Answer one request. `stopping` is set once a shutdown was accepted: later requests get an
/// error and change nothing.
pub fn handle(
    control: &dyn Control,
    stopping: &AtomicBool,
    method: &str,
    path: &str,
    body: &[u8],
) -> Response {
    let allow = match path {
        "/machine" => "GET",
        "/machine/pause" | "/machine/resume" | "/machine/shutdown" | "/machine/migrate" => "PUT",
        _ => return Response::error(404, format!("no such resource: {path}")),
    };
    if method != allow {
        let mut r = Response::error(405, format!("{path} allows {allow} only, not {method}"));
        r.allow = Some(allow);
        return r;
    }
    if path == "/machine/migrate" {
        if stopping.load(Ordering::SeqCst) {
            return Response::error(400, "the machine is shutting down");
        }
        return migrate(control, body);
    }
    if method == "PUT" && !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) if m.is_empty() => {}
            Ok(_) => return Response::error(400, "the body must be empty or {}"),
            Err(e) => return Response::error(400, format!("the body is not JSON: {e}")),
        }
    }
    if stopping.load(Ordering::SeqCst) {
        return Response::error(400, "the machine is shutting down");
    }
    match path {
        "/machine" => match serde_json::to_value(control.status()) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(400, e.to_string()),
        },
        "/machine/pause" => {
            control.pause();
            Response::ok(json!({ "status": "paused" }))
        }
        "/machine/resume" => {
            control.resume();
            Response::ok(json!({ "status": "running" }))
        }
        _ => {
            stopping.store(true, Ordering::SeqCst);
            control.shutdown();
            Response::ok(json!({ "status": "shutting down" }))
        }
    }
}

/// `PUT /machine/migrate` with `{"to": "tcp:HOST:PORT"}`.
fn migrate(control: &dyn Control, body: &[u8]) -> Response {
    let to = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v.get("to").and_then(|t| t.as_str()).map(str::to_string),
        Err(e) => return Response::error(400, format!("the body is not JSON: {e}")),
    };
    let Some(to) = to else {
        return Response::error(400, "the body must be {\"to\": \"tcp:HOST:PORT\"}");
    };
    match control.migrate(&to) {
        Ok(()) => Response::ok(json!({ "status": "migrating", "to": to })),
        Err(e) => Response::error(400, e.to_string()),
    }
}

/// Serve the API on its own thread; `on_start` runs first on it (the caller's jail).
pub fn spawn(
    listener: ApiListener,
    control: Arc<dyn Control>,
    on_start: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            on_start();
            let stopping = AtomicBool::new(false);
            for conn in listener.listener.incoming() {
                match conn {
                    Ok(s) => serve_one(s, &*control, &stopping),
                    Err(e) => tracing::warn!("api: accept: {e}"),
                }
            }
        })
}

/// Read one request, answer it, close.
fn serve_one(mut s: UnixStream, control: &dyn Control, stopping: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let resp = match read_request(&mut s) {
        Ok((method, path, body)) => handle(control, stopping, &method, &path, &body),
        Err(why) => Response::error(400, why.to_string()),
    };
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let allow = resp
        .allow
        .map(|a| format!("Allow: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        resp.status,
        resp.body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(resp.body.as_bytes());
    drop(s);
    control.answered();
}

/// Why a request could not be read; the client gets the message with a 400.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// A Content-Length header that is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
    /// Head and body larger than [`MAX_REQUEST`].
    #[error("the request is too large")]
    TooLarge,
    /// The client closed the connection before the whole body came.
    #[error("the body is shorter than Content-Length")]
    ShortBody,
    /// The client closed the connection before the whole head came.
    #[error("the connection closed mid-request")]
    Closed,
    /// Bytes that do not parse as an HTTP request.
    #[error("not an HTTP request: {0}")]
    NotHttp(#[source] httparse::Error),
    /// Reading the socket failed (the client's timeout ran out).
    #[error(transparent)]
    Read(#[from] std::io::Error),
}

/// Read and parse one HTTP/1.1 request: method, path and body.
fn read_request(s: &mut UnixStream) -> Result<(String, String, Vec<u8>), RequestError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let len = content_length(req.headers)?;
                if head + len > MAX_REQUEST {
                    return Err(RequestError::TooLarge);
                }
                let method = req.method.unwrap_or_default().to_string();
                let path = req.path.unwrap_or_default().to_string();
                while buf.len() < head + len {
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        return Err(RequestError::ShortBody);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((method, path, buf[head..head + len].to_vec()));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(RequestError::NotHttp(e)),
        }
        if buf.len() > MAX_REQUEST {
            return Err(RequestError::TooLarge);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(RequestError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, RequestError> {
    match headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(0),
        Some(h) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(RequestError::BadContentLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineStatus;
    use std::sync::atomic::AtomicU32;

    #[derive(Default)]
    struct Fake {
        paused: AtomicBool,
        shutdowns: AtomicU32,
        migrating_to: std::sync::Mutex<Option<String>>,
    }

    impl Control for Fake {
        fn status(&self) -> MachineStatus {
            MachineStatus {
                status: if self.paused.load(Ordering::SeqCst) {
                    "paused"
                } else {
                    "running"
                },
                cpus: 2,
                memory: 1 << 20,
                uptime_ms: 5,
                instructions: 7,
                migration: self.migrating_to.lock().unwrap().clone().map(|to| {
                    crate::MigrationStatus {
                        state: "migrating",
                        to,
                        error: None,
                    }
                }),
            }
        }
        fn pause(&self) {
            self.paused.store(true, Ordering::SeqCst);
        }
        fn resume(&self) {
            self.paused.store(false, Ordering::SeqCst);
        }
        fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
        fn migrate(&self, to: &str) -> Result<(), crate::Refusal> {
            if to.starts_with("tcp:") {
                *self.migrating_to.lock().unwrap() = Some(to.into());
                Ok(())
            } else {
                Err(crate::Refusal(format!("{to}: not tcp:HOST:PORT")))
            }
        }
    }

    #[test]
    fn migrate_takes_a_destination() {
        let f = Fake::default();
        let stop = AtomicBool::new(false);
        let r = handle(
            &f,
            &stop,
            "PUT",
            "/machine/migrate",
            br#"{"to":"tcp:127.0.0.1:9"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("migrating"), "{}", r.body);
        // The machine's state says how it goes.
        let r = handle(&f, &stop, "GET", "/machine", b"");
        assert!(
            r.body
                .contains(r#""migration":{"state":"migrating","to":"tcp:127.0.0.1:9"}"#),
            "{}",
            r.body
        );
        let r = handle(&f, &stop, "PUT", "/machine/migrate", br#"{"to":"x"}"#);
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, r#"{"error":"x: not tcp:HOST:PORT"}"#)
        );
        assert_eq!(
            handle(&f, &stop, "PUT", "/machine/migrate", b"{}").status,
            400
        );
        assert_eq!(
            handle(&f, &stop, "GET", "/machine/migrate", b"").status,
            405
        );
    }

    #[test]
    fn routes_and_errors() {
        let f = Fake::default();
        let stop = AtomicBool::new(false);
        let r = handle(&f, &stop, "GET", "/machine", b"");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("\"status\":\"running\""), "{}", r.body);
        assert_eq!(
            handle(&f, &stop, "PUT", "/machine/pause", b"{}").status,
            200
        );
        assert!(f.paused.load(Ordering::SeqCst));
        assert_eq!(handle(&f, &stop, "PUT", "/machine/resume", b"").status, 200);
        assert!(!f.paused.load(Ordering::SeqCst));
        assert_eq!(handle(&f, &stop, "GET", "/nope", b"").status, 404);
        let r = handle(&f, &stop, "POST", "/machine", b"");
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        let r = handle(&f, &stop, "PUT", "/machine/pause", b"{not json");
        assert_eq!(r.status, 400);
        assert!(r.body.starts_with("{\"error\":"), "{}", r.body);
        assert!(
            !f.paused.load(Ordering::SeqCst),
            "a bad body changed the machine"
        );
        assert_eq!(
            handle(&f, &stop, "PUT", "/machine/shutdown", b"").status,
            200
        );
        assert_eq!(handle(&f, &stop, "PUT", "/machine/pause", b"").status, 400);
        assert_eq!(
            handle(&f, &stop, "PUT", "/machine/shutdown", b"").status,
            400
        );
        assert_eq!(f.shutdowns.load(Ordering::SeqCst), 1);
        assert!(!f.paused.load(Ordering::SeqCst));
    }
}
