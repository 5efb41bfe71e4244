//! Snapshots of the default guest: `popek snapshot create` saves it once ready, and every
//! `popek run --restore` carries on from there, runs a command or a shell, as a new VM
//! generation; damaged or mismatched snapshots are refused in one line.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// `popek snapshot create DIR ARGS`, which must succeed.
fn create(dir: &Path, args: &[&str]) {
    guest();
    let out = run_with_timeout(
        popek().args(["snapshot", "create"]).arg(dir).args(args),
        LIMIT,
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "snapshot create failed: {o}\n{e}");
    assert!(
        e.contains("popek: saved to") && o.is_empty(),
        "one line on stderr, nothing on stdout: {o}\n{e}"
    );
}

/// One snapshot of the default guest (512 MiB, one hart) shared by the tests.
fn snapshot() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("default");
        create(&dir, &[]);
        dir
    })
}

/// `popek run --restore DIR ARGS`: (stdout, stderr, status).
fn restore(dir: &Path, args: &[&str]) -> (String, String, i32) {
    let out = run_with_timeout(
        popek().arg("run").arg("--restore").arg(dir).args(args),
        Duration::from_secs(120),
    );
    let (o, e) = text(&out);
    assert!(!e.contains("panicked"), "popek panicked: {e}");
    (o, e, out.status.code().expect("killed by a signal"))
}

#[test]
fn restores_run_commands_with_their_output_and_status() {
    let dir = snapshot();
    let size_on_disk = std::fs::metadata(dir.join("ram.img")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(size_on_disk.len(), 512 << 20, "ram.img spans guest RAM");
    assert!(
        size_on_disk.blocks() * 512 < 256 << 20,
        "ram.img is sparse: {} bytes allocated",
        size_on_disk.blocks() * 512
    );
    for _ in 0..3 {
        // The same snapshot, restored again and again: each restore starts from the saved
        // state, not from what the previous one did.
        let (o, e, s) = restore(
            dir,
            &[
                "--",
                "sh",
                "-c",
                "test -e /root/mark && echo stale; touch /root/mark; echo out; echo err >&2; exit 3",
            ],
        );
        assert_eq!((o.as_str(), e.as_str(), s), ("out\n", "err\n", 3));
    }
    // Words reach the guest's argv exactly, whatever they hold (the terminal that carries
    // them would act on control characters).
    let (o, e, s) = restore(
        dir,
        &[
            "--",
            "printf",
            "%s|",
            "a'b \"q\"",
            "c\nd",
            "e\\f",
            "\u{3}\u{4}\u{15}",
            "é",
            "",
        ],
    );
    assert_eq!(
        (o.as_str(), s),
        ("a'b \"q\"|c\nd|e\\f|\u{3}\u{4}\u{15}|é||", 0),
        "{e}"
    );
    // The clock goes on from where the snapshot stopped: uptime is at least the boot time.
    let (o, e, s) = restore(dir, &["--", "cat", "/proc/uptime"]);
    assert_eq!(s, 0, "{e}");
    let uptime: f64 = o.split_whitespace().next().unwrap().parse().unwrap();
    assert!(uptime > 1.0, "uptime {uptime} s after a restore");
}

#[test]
fn each_restore_is_a_new_generation_with_its_own_randomness() {
    let dir = snapshot();
    // The kernel's vmgenid driver holds the device (so it sees each new generation and
    // reseeds the random generator at once); then what the guest reads from urandom.
    let probe = "ls /sys/bus/platform/drivers/vmgenid/; head -c 16 /dev/urandom | od -An -tx1";
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (o, e, s) = restore(dir, &["--", "sh", "-c", probe]);
        assert_eq!(s, 0, "{e}");
        assert!(
            o.contains("103000.vmgenid"),
            "vmgenid driver not bound: {o}"
        );
        seen.push(o.lines().last().unwrap().to_string());
    }
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            assert_ne!(seen[i], seen[j], "two restores read the same random bytes");
        }
    }
}

