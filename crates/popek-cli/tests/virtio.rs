//! virtio devices seen from a real guest (the default guest, Debian's kernel): disks the guest
//! reads and writes, checked on the host; a network it configures by DHCP and uses both ways;
//! its entropy source; and the errors bad disks and networks give.

mod common;

use common::*;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("virtio");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// A 32 MiB ext4 image holding `files` (name, contents).
fn ext4_image(name: &str, files: &[(&str, &str)]) -> PathBuf {
    ext4_image_with(name, |dir| {
        for (f, body) in files {
            std::fs::write(dir.join(f), body).unwrap();
        }
    })
}

/// A 32 MiB ext4 image of the directory `fill` populates.
fn ext4_image_with(name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let img = scratch(name);
    let src = scratch(&format!("{name}.d"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    fill(&src);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
    img
}

/// A file's contents inside an ext4 image, read on the host with debugfs.
fn debugfs_cat(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat /{file}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hex digest `tool` (sha256sum, md5sum) prints for `data`.
fn digest(tool: &str, data: &[u8]) -> String {
    let mut child = Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn sha256(path: &Path) -> String {
    digest("sha256sum", &std::fs::read(path).unwrap())
}

fn md5(data: &[u8]) -> String {
    digest("md5sum", data)
}

#[test]
fn guest_reads_and_writes_an_ext4_disk() {
    let img = ext4_image("rw.img", &[("hello.txt", "made on the host\n")]);
    let disk = format!("{}", img.display());
    let (out, err, status) = popek_run(&[
        "--disk",
        &disk,
        "--",
        "sh",
        "-c",
        "mount /dev/vda /mnt && cat /mnt/hello.txt && \
         seq 1 20000 > /mnt/numbers.txt && md5sum /mnt/numbers.txt && umount /mnt",
    ]);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("made on the host"), "stdout: {out}");
    let written = debugfs_cat(&img, "numbers.txt");
    let expected: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    assert!(
        written == expected,
        "numbers.txt in the image differs ({} bytes, want {})",
        written.len(),
        expected.len()
    );
}

#[test]
fn readonly_disk_refuses_writes_and_stays_unchanged() {
    let img = ext4_image("ro.img", &[("keep.txt", "unchanged\n")]);
    let before = sha256(&img);
    let disk = format!("{},readonly", img.display());
    let (out, err, status) = popek_run(&[
        "--disk",
        &disk,
        "--",
        "sh",
        "-c",
        "cat /sys/block/vda/ro; mount -o ro /dev/vda /mnt && cat /mnt/keep.txt; \
         if dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; \
         then echo WRITE-OK; else echo WRITE-REFUSED; fi",
    ]);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.lines().any(|l| l.trim() == "1"),
        "vda not read-only: {out}"
    );
    assert!(out.contains("unchanged"), "stdout: {out}");
    assert!(out.contains("WRITE-REFUSED"), "stdout: {out}");
    assert_eq!(sha256(&img), before, "a read-only image changed");
}

#[test]
fn raw_disk_sectors_round_trip_and_discard() {
    let img = scratch("raw.img");
    std::fs::write(&img, vec![0xa5u8; 8 << 20]).unwrap();
    let disk = format!("{}", img.display());
    // Write a pattern at 1 MiB, drop the guest's caches and read it back, then discard the
    // fifth MiB.
    let (out, err, status) = popek_run(&[
        "--disk",
        &disk,
        "--",
        "sh",
        "-c",
        "cat /sys/block/vda/size; \
         printf 'popek-sector-data' | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null; \
         echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 17; echo; \
         blkdiscard -o 4194304 -l 1048576 /dev/vda && echo DISCARD-OK; sync",
    ]);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.lines().any(|l| l.trim() == "16384"),
        "size in sectors: {out}"
    );
    assert!(out.contains("popek-sector-data"), "stdout: {out}");
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 8 << 20, "the image changed size");
    assert_eq!(&data[1 << 20..(1 << 20) + 17], b"popek-sector-data");
    // The rest of the block keeps its bytes (the guest read, modified and wrote it back).
    assert_eq!(data[(1 << 20) + 17], 0xa5, "bytes after the write changed");
    assert!(out.contains("DISCARD-OK"), "blkdiscard failed: {out}");
    assert!(
        data[4 << 20..5 << 20].iter().all(|&b| b == 0),
        "a discarded range does not read back as zeros"
    );
    assert!(
        data[5 << 20..].iter().all(|&b| b == 0xa5),
        "bytes outside the guest's writes changed"
    );
}

