//! `popek image` against a private cache directory, and a copy of the popek binary outside the
//! source tree booting the default guest it built (what `cargo install` gives a user).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The shared apt cache (downloaded .debs) of the default guest's builder, so the private
/// build below downloads nothing new.
fn shared_apt_dir() -> PathBuf {
    guest(); // builds the default guest (and so fills the apt cache) if needed
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("popek/apt/trixie-riscv64")
}

fn popek_in(exe: &Path, cache: &Path, args: &[&str], limit: u64) -> (String, String, i32) {
    let mut c = Command::new(exe);
    c.args(args)
        .env("XDG_CACHE_HOME", cache)
        .env("POPEK_APT_DIR", shared_apt_dir())
        .env_remove("POPEK_GUEST_DIR")
        .env_remove("POPEK_GUEST_DIR_DEBIAN")
        .env_remove("POPEK_EXEC_ROOT")
        .current_dir(cache);
    let out = run_with_timeout(&mut c, Duration::from_secs(limit));
    let (o, e) = text(&out);
    (o, e, out.status.code().unwrap_or(-1))
}

#[test]
fn image_list_build_run_and_remove_in_a_private_cache() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-test");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    // A copy of popek outside the source tree: it has to carry its builders itself.
    let exe = dir.join("popek");
    std::fs::copy(env!("CARGO_BIN_EXE_popek"), &exe).unwrap();

    let (out, err, status) = popek_in(&exe, &cache, &["image", "list"], 30);
    assert_eq!(status, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, name) in lines.iter().zip(["default", "debian", "exec-root"]) {
        assert!(
            line.starts_with(name) && line.contains("not built"),
            "{out}"
        );
        assert!(line.contains(cache.to_str().unwrap()), "{out}");
    }

    let (_, err, status) = popek_in(&exe, &cache, &["image", "build", "default"], 600);
    assert_eq!(status, 0, "{err}");
    let default = cache.join("popek/guests/default");
    for f in ["Image", "initramfs.cpio.gz", "fw_dynamic.bin", "VERSION"] {
        assert!(default.join(f).is_file(), "{f} missing: {err}");
    }
    let (out, _, _) = popek_in(&exe, &cache, &["image", "list"], 30);
    assert!(out.lines().next().unwrap().contains("built, "), "{out}");

    let (out, err, status) = popek_in(&exe, &cache, &["run", "--", "echo", "hello"], 300);
    assert_eq!((out.as_str(), status), ("hello\n", 0), "{err}");

    let (_, err, status) = popek_in(&exe, &cache, &["image", "rm", "default"], 30);
    assert_eq!(status, 0, "{err}");
    assert!(!default.exists());
    let (out, _, _) = popek_in(&exe, &cache, &["image", "list"], 30);
    assert!(out.lines().next().unwrap().contains("not built"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_directory_named_by_the_user_is_not_built_implicitly() {
    let out = run_with_timeout(
        popek()
            .args(["run", "debian", "--", "true"])
            .env("POPEK_GUEST_DIR_DEBIAN", "/nonexistent/debian"),
        Duration::from_secs(30),
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err,
        "popek: error: the debian guest is not built in /nonexistent/debian \
         (POPEK_GUEST_DIR_DEBIAN names it): run `popek image build debian`\n"
    );
}