#[test]
fn restore_without_a_command_starts_a_shell() {
    shell_answers(snapshot(), b"echo shell-$((6*7))\n", "shell-42");
}

/// `popek run --restore DIR ARGS`, started with its standard streams piped.
fn spawn_restore(dir: &Path, args: &[&str]) -> std::process::Child {
    popek()
        .arg("run")
        .arg("--restore")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Restore `dir` without a command, type `input` and then `poweroff -f` into its shell: its
/// output must contain `expect`, and popek exit with 0.
fn shell_answers(dir: &Path, input: &[u8], expect: &str) {
    let mut child = spawn_restore(dir, &[]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    stdin.write_all(b"poweroff -f\n").unwrap();
    drop(stdin);
    // A guest that never powers off must fail the test, not hang the suite.
    let end = std::time::Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("the restored guest did not power off within 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert!(o.contains(expect), "stdout: {o}\nstderr: {e}");
    assert_eq!(out.status.code(), Some(0), "{e}");
}

/// `--stats`' line on the decode cache shared between restores: pages used from it and its
/// file.
fn shared_decode_line(stderr: &str) -> (u64, PathBuf) {
    let line = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("popek: decoded pages shared with other restores of the snapshot: ")
        })
        .unwrap_or_else(|| panic!("no shared decode line: {stderr}"));
    let used = line.split(' ').next().unwrap().parse().unwrap();
    let path = line.rsplit_once('(').unwrap().1.trim_end_matches(')');
    (used, PathBuf::from(path))
}

/// Restores of one snapshot that run at the same time with `--share-decode` share the
/// decoded pages of the code they all run: while one waits in its shell, two more run
/// commands with pages decoded for them by the others, and answer right; one without the
/// option shares nothing; the last to exit empties the shared cache.
#[test]
fn restores_running_at_once_share_decoded_code() {
    let dir = copy_of("shared-decode");
    let mut holder = spawn_restore(&dir, &["--share-decode"]);
    // A guest that hangs fails the test instead of hanging the suite.
    kill_after(&holder, Duration::from_secs(120));
    let mut stdin = holder.stdin.take().unwrap();
    let mut stdout = holder.stdout.take().unwrap();
    stdin.write_all(b"echo holder-$((6*7))\n").unwrap();
    read_until(&mut stdout, "holder-42");
    let mut files = Vec::new();
    for _ in 0..2 {
        let (o, e, s) = restore(
            &dir,
            &[
                "--share-decode",
                "--stats",
                "--",
                "sh",
                "-c",
                "echo $((6*7))",
            ],
        );
        assert_eq!((o.as_str(), s), ("42\n", 0), "{e}");
        let (used, file) = shared_decode_line(&e);
        assert!(used > 0, "no decoded page came from the shared cache: {e}");
        files.push(file);
    }
    assert_eq!(files[0], files[1], "one cache for the snapshot");
    assert!(
        std::fs::metadata(&files[0]).unwrap().len() > 0,
        "in use, the cache holds pages"
    );
    // A migration's destination has no snapshot to share.
    let (o, e, s) = restore(Path::new("tcp:127.0.0.1:1"), &["--share-decode"]);
    assert_eq!((o.as_str(), s), ("", 1), "{e}");
    assert_eq!(
        e,
        "popek: error: --share-decode shares the code of a snapshot directory's RAM, which a migrated machine has none of: drop --share-decode\n"
    );
    // A restore without the option shares nothing.
    let (o, e, s) = restore(&dir, &["--stats", "--", "sh", "-c", "echo $((6*7))"]);
    assert_eq!((o.as_str(), s), ("42\n", 0), "{e}");
    assert!(!e.contains("decoded pages shared"), "{e}");
    stdin.write_all(b"poweroff -f\n").unwrap();
    drop(stdin);
    let status = holder.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the first restore's exit");
    let left = std::fs::metadata(&files[0]).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "the last user empties the cache");
}