/// `popek run ARGS -- true` that must fail: returns its exit status and stderr.
fn fails_with(args: &[&str]) -> (Option<i32>, String) {
    let out = run_with_timeout(
        popek()
            .arg("run")
            .args(args)
            .args(["--", "true"])
            .current_dir(std::env::temp_dir()),
        Duration::from_secs(60),
    );
    let (_, err) = text(&out);
    assert!(!err.contains("panicked"), "popek panicked: {err}");
    (out.status.code(), err)
}

#[test]
fn disk_errors_name_the_image_and_the_fix() {
    let missing = scratch("missing.img");
    let (code, err) = fails_with(&["--disk", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("cannot open disk image") && err.contains("missing.img"),
        "stderr: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the host's error said twice: {err}"
    );

    // An image another process holds (as a second popek would) is refused.
    let img = ext4_image("locked.img", &[]);
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&img)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock (util-linux)");
    std::thread::sleep(Duration::from_millis(300));
    let (code, err) = fails_with(&["--disk", img.to_str().unwrap()]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("in use by another process") && err.contains("locked.img"),
        "stderr: {err}"
    );

    let empty = scratch("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let (code, err) = fails_with(&["--disk", empty.to_str().unwrap()]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("at least one 512-byte sector"),
        "stderr: {err}"
    );

    let (code, err) = fails_with(&["--disk", "x.img,fast"]);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("unknown disk option 'fast'"), "stderr: {err}");
}

/// A one-shot HTTP server on the host's loopback; returns its port and the thread serving.
fn http_server(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = conn.read(&mut req);
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).unwrap();
    });
    (port, t)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn user_network_dhcp_outbound_http_and_published_port() {
    guest();
    let (port, server) = http_server("hello from the host's loopback\n");
    let published = free_port();
    let done_port = free_port();
    let script = format!(
        "ip link set eth0 up && udhcpc -i eth0 -n -q -s /bin/true 2>&1 | grep -o 'lease of [0-9.]*'; \
         ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2; \
         wget -q -O - http://10.0.2.2:{port}/; \
         mkdir -p /www && echo served-by-the-guest > /www/index.html && httpd -p 8080 -h /www && \
         {{ timeout 120 nc -l -p 8081 >/dev/null & }}; \
         until netstat -ltn | grep -q ':8081 '; do sleep 0.2; done; echo GUEST-HTTPD-UP && wait"
    );
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let f = fetched.clone();
    let args: Vec<String> = [
        "--net",
        "user",
        "--publish",
        &format!("{published}:8080"),
        "--publish",
        &format!("{done_port}:8081"),
        "--",
        "sh",
        "-c",
        &script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, status) = popek_watch(&args, move |line| {
        if line.contains("GUEST-HTTPD-UP") {
            let mut c = TcpStream::connect(("127.0.0.1", published)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            let _ = c.read_to_string(&mut reply);
            *f.lock().unwrap() = Some(reply);
            // Let the guest finish: a byte to its listener, then wait for it to close.
            let mut done = TcpStream::connect(("127.0.0.1", done_port)).unwrap();
            done.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            done.write_all(b"x").unwrap();
            done.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = done.read_to_end(&mut Vec::new());
        }
    });
    server.join().unwrap();
    assert!(status.success(), "stdout: {out}");
    assert!(out.contains("lease of 10.0.2.15"), "no DHCP lease: {out}");
    assert!(
        out.contains("hello from the host's loopback"),
        "outbound HTTP failed: {out}"
    );
    let fetched = fetched
        .lock()
        .unwrap()
        .take()
        .expect("the guest's web server never came up");
    assert!(
        fetched.contains("served-by-the-guest"),
        "published port returned: {fetched}"
    );
}

#[test]
fn entropy_source_feeds_the_guest() {
    let (out, err, status) = popek_run(&[
        "--",
        "sh",
        "-c",
        "cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | gzip -c | wc -c",
    ]);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("virtio_rng"), "stdout: {out}");
    // 4 KiB of random bytes do not compress.
    let size: usize = out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .expect("no byte count");
    assert!(size > 4000, "hwrng output compressed to {size} bytes");
}

