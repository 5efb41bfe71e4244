//! `popek image`: the guests popek boots (and the root popek exec's tests use), built by the
//! popek command itself. The builders (bash, apt and debootstrap, stage 2 of the Debian system
//! inside popek) are compiled into the binary and unpacked into the cache on use, so an
//! installed `popek` needs nothing from its source tree; guests/build-* in the source tree are
//! the same scripts.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The builder files, at their paths under guests/.
const FILES: &[(&str, &str)] = &[
    (
        "build-default",
        include_str!("../../../guests/build-default"),
    ),
    ("build-debian", include_str!("../../../guests/build-debian")),
    (
        "build-exec-root",
        include_str!("../../../guests/build-exec-root"),
    ),
    (
        "lib/apt-riscv64.sh",
        include_str!("../../../guests/lib/apt-riscv64.sh"),
    ),
    ("default/init", include_str!("../../../guests/default/init")),
    (
        "debian/stage2",
        include_str!("../../../guests/debian/stage2"),
    ),
    ("debian/setup", include_str!("../../../guests/debian/setup")),
];

/// A guest image popek can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageName {
    /// Debian's stock riscv64 kernel booting to a busybox shell (`popek run`): ~120 MB of
    /// packages, a minute.
    Default,
    /// A whole Debian system on a disk image (`popek run debian`): stage 2 runs inside popek,
    /// about 10 minutes on a 2-core machine (with the JIT).
    Debian,
    /// A riscv64 Debian root for `popek exec --root` (busybox, lua, sqlite3, python3).
    ExecRoot,
}

impl ImageName {
    fn dir_name(self) -> &'static str {
        match self {
            ImageName::Default => "guests/default",
            ImageName::Debian => "guests/debian",
            ImageName::ExecRoot => "roots/trixie-exec",
        }
    }

    fn builder(self) -> &'static str {
        match self {
            ImageName::Default => "build-default",
            ImageName::Debian => "build-debian",
            ImageName::ExecRoot => "build-exec-root",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            ImageName::Default => "POPEK_GUEST_DIR",
            ImageName::Debian => "POPEK_GUEST_DIR_DEBIAN",
            ImageName::ExecRoot => "POPEK_EXEC_ROOT",
        }
    }

    /// What building it costs, for the line popek prints before it starts.
    pub fn cost(self) -> &'static str {
        match self {
            ImageName::Default => "about 120 MB of Debian packages, a minute",
            ImageName::Debian => {
                "about 200 MB of Debian packages; its second stage runs inside popek, \
                 about 10 minutes on a 2-core machine"
            }
            ImageName::ExecRoot => "about 60 MB of Debian packages, a minute",
        }
    }

    const ALL: [ImageName; 3] = [ImageName::Default, ImageName::Debian, ImageName::ExecRoot];
}

/// Arguments of `popek image`.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCmd {
    /// List the images and whether they are built.
    List,
    /// Build an image (or check that it is up to date).
    Build {
        /// Which one.
        #[arg(value_enum)]
        name: ImageName,
        /// Build it again even if it is up to date.
        #[arg(long, short)]
        force: bool,
    },
    /// Delete a built image.
    Rm {
        /// Which one.
        #[arg(value_enum)]
        name: ImageName,
    },
}

/// `$XDG_CACHE_HOME/popek`, else `~/.cache/popek` (the builders' own rule).
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("popek")
}

/// Where an image lives (its builder's environment variable overrides the cache).
pub fn image_dir(name: ImageName) -> PathBuf {
    std::env::var_os(name.env_var())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join(name.dir_name()))
}

/// Whether the image is built (builders write VERSION last).
pub fn is_built(name: ImageName) -> bool {
    image_dir(name).join("VERSION").is_file()
}

/// Make sure `name` is built, building it now (after saying so) if it is missing from the
/// cache. An image directory the user named with an environment variable is never built
/// implicitly: a missing one there is an error naming the command that builds it.
pub fn ensure(name: ImageName) -> anyhow::Result<PathBuf> {
    let dir = image_dir(name);
    if is_built(name) {
        return Ok(dir);
    }
    let label = label(name);
    if std::env::var_os(name.env_var()).is_some() {
        anyhow::bail!(
            "the {label} guest is not built in {} ({} names it): run `popek image build {label}`",
            dir.display(),
            name.env_var()
        );
    }
    eprintln!(
        "popek: the {label} guest is not built yet: building it now into {} ({})",
        dir.display(),
        name.cost()
    );
    build(name, false)?;
    Ok(dir)
}

/// The name `popek image` takes.
pub fn label(name: ImageName) -> &'static str {
    match name {
        ImageName::Default => "default",
        ImageName::Debian => "debian",
        ImageName::ExecRoot => "exec-root",
    }
}