#[test]
fn smp_guest_restores_with_both_harts() {
    let dir = scratch("smp");
    create(&dir, &["--cpus", "2", "-m", "256M"]);
    let (o, e, s) = restore(
        &dir,
        &["--", "sh", "-c", "grep -c ^processor /proc/cpuinfo"],
    );
    assert_eq!((o.as_str(), s), ("2\n", 0), "{e}");
}

/// Copy a snapshot (sparse) to break it without touching the shared one.
fn copy_of(name: &str) -> PathBuf {
    let copy = scratch(name);
    let st = Command::new("cp")
        .arg("-r")
        .arg("--sparse=always")
        .arg(snapshot())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    copy
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let (o, e, s) = restore(dir, args);
    assert_eq!((s, o.as_str()), (1, ""), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("popek: error: "), "{e}");
    e
}

#[test]
fn damaged_and_foreign_snapshots_are_refused_in_one_line() {
    let missing = scratch("missing");
    let e = refused(&missing, &["--", "true"]);
    assert!(e.contains("no manifest.json: not a snapshot"), "{e}");

    let flipped = copy_of("flipped");
    let state = flipped.join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&state, &bytes).unwrap();
    let e = refused(&flipped, &["--", "true"]);
    assert!(e.contains("corrupt (checksum mismatch)"), "{e}");

    let short = copy_of("short");
    let state = short.join("state.bin");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() - 100]).unwrap();
    refused(&short, &["--", "true"]);

    let ram = copy_of("ram");
    std::fs::File::options()
        .write(true)
        .open(ram.join("ram.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = refused(&ram, &["--", "true"]);
    assert!(e.contains("ram.img holds 1048576 bytes"), "{e}");

    let unfinished = copy_of("unfinished");
    std::fs::write(unfinished.join("manifest.json"), b"").unwrap();
    let e = refused(&unfinished, &["--", "true"]);
    assert!(e.contains("its save did not finish"), "{e}");

    let foreign = copy_of("foreign");
    let m = std::fs::read_to_string(foreign.join("manifest.json")).unwrap();
    std::fs::write(
        foreign.join("manifest.json"),
        m.replace("\"format\": 1", "\"format\": 99"),
    )
    .unwrap();
    let e = refused(&foreign, &["--", "true"]);
    assert!(e.contains("its format is 99"), "{e}");

    // An older default guest's init read its command another way: typing this popek's line
    // would run something else, so the restore stops first.
    let older = copy_of("older");
    let m = std::fs::read_to_string(older.join("manifest.json")).unwrap();
    assert!(m.contains("popek.snapshot=2"), "{m}");
    std::fs::write(
        older.join("manifest.json"),
        m.replace("popek.snapshot=2", "popek.snapshot"),
    )
    .unwrap();
    let e = refused(&older, &["--", "true"]);
    assert!(
        e.contains("older default guest") && e.contains("create the snapshot again"),
        "{e}"
    );

    // The machine is the snapshot's: options that would change it are refused.
    let (_, e, s) = restore(snapshot(), &["-m", "1G", "--", "true"]);
    assert_eq!(s, 2, "{e}");
    assert!(e.contains("--memory") && e.contains("--restore"), "{e}");
    // So is a MAC address, even the default one (the guest read its own at boot).
    for mac in ["52:54:00:12:34:56", "52:54:00:00:00:07"] {
        let net = format!("user,mac={mac}");
        let e = refused(snapshot(), &["--net", &net, "--", "true"]);
        assert!(e.contains("drop mac= from --net"), "{e}");
    }

    // A snapshot popek cannot create is refused before the guest boots.
    let out = run_with_timeout(
        popek().args(["snapshot", "create", "/proc/popek-snapshot"]),
        Duration::from_secs(60),
    );
    let (o, e) = text(&out);
    assert_eq!((out.status.code(), o.as_str()), (Some(1), ""), "{e}");
    assert_eq!(
        e,
        "popek: error: cannot create the snapshot directory /proc/popek-snapshot: No such file or directory (os error 2) (give a path where popek may create a directory)\n"
    );
}

#[test]
fn a_changed_disk_is_refused() {
    let img = scratch("disk.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let dir = scratch("with-disk");
    create(&dir, &["--disk", img.to_str().unwrap()]);
    let (o, e, s) = restore(&dir, &["--", "sh", "-c", "head -c 4 /dev/vda"]);
    assert_eq!((o.as_str(), s), ("ZZZZ", 0), "{e}");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&img, vec![0x11u8; 1 << 20]).unwrap();
    let e = refused(&dir, &["--", "true"]);
    assert!(
        e.contains("disk.img changed since the snapshot was taken"),
        "{e}"
    );
}

/// A restored guest writes its disk copy-on-write: the image stays as the snapshot saw it,
/// so the snapshot restores again and clones never see each other's writes. `--write-disks`
/// writes in place (and then the snapshot no longer matches its disk). A machine whose disk is
/// copy-on-write is not saved: its writes would be lost.
#[test]
fn restored_disks_are_copy_on_write_unless_asked() {
    let img = scratch("cow-disk.img");
    let original = vec![0x5au8; 1 << 20];
    std::fs::write(&img, &original).unwrap();
    let dir = scratch("with-cow-disk");
    create(&dir, &["--disk", img.to_str().unwrap()]);
    let write = "printf AB | dd of=/dev/vda conv=notrunc 2>/dev/null; sync; head -c 4 /dev/vda";
    for _ in 0..2 {
        let (o, e, s) = restore(&dir, &["--", "sh", "-c", write]);
        assert_eq!((o.as_str(), s), ("ABZZ", 0), "{e}");
        assert_eq!(std::fs::read(&img).unwrap(), original, "the image changed");
    }
    // With a control socket too (such a machine cannot migrate, but it runs).
    let api = scratch("cow-disk.sock");
    let (o, e, s) = restore(
        &dir,
        &[
            "--api",
            api.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "head -c 4 /dev/vda",
        ],
    );
    assert_eq!(
        (o.as_str(), s),
        ("ZZZZ", 0),
        "a restore saw an earlier one's write: {e}"
    );

    let (o, e, s) = restore(&dir, &["--write-disks", "--", "sh", "-c", write]);
    assert_eq!((o.as_str(), s), ("ABZZ", 0), "{e}");
    assert_eq!(
        &std::fs::read(&img).unwrap()[..4],
        b"ABZZ",
        "--write-disks wrote nothing"
    );
    let e = refused(&dir, &["--", "true"]);
    assert!(e.contains("changed since the snapshot was taken"), "{e}");

    let cow = format!("{},cow", img.display());
    let out = run_with_timeout(
        popek()
            .args(["snapshot", "create"])
            .arg(scratch("of-a-cow-disk"))
            .args(["--disk", &cow]),
        LIMIT,
    );
    let (_, e) = text(&out);
    assert!(
        !out.status.success(),
        "saved a machine with a copy-on-write disk"
    );
    assert!(e.contains("is copy-on-write"), "{e}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `popek run --api SOCK ARGS -- sh -c SCRIPT`, wait for `ready_line` on its stdout,
/// migrate it to a new `popek run --restore tcp:...` and return (what the source printed, what
/// the destination printed, the destination's exit status).
fn migrate_midway(args: &[&str], script: &str, ready_line: &str) -> (String, String, i32) {
    guest();
    let port = free_port();
    let to = format!("tcp:127.0.0.1:{port}");
    let dest = popek()
        .args(["run", "--restore", &to])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api = scratch(&format!("migrate-{port}.sock"));
    let mut src = popek()
        .args(["run", "--api"])
        .arg(&api)
        .args(args)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut src_out = src.stdout.take().unwrap();
    let mut seen = read_until(&mut src_out, ready_line);
    let ctl = run_with_timeout(
        popek().arg("ctl").arg(&api).args(["migrate", &to]),
        Duration::from_secs(30),
    );
    // It waits for the end and says the machine moved.
    let moved = (
        format!("{{\"status\":\"migrated\",\"to\":\"{to}\"}}\n"),
        String::new(),
    );
    if text(&ctl) != moved {
        // What the source said (it has stopped, or is stopped now) explains why.
        let _ = src.kill();
        let src_done = src.wait_with_output().unwrap();
        panic!(
            "ctl migrate: {:?} (status {:?}); the source's stderr:\n{}",
            text(&ctl),
            ctl.status.code(),
            text(&src_done).1
        );
    }
    assert!(ctl.status.success());
    let src_done = src.wait_with_output().unwrap();
    {
        use std::io::Read;
        let mut rest = String::new();
        src_out.read_to_string(&mut rest).unwrap();
        seen.push_str(&rest);
    }
    let (_, src_err) = text(&src_done);
    assert_eq!(src_done.status.code(), Some(0), "{src_err}");
    assert!(src_err.contains("popek: migrated to"), "{src_err}");
    let dest_done = dest.wait_with_output().unwrap();
    let (dest_out, dest_err) = text(&dest_done);
    assert!(!dest_err.contains("panicked"), "{dest_err}");
    (seen, dest_out, dest_done.status.code().unwrap_or(-1))
}

/// A guest counting on its console, moved mid-count to another popek over loopback: every
/// number appears exactly once (the first ones from the source, the rest from the
/// destination), the destination exits with the guest's status and the source with 0.
#[test]
fn a_running_guest_migrates_over_tcp_and_keeps_counting() {
    let (src, dest, status) = migrate_midway(
        &[],
        "i=0; while [ $i -lt 40 ]; do echo n$i; i=$((i+1)); sleep 0.05; done; exit 5",
        "n3\n",
    );
    assert_eq!(status, 5);
    let expected: String = (0..40).map(|i| format!("n{i}\n")).collect();
    assert_eq!(
        format!("{src}{dest}"),
        expected,
        "source then destination output"
    );
    assert!(!dest.is_empty(), "the destination printed nothing");
}

/// Both harts of an SMP guest busy computing when it moves: the sums come out right on the
/// destination.
#[test]
fn an_smp_guest_migrates_with_both_harts_busy() {
    let script =
        "sum() { s=0; i=0; while [ $i -lt $1 ]; do s=$((s+i*i)); i=$((i+1)); done; echo $2=$s; }; \
                  echo started; sum 60000 a & sum 50000 b & wait";
    let (src, dest, status) = migrate_midway(&["--cpus", "2"], script, "started\n");
    assert_eq!(status, 0);
    let all = format!("{src}{dest}");
    let sq = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
    assert!(all.contains(&format!("a={}\n", sq(60000))), "{all}");
    assert!(all.contains(&format!("b={}\n", sq(50000))), "{all}");
    assert!(
        dest.contains('='),
        "the sums finished on the source already: {all}"
    );
}

/// A guest writing its disk record by record (each one synced) moves midway: the source lets
/// go of the image's lock when it stops, the destination takes it and goes on writing; the
/// image then holds every record, and nobody holds the lock any more.
#[test]
fn a_guest_migrates_with_its_disk_and_goes_on_writing_it() {
    let disk = scratch("migrate-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let script = "i=0; while [ $i -lt 30 ]; do \
                  echo rec$i | dd of=/dev/vda bs=512 seek=$i conv=notrunc,fsync 2>/dev/null || exit 9; \
                  echo w$i; i=$((i+1)); sleep 0.05; done; exit 6";
    let disk_arg = disk.to_str().unwrap();
    let (src, dest, status) = migrate_midway(&["--disk", disk_arg], script, "w3\n");
    assert_eq!(status, 6, "source printed {src:?}, destination {dest:?}");
    assert!(
        dest.contains("w29\n"),
        "the destination did not go on: {dest:?}"
    );
    let image = std::fs::read(&disk).unwrap();
    for i in 0..30 {
        let rec = format!("rec{i}\n");
        assert_eq!(
            &image[i * 512..i * 512 + rec.len()],
            rec.as_bytes(),
            "record {i} (source printed {src:?}, destination {dest:?})"
        );
    }
    let again = run_with_timeout(
        popek().args(["run", "--disk", disk_arg, "--", "true"]),
        Duration::from_secs(120),
    );
    assert!(again.status.success(), "{:?}", text(&again));
}

/// Nobody listening: the migration fails, the guest runs on where it was.
#[test]
fn a_failed_migration_leaves_the_guest_running() {
    guest();
    let api = scratch("nomigrate-api.sock");
    let src = popek()
        .args(["run", "--api"])
        .arg(&api)
        .args(["--", "sh", "-c", "sleep 3; echo still-here; exit 4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !api.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let to = format!("tcp:127.0.0.1:{}", free_port());
    let ctl = run_with_timeout(
        popek().arg("ctl").arg(&api).args(["migrate", &to]),
        Duration::from_secs(30),
    );
    // It waits for the end and says why it failed, in one line, with status 1.
    let (o, e) = text(&ctl);
    assert_eq!(ctl.status.code(), Some(1), "{o}{e}");
    assert!(
        o.starts_with(&format!("{{\"error\":\"migration to {to} failed: "))
            && o.ends_with("; the machine runs on here\"}\n")
            && o.lines().count() == 1,
        "{o}{e}"
    );
    let out = src.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert_eq!(
        (o.as_str(), out.status.code()),
        ("still-here\n", Some(4)),
        "{e}"
    );
    assert!(e.contains("migration to") && e.contains("failed"), "{e}");
}

/// Ctrl-A s on an interactive console saves the running machine and it runs on; the save
/// restores with the guest's files as they were.
#[test]
fn ctrl_a_s_saves_a_running_machine() {
    guest();
    let dir = scratch("ctrl-a-s");
    // On a terminal, popek reads Ctrl-A escapes.
    let mut child = popek_on_a_terminal(&format!("run --save-to {}", dir.display()));
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "popek-guest: ready");
    input
        .write_all(b"echo saved-state > /root/m; echo written-$((1+1))\r")
        .unwrap();
    read_until(&mut output, "written-2");
    input.write_all(b"\x01s").unwrap();
    read_until(&mut output, "popek: saved to");
    input.write_all(b"echo still-$((2+2))\r").unwrap();
    read_until(&mut output, "still-4");
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());

    shell_answers(&dir, b"cat /root/m\n", "saved-state");
}

/// The default guest on a terminal with a 1 MiB disk `NAME.img` filled with `fill` and
/// `--save-to` the snapshot directory `NAME-snapshot`, once ready: (image, snapshot directory,
/// popek, its input, its output).
fn saving_machine(
    name: &str,
    fill: u8,
) -> (
    PathBuf,
    PathBuf,
    std::process::Child,
    std::process::ChildStdin,
    std::process::ChildStdout,
) {
    guest();
    let img = scratch(&format!("{name}.img"));
    std::fs::write(&img, vec![fill; 1 << 20]).unwrap();
    let dir = scratch(&format!("{name}-snapshot"));
    let mut child = popek_on_a_terminal(&format!(
        "run --disk {} --save-to {}",
        img.display(),
        dir.display()
    ));
    let input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "popek-guest: ready");
    (img, dir, child, input, output)
}

/// A machine saved with Ctrl-A s runs on and goes on writing its disk; the snapshot keeps a
/// copy of the disk as it was at the save, so it restores (again and again) with the guest's
/// disk and memory in agreement.
#[test]
fn ctrl_a_s_keeps_the_disk_as_it_was_at_the_save() {
    let (img, dir, mut child, mut input, mut output) = saving_machine("saved-disk", 0x5a);
    let write = |input: &mut std::process::ChildStdin, what: &str, mark: u32| {
        input
            .write_all(
                format!(
                    "printf {what} | dd of=/dev/vda conv=notrunc 2>/dev/null; sync; echo w-$((0+{mark}))\r"
                )
                .as_bytes(),
            )
            .unwrap();
    };
    write(&mut input, "one", 1);
    read_until(&mut output, "w-1");
    input.write_all(b"\x01s").unwrap();
    read_until(&mut output, "popek: saved to");
    write(&mut input, "two", 2);
    read_until(&mut output, "w-2");
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        &std::fs::read(&img).unwrap()[..4],
        b"twoZ",
        "the machine ran on"
    );

    for _ in 0..2 {
        shell_answers(&dir, b"head -c 4 /dev/vda; echo\n", "oneZ");
    }
    assert_eq!(&std::fs::read(&img).unwrap()[..4], b"twoZ");
    let copy = std::fs::read(dir.join("disk-0.img")).unwrap();
    assert_eq!(
        (&copy[..4], copy.len()),
        (&b"oneZ"[..], 1 << 20),
        "the snapshot's copy"
    );
}

/// Ctrl-A s in the middle of a stream of disk writes: the restored guest finishes the stream
/// and its disk holds exactly what the whole stream wrote. Each slot is written once, so a
/// slot written before the save survives only if the disk copy saved with the snapshot and
/// the page cache saved in RAM agree (the check reads the disk with the caches dropped).
#[test]
fn a_save_during_disk_writes_restores_consistently() {
    let (_, dir, mut child, mut input, mut output) = saving_machine("busy-disk", 0);
    // 800 writes of 8 bytes: slot i-1 holds i.
    input
        .write_all(
            b"(i=0; while [ $i -lt 800 ]; do i=$((i+1)); printf %08d $i | \
              dd of=/dev/vda bs=8 seek=$((i-1)) conv=notrunc 2>/dev/null; \
              [ $i = 100 ] && echo part-$((50+50)); done; sync; echo loop-done) &\r",
        )
        .unwrap();
    read_until(&mut output, "part-100");
    input.write_all(b"\x01s").unwrap();
    let seen = read_until(&mut output, "popek: saved to");
    assert!(
        !seen.contains("loop-done"),
        "the writes ended before the save"
    );
    read_until(&mut output, "loop-done");
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());

    let check = b"wait; sync; echo 3 > /proc/sys/vm/drop_caches; \
        j=1; while [ $j -le 800 ]; do printf %08d $j; j=$((j+1)); done > /tmp/want; \
        dd if=/dev/vda bs=6400 count=1 2>/dev/null > /tmp/got; cmp /tmp/want /tmp/got && echo disk-$((40+2))\n";
    shell_answers(&dir, check, "disk-42");
}

/// A host TCP server for the guest: each line any connection sends, as "CONNECTION:LINE" (the
/// connections numbered from 0 in the order accepted). Returns its port.
fn line_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(format!("{n}:{line}")).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// The next line from `lines` that starts with `prefix` (within a minute).
fn line_starting(lines: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting {prefix:?} from the guest: {e}"),
        }
    }
}