#[test]
fn network_errors_are_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, err) = fails_with(&["--publish", &format!("{port}:80")]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains(&port.to_string()), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");

    let (code, err) = fails_with(&["--net", "bridge"]);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("use user or tap=NAME"), "stderr: {err}");

    let (code, err) = fails_with(&["--net", "tap=a-name-too-long-for-linux"]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("'a-name-too-long-for-linux' is not a valid interface name"),
        "stderr: {err}"
    );
}

/// An ext4 image holding tests/guest/NAME.c built as the static riscv64 program NAME.
fn guest_tool_image(name: &str) -> PathBuf {
    ext4_image_with(&format!("{name}-tool.img"), |dir| {
        let st = Command::new("riscv64-linux-gnu-gcc")
            .args(["-O2", "-static", "-o"])
            .arg(dir.join(name))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/guest/{name}.c")))
            .status()
            .expect("riscv64-linux-gnu-gcc is needed (scripts/install-deps)");
        assert!(st.success(), "building tests/guest/{name}.c failed");
    })
}

/// Pages remapped, write-protected, copied on write and replaced with new code one at a time,
/// each followed by the kernel's sfence.vma for that one address, on two harts: every read
/// sees the latest mapping (tests/guest/remap.c), on the JIT and on the interpreter.
#[test]
fn single_page_mapping_changes_reach_every_translation() {
    let tool = guest_tool_image("remap");
    let disk = format!("{},readonly", tool.display());
    for engine in ["jit", "interp"] {
        let (o, e, status) = popek_run(&[
            "--cpus",
            "2",
            "--engine",
            engine,
            "--disk",
            &disk,
            "--",
            "sh",
            "-c",
            "mount -o ro /dev/vda /mnt && /mnt/remap",
        ]);
        assert_eq!((o.as_str(), status), ("remap ok\n", 0), "{engine}: {e}");
    }
}

/// Run popek with `args`, calling `on_line` for each line of its console output (on a reader
/// thread) until it exits; returns the whole output and the exit status.
fn popek_watch(
    args: &[String],
    on_line: impl FnMut(&str) + Send + 'static,
) -> (String, std::process::ExitStatus) {
    watch(popek().arg("run").args(args), on_line)
}

/// Run `cmd`, calling `on_line` for each line of its stdout (on a reader thread) until it
/// exits within [`LIMIT`]; returns the whole output and the exit status.
fn watch(
    cmd: &mut Command,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> (String, std::process::ExitStatus) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            on_line(&line);
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} timed out");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (reader.join().unwrap(), status)
}

