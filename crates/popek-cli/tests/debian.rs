//! `popek run debian`: a whole Debian system (guests/build-debian) boots from its virtio disk
//! to a systemd login on the console, gets its address from the user network, and powers off
//! with status 0, leaving what the guest wrote in the image.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The Debian guest's directory; the suite fails (never skips) when it was not built.
fn debian_dir() -> PathBuf {
    let dir = std::env::var_os("POPEK_GUEST_DIR_DEBIAN")
        .map(PathBuf::from)
        .unwrap_or_else(|| guest().parent().unwrap().join("debian"));
    assert!(
        dir.join("VERSION").is_file(),
        "the Debian guest is missing in {}: run guests/build-debian (scripts/test does)",
        dir.display()
    );
    dir
}

/// Wait until a console line contains `what`, or panic with everything seen.
fn expect(lines: &mpsc::Receiver<String>, seen: &mut String, what: &str, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains(what) {
                    return;
                }
            }
            Err(_) => panic!("no {what:?} on the console within {limit:?}; console:\n{seen}"),
        }
    }
}

/// `text` without terminal escape sequences (systemd and iproute2 colour their output).
fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A copy of the Debian guest in the test's scratch directory `name`: the cached image stays
/// as built.
fn debian_copy(name: &str) -> PathBuf {
    let src = debian_dir();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("VERSION"), dir.join("VERSION")).unwrap();
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src.join("disk.img"))
        .arg(dir.join("disk.img"))
        .status()
        .unwrap();
    assert!(st.success(), "copying the Debian image failed");
    dir
}

#[test]
fn debian_boots_to_login_networks_writes_and_powers_off() {
    let dir = debian_copy("debian-guest");

    let mut child = popek()
        .args(["run", "debian"])
        .env("POPEK_GUEST_DIR_DEBIAN", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // The console is not line-buffered: "debian login: " has no newline, so split on ':'
        // and '#' endings too by reading raw chunks.
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1];
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    buf.push(chunk[0]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if chunk[0] == b'\n' || text.ends_with("login: ") || text.ends_with("# ") {
                        let _ = tx.send(text.trim_end_matches(['\r', '\n']).to_string());
                        buf.clear();
                    }
                }
            }
        }
    });
    let mut seen = String::new();
    let limit = Duration::from_secs(600);
    expect(&lines, &mut seen, "login: ", limit);
    stdin.write_all(b"root\n").unwrap();
    expect(&lines, &mut seen, "# ", Duration::from_secs(120));
    stdin
        .write_all(
            b"systemctl is-system-running --wait; ip -color=never -4 -o addr show scope global; \
              echo debian-guest-was-here > /root/written.txt; sync; echo WROTE-IT\n",
        )
        .unwrap();
    expect(&lines, &mut seen, "WROTE-IT", Duration::from_secs(300));
    stdin.write_all(b"poweroff\n").unwrap();
    let status = exit_status(&mut child)
        .unwrap_or_else(|| panic!("poweroff did not end popek; console:\n{seen}"));
    while let Ok(l) = lines.try_recv() {
        seen.push_str(&l);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(0), "console:\n{seen}");
    assert!(
        strip_escapes(&seen).contains("10.0.2.15/24"),
        "no address from the user network's DHCP; console:\n{seen}"
    );
    let out = Command::new("debugfs")
        .args(["-R", "cat /root/written.txt"])
        .arg(dir.join("disk.img"))
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "debian-guest-was-here",
        "the file written in the guest is not in the image"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// How `child` ended, waiting up to 5 minutes; None (and the child killed) if it did not.
fn exit_status(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything a child printed so far, gathered by a reader thread.
struct Console {
    chunks: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Console {
    fn new(mut out: impl Read + Send + 'static) -> Console {
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console {
            chunks,
            seen: String::new(),
        }
    }

    /// Wait until the output (from `from` on) contains `what`; panic with it all after `limit`.
    fn wait_for(&mut self, from: usize, what: &str, limit: Duration) -> usize {
        self.seen_within(from, what, limit)
            .unwrap_or_else(|| panic!("no {what:?} within {limit:?}; output:\n{}", self.seen))
    }

    /// Where the output (from `from` on) first contains `what`, waiting up to `limit`.
    fn seen_within(&mut self, from: usize, what: &str, limit: Duration) -> Option<usize> {
        let end = Instant::now() + limit;
        loop {
            if let Some(at) = self.seen[from.min(self.seen.len())..].find(what) {
                return Some(from + at + what.len());
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(c) => self.seen.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => return None,
            }
        }
    }
}

/// The Debian system saved by `popek snapshot create` (once its boot-timer service said it is
/// up) restores in seconds, again and again from the same snapshot (its disk is written
/// copy-on-write, so the image stays as saved): each restore logs in on the console, still
/// has its address from the user network and opens a new TCP connection to the host.
#[test]
fn debian_restored_from_a_snapshot_answers_on_console_and_network() {
    let dir = debian_copy("debian-snapshot-guest");
    let snap = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-snapshot");
    let _ = std::fs::remove_dir_all(&snap);
    let out = run_with_timeout(
        popek()
            .args(["snapshot", "create"])
            .arg(&snap)
            .arg("debian")
            .env("POPEK_GUEST_DIR_DEBIAN", &dir),
        Duration::from_secs(900),
    );
    let (_, e) = text(&out);
    assert!(out.status.success(), "snapshot create debian failed: {e}");
    let image = dir.join("disk.img");
    let saved = std::fs::metadata(&image).unwrap().modified().unwrap();

    for round in 0..2 {
        let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host.local_addr().unwrap().port();
        let mut child = popek_on_a_terminal(&format!("run --restore {}", snap.display()));
        let mut input = child.stdin.take().unwrap();
        let mut console = Console::new(child.stdout.take().unwrap());
        let limit = Duration::from_secs(120);
        input.write_all(b"\r").unwrap();
        let at = console.wait_for(0, "login: ", limit);
        // agetty probes the terminal (ESC [6n) after a restore and may swallow what is typed
        // meanwhile: type the name again until a shell answers.
        let mut shell = None;
        for _ in 0..6 {
            input.write_all(b"root\r").unwrap();
            shell = console.seen_within(at, "# ", Duration::from_secs(20));
            if shell.is_some() {
                break;
            }
        }
        let at =
            shell.unwrap_or_else(|| panic!("no shell after login; console:\n{}", console.seen));
        input
            .write_all(
                format!(
                    "ip -color=never -4 -o addr show scope global; \
                     echo restored-{round} > /dev/tcp/10.0.2.2/{port}; echo SENT-$((40+{round}))\r"
                )
                .as_bytes(),
            )
            .unwrap();
        host.set_nonblocking(false).unwrap();
        let (tx, rx) = mpsc::channel();
        let accept = std::thread::spawn(move || {
            let (mut c, _) = host.accept().unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            let _ = tx.send(got);
        });
        let at = console.wait_for(at, &format!("SENT-4{round}"), limit);
        let got = rx
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no connection from the guest; console:\n{}", console.seen));
        accept.join().unwrap();
        assert_eq!(got, format!("restored-{round}\n"));
        assert!(
            strip_escapes(&console.seen[..at]).contains("10.0.2.15/24"),
            "the restored guest lost its address; console:\n{}",
            console.seen
        );
        input.write_all(b"poweroff\r").unwrap();
        drop(input);
        let status = exit_status(&mut child)
            .unwrap_or_else(|| panic!("poweroff did not end popek; console:\n{}", console.seen));
        assert!(status.success(), "console:\n{}", console.seen);
    }
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        saved,
        "a restore wrote the snapshot's disk"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&snap);
}