/// Ctrl-A s while the guest has a TCP connection open through the user network. The machine
/// runs on with the connection working. The connection's host side belonged to the saving
/// process, so the restored guest gets a reset at its next send (not minutes of
/// retransmissions), and its new connections work.
#[test]
fn a_save_with_a_tcp_connection_open_restores_with_it_reset() {
    guest();
    let (port, lines) = line_server();
    let dir = scratch("open-connection");
    let mut child = popek_on_a_terminal(&format!("run --net user --save-to {}", dir.display()));
    kill_after(&child, Duration::from_secs(240));
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "popek-guest: ready");
    let net =
        "ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2";
    input
        .write_all(
            format!(
                "{net}; (i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done | \
                 nc 10.0.2.2 {port}; echo nc-ended-$((40+2))) &\r"
            )
            .as_bytes(),
        )
        .unwrap();
    line_starting(&lines, "0:tick-3");
    input.write_all(b"\x01s").unwrap();
    read_until(&mut output, "popek: saved to");
    // Running on: the connection still carries ticks after the save.
    let after_save: u32 = line_starting(&lines, "0:tick-")[7..].parse().unwrap();
    let later = format!("0:tick-{}", after_save + 3);
    line_starting(&lines, &later);
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());

    let mut child = popek_on_a_terminal(&format!("run --restore {}", dir.display()));
    kill_after(&child, Duration::from_secs(240));
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "nc-ended-42");
    input
        .write_all(format!("echo again | nc 10.0.2.2 {port}; echo sent-$((1+1))\r").as_bytes())
        .unwrap();
    read_until(&mut output, "sent-2");
    assert_eq!(
        line_starting(&lines, "1:"),
        "1:again",
        "a new connection after the restore"
    );
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());
}