#[test]
fn vsock_connections_in_both_directions() {
    guest();
    let tool = guest_tool_image("vsock");
    let sock = scratch("vm.vsock");
    let _ = std::fs::remove_file(&sock);
    // The host's listener for the guest's connection to host port 5000.
    let host_listener = std::os::unix::net::UnixListener::bind(format!("{}_5000", sock.display()))
        .or_else(|_| {
            let _ = std::fs::remove_file(format!("{}_5000", sock.display()));
            std::os::unix::net::UnixListener::bind(format!("{}_5000", sock.display()))
        })
        .unwrap();
    let host_side = std::thread::spawn(move || {
        let (mut c, _) = host_listener.accept().unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        c.write_all(format!("host got [{got}]").as_bytes()).unwrap();
        got
    });
    let script = "mount -o ro /dev/vda /mnt && /mnt/vsock connect 5000 guest-to-host && \
                  /mnt/vsock listen 1234";
    let args: Vec<String> = [
        "--disk",
        &format!("{},readonly", tool.display()),
        "--vsock",
        &sock.display().to_string(),
        "--",
        "sh",
        "-c",
        script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let sock_path = sock.clone();
    let client = std::thread::spawn(move || {
        // Wait for the guest to listen, then connect the Firecracker way.
        rx.recv().unwrap();
        let mut c = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(b"CONNECT 1234\n").unwrap();
        let mut ok = Vec::new();
        let mut b = [0u8; 1];
        while c.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            ok.push(b[0]);
        }
        c.write_all(b"ping-from-host\n").unwrap();
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        (String::from_utf8_lossy(&ok).into_owned(), reply)
    });
    let (out, status) = popek_watch(&args, move |line| {
        if line.starts_with("LISTENING") {
            let _ = tx.send(line.to_string());
        }
    });
    assert!(status.success(), "stdout: {out}");
    assert_eq!(host_side.join().unwrap(), "guest-to-host");
    assert!(
        out.contains("REPLY host got [guest-to-host]"),
        "the guest's connection got no reply: {out}"
    );
    let (ok, reply) = client.join().unwrap();
    assert!(ok.starts_with("OK "), "CONNECT answered {ok:?}");
    assert_eq!(reply, "pong:ping-from-host\n");
    assert!(out.contains("SERVED ping-from-host"), "stdout: {out}");
}

/// Run `ip ARGS...`, panicking with its error output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that is deleted (with its tap) when dropped.
struct Netns(String);

