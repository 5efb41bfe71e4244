//! The jail's layers tried for real, each in a child process (this test program run again with
//! POPEK_JAIL_CHILD set): a seccomp filter cannot be taken off a process, so the parent only
//! watches what happens to its children. A plain `main`, not libtest: a libtest child would
//! start threads of its own before the filter is in place.

use std::process::{Command, Output};

use popek_jail::{FsRules, ThreadKind};

const CHILD: &str = "POPEK_JAIL_CHILD";

/// What a child's output must show.
type Check = fn(&Output) -> Result<(), String>;

fn main() {
    if let Ok(case) = std::env::var(CHILD) {
        child(&case);
        return;
    }
    let cases: &[(&str, Check)] = &[
        ("console-open", |o| {
            expect_stopped(
                o,
                "host syscall 257 (openat) is not allowed on a console thread",
            )
        }),
        ("vmm-spawn-process", |o| {
            expect_stopped(o, "(clone) is not allowed on a vCPU/device thread")
        }),
        ("vmm-threads", |o| expect_out(o, "thread ran\n")),
        ("exec-socket", |o| {
            expect_stopped(
                o,
                "host syscall 41 (socket) is not allowed on a process-VM thread",
            )
        }),
        ("landlock", |o| {
            let out = String::from_utf8_lossy(&o.stdout);
            if out.starts_with("status: Full\n") {
                expect_out(
                    o,
                    "status: Full\ninside: ok\noutside: Permission denied\n\
                     signal parent: Operation not permitted\n",
                )
            } else {
                // A kernel without Landlock ABI 7 enforces less; say so rather than pass quietly.
                println!("note: this kernel does not fully enforce Landlock ABI 7: {out}");
                expect_out(o, &out)
            }
        }),
    ];
    let mut failed = 0;
    for (case, check) in cases {
        let out = Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD, case)
            .output()
            .expect("running the child");
        match check(&out) {
            Ok(()) => println!("test {case} ... ok"),
            Err(why) => {
                println!("test {case} ... FAILED: {why}");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", cases.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn expect_stopped(o: &Output, what: &str) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!("popek: sandbox: {what}");
    if o.status.code() == Some(159) && err.contains(what) && err.lines().count() == 1 {
        Ok(())
    } else {
        Err(format!(
            "want status 159 and one line with {want:?}, got {:?}: {err}",
            o.status
        ))
    }
}

fn expect_out(o: &Output, want: &str) -> Result<(), String> {
    let out = String::from_utf8_lossy(&o.stdout);
    if o.status.success() && out == want {
        Ok(())
    } else {
        Err(format!(
            "want {want:?}, got {:?} {out:?} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}

fn child(case: &str) {
    match case {
        "console-open" => {
            popek_jail::restrict_thread(ThreadKind::Console).unwrap();
            let _ = std::fs::File::open("/etc/hostname");
        }
        "vmm-spawn-process" => {
            popek_jail::restrict_thread(ThreadKind::Vmm).unwrap();
            // SAFETY: fork in a single-threaded process; the filter stops it before it returns.
            unsafe { libc::fork() };
        }
        "vmm-threads" => {
            popek_jail::restrict_thread(ThreadKind::Vmm).unwrap();
            std::thread::spawn(|| println!("thread ran"))
                .join()
                .unwrap();
            return;
        }
        "exec-socket" => {
            popek_jail::restrict_thread(ThreadKind::Exec { allow_net: false }).unwrap();
            let _ = std::net::UdpSocket::bind("127.0.0.1:0");
        }
        "landlock" => {
            let dir = std::env::temp_dir().join(format!("popek-jail-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), "x").unwrap();
            let rules = FsRules {
                trees: vec![dir.clone()],
                scoped: true,
                ..FsRules::default()
            };
            println!("status: {:?}", rules.apply().unwrap());
            println!("inside: {}", outcome(std::fs::read(dir.join("f"))));
            println!("outside: {}", outcome(std::fs::read("/etc/hostname")));
            // SAFETY: getppid and kill with signal 0 only check.
            let r = unsafe { libc::kill(libc::getppid(), 0) };
            let e = std::io::Error::last_os_error();
            println!(
                "signal parent: {}",
                if r == 0 {
                    "ok".into()
                } else {
                    outcome::<()>(Err(e))
                }
            );
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        _ => panic!("unknown case {case}"),
    }
    println!("not stopped");
}