/// A bare-metal program that signals ready (the boot timer), prints `after`, keeps busy for
/// `busy_ms` of guest time (mtime, 10 MHz), prints `counted`, then waits for a timer interrupt
/// 20 ms on and prints `woke` before it exits with status 0 (the test finisher).
fn ready_then_work(name: &str, busy_ms: u64) -> PathBuf {
    let ticks = busy_ms * 10_000;
    let source = format!(
        r#"
.globl _start
_start:
    la sp, stack_top
    li t0, 0x102000
    li t1, 1
    sb t1, 0(t0)
    la a0, after
    call puts
    li t0, 0x200bff8
    ld s0, 0(t0)
    li t1, {ticks}
    add s0, s0, t1
1:  ld t1, 0(t0)
    bltu t1, s0, 1b
    la a0, counted
    call puts
    li t0, 0x200bff8
    ld t1, 0(t0)
    li t2, 200000
    add t1, t1, t2
    li t0, 0x2004000
    sd t1, 0(t0)
    li t0, 0x80
    csrs mie, t0
2:  wfi
    csrr t0, mip
    andi t0, t0, 0x80
    beqz t0, 2b
    la a0, woke
    call puts
    li t0, 0x100000
    li t1, 0x5555
    sw t1, 0(t0)
3:  j 3b
puts:
    li t0, 0x10000000
4:  lbu t1, 0(a0)
    beqz t1, 5f
    sb t1, 0(t0)
    addi a0, a0, 1
    j 4b
5:  ret
after: .asciz "after\n"
counted: .asciz "counted\n"
woke: .asciz "woke\n"
.align 4
    .space 256
stack_top:
"#
    );
    build_asm(name, &source, 0x8000_0000)
}