impl Netns {
    /// A new namespace `PREFIX-PID` (a leftover of that name deleted first). Only root can
    /// make one.
    fn new(prefix: &str) -> Netns {
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        assert_eq!(
            String::from_utf8_lossy(&uid).trim(),
            "0",
            "this test creates a network namespace and a tap device: run the suite as root (CI does)"
        );
        let ns = Netns(format!("{prefix}-{}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).status();
        ip(&["netns", "add", &ns.0]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A tap another process holds (another popek, or another restore of a snapshot saved on
/// that tap) is refused in one line naming it, instead of a hint to create it.
#[test]
fn a_tap_in_use_is_refused_in_one_line() {
    let ns = Netns::new("popek-busy");
    // The holder attaches to the tap (creating it) and says so.
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c"])
        .arg(
            "import fcntl, os, struct, sys, time\n\
             fd = os.open('/dev/net/tun', os.O_RDWR)\n\
             fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', b'btap0', 0x1002))\n\
             print('held', flush=True)\n\
             time.sleep(60)",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut said = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said, "held\n");
    let out = run_with_timeout(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_popek"), "run"])
            .args(["--net", "tap=btap0", "--", "true"]),
        Duration::from_secs(60),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("tap btap0 is in use by another process"),
        "stderr: {err}"
    );
}

/// Clones of a snapshot saved on a tap each take a tap of their own with `--net tap=NAME`
/// (the card, and the MAC address the guest read, stay the saved ones); a clone left on the
/// saved tap while another holds it is refused in one line.
#[test]
fn clones_of_a_tap_snapshot_take_taps_of_their_own() {
    guest();
    let ns = Netns::new("popek-clones");
    for tap in ["ctap0", "ctap1"] {
        ip(&[
            "netns", "exec", &ns.0, "ip", "tuntap", "add", tap, "mode", "tap",
        ]);
    }
    let snap = scratch("tap-snapshot");
    let _ = std::fs::remove_dir_all(&snap);
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_popek")])
            .args(args);
        c
    };
    let out = run_with_timeout(
        &mut in_ns(&[
            "snapshot",
            "create",
            snap.to_str().unwrap(),
            "--net",
            "tap=ctap0",
        ]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    // One clone holds the saved tap while the others start.
    let mut first = in_ns(&[
        "run",
        "--restore",
        snap.to_str().unwrap(),
        "--",
        "sleep",
        "20",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let own = run_with_timeout(
        &mut in_ns(&[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--net",
            "tap=ctap1",
            "--",
            "cat",
            "/sys/class/net/eth0/address",
        ]),
        Duration::from_secs(120),
    );
    let same = run_with_timeout(
        &mut in_ns(&["run", "--restore", snap.to_str().unwrap(), "--", "true"]),
        Duration::from_secs(120),
    );
    let _ = first.kill();
    let _ = first.wait();
    let (o, e) = text(&own);
    assert_eq!(
        (own.status.code(), o.as_str()),
        (Some(0), "52:54:00:12:34:56\n"),
        "{e}"
    );
    let (_, e) = text(&same);
    assert_eq!(same.status.code(), Some(1), "{e}");
    assert!(e.contains("tap ctap0 is in use by another process"), "{e}");
}

#[test]
fn tap_network_in_a_namespace_carries_data_both_ways() {
    guest();
    let ns = Netns::new("popek-tap");
    let in_ns = |args: &[&str]| {
        let mut v = vec!["netns", "exec", &ns.0];
        v.extend_from_slice(args);
        ip(&v)
    };
    in_ns(&["ip", "link", "set", "lo", "up"]);
    in_ns(&["ip", "tuntap", "add", "ptap0", "mode", "tap"]);
    in_ns(&["ip", "addr", "add", "10.0.3.1/24", "dev", "ptap0"]);
    in_ns(&["ip", "link", "set", "ptap0", "up"]);

    // The namespace's side: a 1 MiB file served over HTTP at 10.0.3.1:8000.
    let www = scratch("tap-www");
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let blob_md5 = md5(&blob);
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "python3",
            "-m",
            "http.server",
            "8000",
        ])
        .args(["--bind", "10.0.3.1", "--directory"])
        .arg(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");

    let script = "ip link set eth0 up && ip addr add 10.0.3.2/24 dev eth0 && \
                  wget -q -O /tmp/blob http://10.0.3.1:8000/blob && md5sum /tmp/blob && \
                  mkdir -p /www && head -c 1048576 /dev/urandom > /www/up && md5sum /www/up && \
                  httpd -p 80 -h /www && \
                  { timeout 120 nc -l -p 81 >/dev/null & }; \
                  until netstat -ltn | grep -q ':81 '; do sleep 0.2; done; echo GUEST-SERVING && wait";
    let ns_name = ns.0.clone();
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let f = fetched.clone();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_popek"), "run"])
        .args(["--net", "tap=ptap0", "--", "sh", "-c", script]);
    let (out, status) = watch(&mut cmd, move |line| {
        if line.contains("GUEST-SERVING") {
            let got = Command::new("ip")
                .args(["netns", "exec", &ns_name, "python3", "-c"])
                .arg("import socket,sys,urllib.request; sys.stdout.buffer.write(urllib.request.urlopen('http://10.0.3.2/up', timeout=60).read()); d = socket.create_connection(('10.0.3.2', 81), timeout=60); d.sendall(b'x'); d.shutdown(socket.SHUT_WR); d.recv(1)")
                .output()
                .unwrap();
            *f.lock().unwrap() = Some(got.stdout);
        }
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.success(), "stdout: {out}");
    assert!(
        out.contains(&format!("{blob_md5}  /tmp/blob")),
        "namespace -> guest: the guest's md5 differs from {blob_md5}: {out}"
    );
    let up = fetched
        .lock()
        .unwrap()
        .take()
        .expect("the guest's web server never came up");
    assert_eq!(up.len(), 1 << 20, "guest -> namespace: short download");
    assert!(
        out.contains(&format!("{}  /www/up", md5(&up))),
        "guest -> namespace: the md5 of what arrived is not the guest's: {out}"
    );
}