/// Run `popek image ...`.
pub fn run(cmd: ImageCmd) -> anyhow::Result<u8> {
    match cmd {
        ImageCmd::List => {
            for name in ImageName::ALL {
                let dir = image_dir(name);
                let state = match std::fs::read_to_string(dir.join("VERSION")) {
                    Ok(v) => format!("built, {} MiB{}", du(&dir) >> 20, version_note(&v)),
                    Err(_) => "not built".to_string(),
                };
                println!("{:<10} {state:<40} {}", label(name), dir.display());
            }
            Ok(0)
        }
        ImageCmd::Build { name, force } => {
            build(name, force)?;
            Ok(0)
        }
        ImageCmd::Rm { name } => {
            let dir = image_dir(name);
            if !dir.exists() {
                println!("{} is not built", dir.display());
                return Ok(0);
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            println!("removed {}", dir.display());
            Ok(0)
        }
    }
}

/// The kernel named in a VERSION line, if any.
fn version_note(version: &str) -> String {
    version
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kernel="))
        .map(|k| format!(", {}", k.split('=').next().unwrap_or(k)))
        .unwrap_or_default()
}

/// Bytes the files under `dir` take on disk.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Unpack the builders into the cache (once per popek build: the directory is named by a hash
/// of their contents) and return the guests/ directory.
fn unpack_builders() -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    FILES.hash(&mut h);
    let dir = cache_root()
        .join("builders")
        .join(format!("{:016x}", h.finish()));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    for (path, text) in FILES {
        let p = tmp.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(tmp.join(".complete"), "")?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another popek unpacked the same builders meanwhile.
        Err(_) if dir.join(".complete").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("installing the builders in {}", dir.display())),
    }
}

/// Build `name` (or check it is up to date), with progress bars on a terminal and the
/// builder's own lines otherwise.
pub fn build(name: ImageName, force: bool) -> anyhow::Result<()> {
    let guests = unpack_builders()?;
    let exe = std::env::current_exe().context("finding popek's own executable")?;
    let mut cmd = Command::new("bash");
    cmd.arg(guests.join(name.builder()))
        .env("POPEK", &exe)
        .stdin(Stdio::null());
    if force {
        cmd.arg("--force");
    }
    let tty = std::io::stderr().is_terminal();
    if !tty {
        let status = cmd.status().context("running bash")?;
        return check(name, status);
    }
    // On a terminal: one bar for the builder's steps, one for stage 2's packages.
    cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    let mut child = cmd.spawn().context("running bash")?;
    let stderr = child.stderr.take().context("the builder's output")?;
    let mut progress = Progress::new();
    for line in BufReader::new(stderr).lines() {
        progress.line(&line.unwrap_or_default());
    }
    let status = child.wait().context("waiting for the builder")?;
    progress.finish();
    check(name, status)
}

fn check(name: ImageName, status: std::process::ExitStatus) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        anyhow::bail!(
            "building the {0} image failed ({status}); its messages are above \
             (`popek image build {0} --force` starts over)",
            label(name)
        )
    }
}

/// Progress bars fed by the builder's lines: `[n/m] step`, stage 1's "N packages unpacked",
/// and stage 2's "I: Unpacking"/"I: Configuring" lines (two per package).
struct Progress {
    bars: MultiProgress,
    steps: ProgressBar,
    packages: Option<ProgressBar>,
    total_packages: u64,
}

impl Progress {
    fn new() -> Progress {
        let bars = MultiProgress::new();
        let steps = bars.add(ProgressBar::new(1));
        steps.set_style(
            ProgressStyle::with_template("[{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        steps.enable_steady_tick(std::time::Duration::from_secs(1));
        Progress {
            bars,
            steps,
            packages: None,
            total_packages: 0,
        }
    }

    fn line(&mut self, line: &str) {
        let t = line.trim();
        if let Some((n, m, what)) = parse_step(t) {
            self.steps.set_length(m);
            self.steps.set_position(n);
            self.steps
                .set_message(what.trim_end_matches('…').to_string());
        } else if let Some(n) = packages_unpacked(t) {
            self.total_packages = n;
        } else if let Some(what) = package_step(t) {
            let total = 2 * self.total_packages.max(1);
            let bars = &self.bars;
            let bar = self.packages.get_or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template("      stage 2 {bar:30} {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            });
            bar.inc(1);
            bar.set_message(what.to_string());
        } else if t.starts_with("build-") {
            // The builders' warnings and errors, and their closing summary.
            let _ = self.bars.println(t);
        }
    }

    fn finish(&mut self) {
        if let Some(p) = &self.packages {
            p.finish_and_clear();
        }
        self.steps.finish_and_clear();
    }
}

/// "118 packages unpacked (205 MiB) in 21s" → 118.
fn packages_unpacked(line: &str) -> Option<u64> {
    let (n, _) = line.split_once(" packages unpacked")?;
    n.trim().parse().ok()
}

/// "popek-stage2: I: Configuring sed..." → "Configuring sed".
fn package_step(line: &str) -> Option<&str> {
    let (_, what) = line.split_once("I: ")?;
    (what.starts_with("Unpacking ") || what.starts_with("Configuring "))
        .then(|| what.trim_end_matches("..."))
}

/// `[n/m] what` → (n, m, what).
fn parse_step(line: &str) -> Option<(u64, u64, &str)> {
    let rest = line.strip_prefix('[')?;
    let (nm, what) = rest.split_once("] ")?;
    let (n, m) = nm.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_step("[4/6] stage 2 in popek…"),
            Some((4, 6, "stage 2 in popek…"))
        );
        assert_eq!(parse_step("      118 packages unpacked"), None);
        assert_eq!(
            packages_unpacked("118 packages unpacked (205 MiB) in 21s"),
            Some(118)
        );
        assert_eq!(
            package_step("popek-stage2: I: Configuring sed..."),
            Some("Configuring sed")
        );
        assert_eq!(package_step("I: Installing core packages..."), None);
    }

    #[test]
    fn every_builder_file_is_embedded() {
        let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests");
        for (path, text) in FILES {
            assert_eq!(
                std::fs::read_to_string(guests.join(path)).unwrap(),
                *text,
                "{path}"
            );
        }
        for name in ImageName::ALL {
            assert!(FILES.iter().any(|(p, _)| *p == name.builder()));
        }
    }
}
