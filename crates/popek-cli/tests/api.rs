//! `popek run --api`: the REST control socket against its OpenAPI document (docs/api.yaml),
//! pause and resume, errors that leave the machine running, `popek ctl`, and shutdown.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{popek, repo};

/// Every (path, method) of docs/api.yaml with its documented statuses. The document's layout
/// is fixed (two-space indents): paths at 2, methods at 4, status codes at 8.
fn documented() -> BTreeMap<(String, String), Vec<u16>> {
    let doc = std::fs::read_to_string(repo().join("docs/api.yaml")).unwrap();
    let mut out = BTreeMap::new();
    let (mut in_paths, mut path, mut method) = (false, String::new(), String::new());
    for line in doc.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent == 0 {
            in_paths = t == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if indent == 2 && t.starts_with('/') {
            path = t.trim_end_matches(':').to_string();
        } else if indent == 4 {
            method = t.trim_end_matches(':').to_uppercase();
            out.insert((path.clone(), method.clone()), Vec::new());
        } else if indent == 8 && t.starts_with('"') {
            let code: u16 = t.trim_matches(|c| c == '"' || c == ':').parse().unwrap();
            out.get_mut(&(path.clone(), method.clone()))
                .unwrap()
                .push(code);
        }
    }
    assert!(
        out.len() >= 4,
        "docs/api.yaml lists too few operations: {out:?}"
    );
    out
}

/// One HTTP request on the socket: status, headers and body.
fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn machine(sock: &Path) -> serde_json::Value {
    let (status, _, body) = http(sock, "GET", "/machine", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn instructions(sock: &Path) -> u64 {
    machine(sock)["instructions"].as_u64().unwrap()
}

/// A machine spinning forever, with its API socket.
fn start(name: &str) -> (Child, PathBuf) {
    // One program per test: tests run in parallel.
    let spin = common::build_asm(
        &format!("api_spin_{}", name.trim_end_matches(".sock")),
        ".globl _start\n_start:\n1: addi t0, t0, 1\n j 1b\n",
        0x8000_0000,
    );
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&sock);
    let child = popek()
        .args(["run", "--bios"])
        .arg(&spin)
        .arg("--api")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the API socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock)
}

fn wait_exit(mut child: Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("popek did not exit after shutdown");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn api_matches_its_openapi_document() {
    let (child, sock) = start("doc.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is mode {mode:o}");
    let doc = documented();
    for ((path, method), codes) in &doc {
        if path == "/machine/shutdown" {
            continue;
        }
        if path == "/machine/migrate" {
            // Needs a destination (tests/snapshot.rs migrates for real): without one, a 400.
            let (status, _, body) = http(&sock, method, path, r#"{"to":"nowhere"}"#);
            assert_eq!(status, 400, "{body}");
            assert!(
                codes.contains(&status) && body.contains("tcp:HOST:PORT"),
                "{body}"
            );
            continue;
        }
        let (status, _, body) = http(&sock, method, path, "");
        assert!(
            codes.contains(&status),
            "{method} {path}: {status} {body} not in {codes:?}"
        );
        assert_eq!(status, 200, "{method} {path}: {body}");
        // A method the document does not list for this path is a documented 405.
        let (status, head, body) = http(&sock, "DELETE", path, "");
        assert_eq!(status, 405, "DELETE {path}: {body}");
        assert!(head.contains(&format!("Allow: {method}")), "{head}");
        assert!(codes.contains(&405));
        assert!(body.starts_with("{\"error\":"), "{body}");
    }
    let m = machine(&sock);
    for field in ["status", "cpus", "memory", "uptime_ms", "instructions"] {
        assert!(m.get(field).is_some(), "GET /machine lacks {field}: {m}");
    }
    assert_eq!(m["status"], "running");
    assert_eq!(m["cpus"], 1);
    assert_eq!(m["memory"], 128u64 << 20);
    let (status, _, body) = http(&sock, "GET", "/nowhere", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    // Shutdown, as documented: 200, then popek exits 0.
    let codes = &doc[&("/machine/shutdown".to_string(), "PUT".to_string())];
    let (status, _, _) = http(&sock, "PUT", "/machine/shutdown", "");
    assert!(codes.contains(&status) && status == 200);
    assert_eq!(wait_exit(child), Some(0));
}

#[test]
fn pause_resume_errors_and_ctl() {
    let (child, sock) = start("ctl.sock");
    let ctl = |action: &str| {
        let out = common::run_with_timeout(
            popek().arg("ctl").arg(&sock).arg(action),
            Duration::from_secs(10),
        );
        let (stdout, stderr) = common::text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, out, _) = ctl("status");
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "running");
    let (code, out, _) = ctl("pause");
    assert_eq!((code, out.trim()), (Some(0), "{\"status\":\"paused\"}"));
    // Harts park at their next slice: the count settles, then stays.
    std::thread::sleep(Duration::from_millis(200));
    let a = instructions(&sock);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(instructions(&sock), a, "a paused machine ran");
    assert_eq!(machine(&sock)["status"], "paused");
    ctl("resume");
    std::thread::sleep(Duration::from_millis(300));
    let b = instructions(&sock);
    assert!(b > a, "the machine did not resume ({a} -> {b})");
    // Bad bodies, bad requests and unknown paths change nothing.
    for (method, path, body) in [
        ("PUT", "/machine/pause", "{not json"),
        ("PUT", "/machine/pause", "[1]"),
        ("PUT", "/machine/shutdown", "{\"now\": true}"),
        ("GET", "/machine/pause", ""),
        ("PUT", "/machines", ""),
    ] {
        let (status, _, resp) = http(&sock, method, path, body);
        assert!(
            [400, 404, 405].contains(&status),
            "{method} {path}: {status}"
        );
        assert!(resp.starts_with("{\"error\":"), "{resp}");
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"\x00\x01 garbage\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(machine(&sock)["status"], "running");
    assert!(
        instructions(&sock) > b,
        "the machine stopped after bad requests"
    );
    let (code, out, _) = ctl("shutdown");
    assert_eq!(
        (code, out.trim()),
        (Some(0), "{\"status\":\"shutting down\"}")
    );
    assert_eq!(wait_exit(child), Some(0));
    let (code, _, err) = ctl("status");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn api_socket_path_taken_is_an_error() {
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("taken.sock");
    std::fs::write(&sock, "").unwrap();
    let out = common::run_with_timeout(
        popek()
            .args(["run", "--bios", "/nonexistent", "--api"])
            .arg(&sock),
        Duration::from_secs(10),
    );
    let (_, err) = common::text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("the path exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