/// `popek snapshot create` of a bare-metal program; its stdout (the UART before the save).
fn create_bare(dir: &Path, elf: &Path) -> String {
    let out = run_with_timeout(
        popek()
            .args(["snapshot", "create", "--memory", "16M"])
            .arg(dir)
            .arg("--bios")
            .arg(elf),
        Duration::from_secs(60),
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "snapshot create failed: {o}\n{e}");
    o
}

/// The save waits for the guest to go idle after its ready signal: what it did in between
/// is in the snapshot, and no restore does it again (the default guest's init: the program
/// that signalled exits, the shell reaches the read that waits for the command).
#[test]
fn a_snapshot_is_saved_once_the_ready_guest_is_idle() {
    let elf = ready_then_work("ready_then_idle", 50);
    let dir = scratch("ready_then_idle");
    let before = create_bare(&dir, &elf);
    assert!(
        before.contains("counted"),
        "saved before the work after the ready signal was done: {before:?}"
    );
    let (o, e, status) = restore(&dir, &[]);
    assert_eq!((o.as_str(), status), ("woke\n", 0), "stderr: {e}");
}

/// A guest that stays busy after its ready signal is saved anyway, half a second on, and
/// the restore finishes its work.
#[test]
fn a_guest_busy_after_its_ready_signal_is_saved_anyway() {
    let elf = ready_then_work("ready_then_busy", 1500);
    let dir = scratch("ready_then_busy");
    let before = create_bare(&dir, &elf);
    assert_eq!(before, "after\n", "the save waited for the work to end");
    let (o, e, status) = restore(&dir, &[]);
    assert_eq!((o.as_str(), status), ("counted\nwoke\n", 0), "stderr: {e}");
}
