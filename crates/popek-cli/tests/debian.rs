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

#[test]
fn debian_boots_to_login_networks_writes_and_powers_off() {
    let src = debian_dir();
    // Boot a copy: the cached image stays as built.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-guest");
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
    let end = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("poweroff did not end popek; console:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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
