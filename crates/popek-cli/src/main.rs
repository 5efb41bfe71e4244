//! `popek`: run RISC-V machines and programs on any x86_64 Linux host.

mod exec;
mod guest;
mod image;
mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use popek_board::console::RawTerminal;
use popek_board::size::parse_size;
use popek_board::{
    parse_mac, DiskConfig, Machine, MachineConfig, NetBackendConfig, NetConfig, RunOutcome,
    VsockConfig, DEFAULT_MAC,
};

/// `--engine` of `popek run` and `popek exec`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The interpreter.
    Interp,
    /// The JIT (RISC-V to x86-64), with the interpreter for what it does not translate.
    Jit,
    /// Every translated block on the JIT and then on the interpreter, stopping at the first
    /// difference (slow: for finding JIT bugs).
    Verify,
}

/// `--engine`, `--jit-cache` and `--jit-hot`, shared by `popek run` and `popek exec`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct EngineArgs {
    /// What runs guest code: `jit` (the default on x86-64 Linux hosts) translates RISC-V to
    /// x86-64 and hands what it does not translate to the interpreter; `interp` interprets
    /// everything; `verify` runs every translated block on both and stops at the first
    /// difference with both states printed (slow; use one hart).
    #[arg(long, value_enum, default_value_t = Engine::DEFAULT)]
    engine: Engine,

    /// Size of the JIT's code cache, per hart (or guest thread), e.g. 8M; emptied whole when
    /// full. From 64K to 1G.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_jit_cache)]
    jit_cache: usize,

    /// Translate a block when it starts for the Nth time (1: at once; at most 65535); until
    /// then the interpreter runs it, which is cheaper for code that runs only a few times.
    #[arg(long, value_name = "N", default_value_t = popek_jit::EngineConfig::DEFAULT_HOT,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    jit_hot: u32,
}

impl EngineArgs {
    /// What the VMs take.
    pub(crate) fn config(&self) -> popek_jit::EngineConfig {
        popek_jit::EngineConfig {
            kind: self.engine.into(),
            code_bytes: self.jit_cache,
            hot: self.jit_hot,
        }
    }
}

fn parse_jit_cache(s: &str) -> Result<usize, String> {
    use popek_jit::EngineConfig as C;
    let n = parse_size(s).map_err(|e| e.to_string())?;
    if n < C::MIN_CODE_BYTES as u64 || n > C::MAX_CODE_BYTES as u64 {
        return Err("the JIT code cache must be from 64K to 1G".into());
    }
    Ok(n as usize)
}

impl Engine {
    /// The JIT where there is one (x86-64 hosts); the interpreter elsewhere.
    pub(crate) const DEFAULT: Engine = if cfg!(target_arch = "x86_64") {
        Engine::Jit
    } else {
        Engine::Interp
    };
}

impl From<Engine> for popek_jit::EngineKind {
    fn from(e: Engine) -> popek_jit::EngineKind {
        match e {
            Engine::Interp => popek_jit::EngineKind::Interp,
            Engine::Jit => popek_jit::EngineKind::Jit,
            Engine::Verify => popek_jit::EngineKind::Verify,
        }
    }
}

/// popek: an efficient, isolated duplicate of a RISC-V machine
#[derive(Parser, Debug)]
#[command(name = "popek", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a 64-bit RISC-V `virt` machine (same memory map as QEMU's `-M virt`).
    ///
    /// With no image options, boots the default guest (Debian's riscv64 kernel and a busybox
    /// initramfs, built by guests/build-default) to a shell; `popek run -- CMD ARGS...` runs CMD in
    /// it instead and exits with its status. Leave the console with `poweroff` or Ctrl-A x.
    ///
    /// With --bios alone, runs a bare-metal program in M-mode from the start of RAM, exactly as
    /// `qemu-system-riscv64 -M virt -bios prog.elf -nographic` would; popek exits with the status
    /// the program writes to the test finisher.
    Run(RunArgs),

    /// Run one riscv64 Linux program (static or dynamic ELF) in user mode, like qemu-riscv64 but
    /// sandboxed: every path it uses resolves inside --root, and sockets need --allow-net.
    Exec(exec::ExecArgs),

    /// Build, list and remove the guest images `popek run` boots (kept in ~/.cache/popek).
    #[command(subcommand)]
    Image(image::ImageCmd),

    /// Save a booted machine to a directory, to start it again in milliseconds with
    /// `popek run --restore DIR`.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),

    /// Talk to a running `popek run --api PATH`: print the machine's status, pause it, resume
    /// it, shut it down (popek then exits with status 0) or migrate it to another popek
    /// (`migrate tcp:HOST:PORT`). Prints the JSON answer.
    Ctl(CtlArgs),
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// The API socket given to `popek run --api`.
    #[arg(value_name = "PATH")]
    socket: PathBuf,

    /// What to do.
    #[arg(value_name = "ACTION", value_parser = ["status", "pause", "resume", "shutdown", "migrate"])]
    action: String,

    /// With `migrate`: the destination, tcp:HOST:PORT, where `popek run --restore
    /// tcp:HOST:PORT` listens.
    #[arg(value_name = "TO")]
    to: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// A prepared guest to boot instead of --kernel/--bios: `default` (Debian's kernel and a
    /// busybox shell, from guests/build-default) or `debian` (a whole Debian system on a disk,
    /// from guests/build-debian: systemd, a login on the console, the user network).
    #[arg(value_name = "GUEST", value_parser = ["default", "debian"], conflicts_with_all = ["kernel", "bios"])]
    guest: Option<String>,

    /// Firmware (e.g. OpenSBI's fw_dynamic.bin) or a bare-metal program: a RISC-V ELF (loaded by
    /// physical address) or a flat binary (loaded at 0x80000000).
    #[arg(long, value_name = "FILE")]
    bios: Option<PathBuf>,

    /// Linux kernel Image to boot (uncompressed, as Debian's linux-image-riscv64 ships it).
    #[arg(long, value_name = "IMAGE")]
    kernel: Option<PathBuf>,

    /// Initial RAM disk for the kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    append: Option<String>,

    /// Guest RAM size, e.g. 512M or 2G; a bare number is MiB, as with QEMU [default: 128M for --bios alone, 512M for Linux].
    #[arg(long, short = 'm', value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,

    /// Number of harts.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u32,

    /// Attach a raw disk image as a virtio-blk disk (repeatable; the first is the guest's
    /// /dev/vda). Append ,readonly to refuse the guest's writes.
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<DiskConfig>,

    /// Give the guest a virtio-net card: `user` (popek's user-mode network: NAT, DHCP, DNS; no
    /// root needed) or `tap=NAME` (a host tap interface); `,mac=52:54:00:..` sets its address.
    #[arg(long, value_name = "user|tap=NAME[,mac=MAC]", value_parser = parse_net)]
    net: Option<NetArg>,

    /// Forward a host TCP port to the guest, as docker does: HOST:GUEST or ADDR:HOST:GUEST
    /// (repeatable; implies --net user).
    #[arg(long, short = 'p', value_name = "HOST:GUEST")]
    publish: Vec<popek_usernet::Publish>,

    /// Give the guest a virtio-vsock device whose host side is the unix socket PATH: host
    /// clients connect to PATH and write "CONNECT <port>"; the guest's connections to host
    /// port P reach a listener at PATH_P. The guest's CID is 3 unless cid= says otherwise.
    #[arg(long, value_name = "PATH[,cid=N]")]
    vsock: Option<VsockConfig>,

    /// Leave out the virtio-rng entropy source Linux guests get by default.
    #[arg(long)]
    no_rng: bool,

    /// Serve gdb's remote protocol at ADDR: tcp:HOST:PORT (e.g. tcp:127.0.0.1:1234) or a unix
    /// socket path. Each hart is a gdb thread; gdb attaching stops the machine.
    #[arg(long, value_name = "ADDR")]
    gdb: Option<String>,

    /// With --gdb: wait for gdb before the first instruction.
    #[arg(long, requires = "gdb")]
    gdb_wait: bool,

    /// Serve the REST control API (docs/api.yaml) on a new unix socket at PATH (mode 0600):
    /// GET /machine, PUT /machine/pause, /machine/resume, /machine/shutdown. See `popek ctl`.
    #[arg(long, value_name = "PATH")]
    api: Option<PathBuf>,

    /// Print guest instructions executed, run time and boot time to stderr at exit.
    #[arg(long)]
    stats: bool,

    #[command(flatten)]
    engine: EngineArgs,

    /// With `-- CMD`: also show the firmware's and the kernel's console output (by default
    /// only CMD's stdout and stderr are shown).
    #[arg(long, short = 'v')]
    verbose: bool,

    /// With `-- CMD`: how long the guest may take to get ready before popek gives up and shows
    /// the end of its console.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    ready_timeout: u64,

    /// Resume the machine saved in DIR by `popek snapshot create DIR` instead of booting one
    /// (its RAM, devices and disks come from the snapshot). With `-- CMD`, the restored default
    /// guest runs CMD; otherwise it starts a shell.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["guest", "bios", "kernel", "initrd", "append", "memory", "cpus", "disk", "vsock", "no_rng"])]
    restore: Option<PathBuf>,

    /// With --restore: the guest writes the snapshot's disks in place. By default a restored
    /// guest's disk writes go to a private copy-on-write overlay, discarded at exit, so the
    /// snapshot can be restored again and clones do not share writes.
    #[arg(long, requires = "restore")]
    write_disks: bool,

    /// With --restore: share the decoded guest code with the other restores of DIR that run
    /// at the same time with this option (in /dev/shm while any runs): clones start faster
    /// and take less memory. Each of them can change the code the others run, so a guest that
    /// broke out of popek in one could take over the others: only for clones trusted alike.
    #[arg(long, requires = "restore")]
    share_decode: bool,

    /// Where Ctrl-A s saves the running machine (it then runs on): a snapshot directory for
    /// `popek run --restore DIR`, created now. Each Ctrl-A s replaces the previous save, in
    /// place: restores of an earlier save must not be running then.
    #[arg(long, value_name = "DIR")]
    save_to: Option<PathBuf>,

    /// Command to run in the guest instead of a shell or login (after `--`); popek exits with
    /// its status.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// When popek started (for --stats).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    match tracing_subscriber::EnvFilter::try_from_env("POPEK_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        // Warnings and errors: a level, not a parsed filter (every `popek exec` of a guest's
        // execve starts here, and building the filter took a twentieth of a millisecond).
        Err(_) => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .init(),
    }
    let parsed = match exec::parse_alone() {
        Some(args) => Ok(Cli {
            command: Command::Exec(args),
        }),
        None => Cli::try_parse(),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other popek error; `--help` has the details.
            let msg = e.render().to_string();
            let text: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            eprintln!(
                "popek: {} (see popek --help)",
                text.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("popek: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// `e` with its causes, each said once: many errors already name their cause in their own
/// message ("cannot open disk image X: Is a directory"), and the chain would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

pub(crate) fn machine_config(args: &RunArgs) -> anyhow::Result<MachineConfig> {
    let linux = args.kernel.is_some() || args.bios.is_none();
    let debian = args.guest.as_deref() == Some("debian");
    let memory = args.memory.unwrap_or(if debian {
        1 << 30
    } else if linux {
        512 << 20
    } else {
        128 << 20
    });
    let mut config = MachineConfig {
        memory,
        cpus: args.cpus,
        bios: args.bios.clone(),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        append: args.append.clone().unwrap_or_default(),
        disks: args.disk.clone(),
        rng: linux && !args.no_rng,
        net: net_config(args)?,
        vsock: args.vsock.clone(),
        jail: true,
        command_output: false,
        quiet_boot: None,
        debug: None,
        stop_when_ready: false,
        engine: args.engine.config(),
        restore_writes_disks: false,
        restore_shares_decode: false,
        hold_input_until_ready: false,
        stop_on_reset: false,
    };
    if args.kernel.is_none() && args.bios.is_none() {
        let g = guest::default_guest()?;
        config.kernel = Some(g.kernel);
        config.initrd = Some(g.initrd);
        config.bios = Some(g.firmware);
        config.append = guest::DEFAULT_APPEND.to_string();
        // Its init signals readiness right before it starts the shell (the Debian guest's
        // getty comes up on its own schedule, and agetty flushes pending input anyway).
        config.hold_input_until_ready = !debian;
        if debian {
            config.disks.insert(
                0,
                DiskConfig {
                    path: guest::debian_disk()?,
                    readonly: false,
                    cow: false,
                    handed_over: false,
                },
            );
            config.append = guest::DEBIAN_APPEND.to_string();
            if config.net.is_none() {
                config.net = Some(NetConfig {
                    mac: DEFAULT_MAC,
                    backend: NetBackendConfig::User {
                        publish: Vec::new(),
                    },
                });
            }
        }
    } else if args.kernel.is_some() && args.bios.is_none() {
        // Like QEMU, boot kernels through OpenSBI by default: the default guest's copy.
        config.bios = guest::default_firmware();
    }
    if !args.command.is_empty() {
        if config.kernel.is_none() {
            anyhow::bail!("a command after `--` needs a Linux guest: drop --bios or add --kernel");
        }
        let prepared = args.kernel.is_none() && args.bios.is_none();
        // The prepared guests' init puts CMD's stdout and stderr on the two consoles; then only
        // CMD's output is shown unless --verbose.
        config.command_output = prepared;
        if prepared && !args.verbose {
            config.quiet_boot = Some(std::time::Duration::from_secs(args.ready_timeout));
            if debian {
                config.append.push_str(" quiet");
            }
        }
        config.append = format!(
            "{} {} {}",
            config.append,
            guest::PANIC_REBOOTS,
            guest::command_arg(&args.command)
        )
        .trim()
        .to_string();
        config.stop_on_reset = true;
    }
    Ok(config)
}

/// `--net` as given: the card, and whether `mac=` was written (a restore must refuse any,
/// the default address included).
#[derive(Clone, Debug)]
pub(crate) struct NetArg {
    config: NetConfig,
    pub(crate) mac_given: bool,
}

/// Parse `--net user|tap=NAME[,mac=MAC]`.
fn parse_net(s: &str) -> Result<NetArg, String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    let backend = match kind {
        "user" => NetBackendConfig::User {
            publish: Vec::new(),
        },
        _ => match kind.strip_prefix("tap=") {
            Some(name) if !name.is_empty() => NetBackendConfig::Tap {
                name: name.to_string(),
            },
            _ => return Err(format!("unknown network '{kind}': use user or tap=NAME")),
        },
    };
    let mut mac = DEFAULT_MAC;
    let mut mac_given = false;
    for opt in parts {
        match opt.strip_prefix("mac=") {
            Some(m) => {
                mac = parse_mac(m).map_err(|e| e.to_string())?;
                mac_given = true;
            }
            None => {
                return Err(format!(
                    "unknown network option '{opt}' (the only option is mac=)"
                ))
            }
        }
    }
    Ok(NetArg {
        config: NetConfig { mac, backend },
        mac_given,
    })
}

/// The network card: --net, with --publish forwards added to (or implying) the user network.
pub(crate) fn net_config(args: &RunArgs) -> anyhow::Result<Option<NetConfig>> {
    let mut net = args.net.as_ref().map(|n| n.config.clone());
    if !args.publish.is_empty() {
        let n = net.get_or_insert(NetConfig {
            mac: DEFAULT_MAC,
            backend: NetBackendConfig::User {
                publish: Vec::new(),
            },
        });
        match &mut n.backend {
            NetBackendConfig::User { publish } => publish.extend(args.publish.iter().copied()),
            NetBackendConfig::Tap { .. } => {
                anyhow::bail!("--publish forwards ports of the user network; it does not apply to --net tap (drop one of them)")
            }
        }
    }
    Ok(net)
}

/// Confine a socket-serving thread (gdb, api): no files at all (Landlock) and the vCPUs'
/// system calls (seccomp). These threads start before the main thread's jail, so they confine
/// themselves; a thread that cannot be confined ends popek.
fn confine_socket_thread(who: &str) {
    let r = popek_jail::FsRules::default()
        .apply()
        .and_then(|_| popek_jail::restrict_thread(popek_jail::ThreadKind::Vmm));
    if let Err(e) = r {
        eprintln!("popek: error: {who} thread: {e}");
        std::process::exit(1);
    }
}

/// `--gdb`: listen, and serve gdb from a thread confined like the vCPUs.
fn start_gdb(args: &RunArgs, config: &mut MachineConfig) -> anyhow::Result<()> {
    let Some(addr) = &args.gdb else {
        return Ok(());
    };
    let listener = popek_gdb::GdbListener::bind(addr)?;
    let hub = Arc::new(popek_gdb::DebugHub::new(
        config.cpus as usize,
        args.gdb_wait,
    ));
    config.debug = Some(hub.clone());
    let jail = config.jail;
    popek_gdb::spawn(
        listener,
        hub,
        Box::new(move || {
            if jail {
                confine_socket_thread("gdb");
            }
        }),
    )
    .context("starting the gdb thread")?;
    Ok(())
}

/// The control socket's view of the machine.
struct Api(popek_board::MachineHandle);

impl popek_api::Control for Api {
    fn status(&self) -> popek_api::MachineStatus {
        let s = self.0.status();
        popek_api::MachineStatus {
            status: if s.paused { "paused" } else { "running" },
            cpus: s.cpus,
            memory: s.memory,
            uptime_ms: s.uptime.as_millis() as u64,
            instructions: s.instructions,
            migration: self.0.migration().map(|p| {
                use popek_board::migrate::MigrationProgress::*;
                let (state, to, error) = match p {
                    Migrating { to } => ("migrating", to, None),
                    Failed { to, error } => ("failed", to, Some(error)),
                    Done { to } => ("migrated", to, None),
                };
                popek_api::MigrationStatus { state, to, error }
            }),
        }
    }
    fn pause(&self) {
        self.0.pause();
    }
    fn resume(&self) {
        self.0.resume();
    }
    fn shutdown(&self) {
        self.0.shutdown();
    }
    fn answered(&self) {
        self.0.migration_answered();
    }
    fn migrate(&self, to: &str) -> Result<(), popek_api::Refusal> {
        if !to.starts_with("tcp:") {
            return Err(popek_api::Refusal(format!(
                "{to}: give the destination as tcp:HOST:PORT (where popek run --restore tcp:HOST:PORT listens)"
            )));
        }
        self.0
            .migrate(to)
            .map_err(|e| popek_api::Refusal(e.to_string()))
    }
}

/// `--api`: serve the control socket from a thread confined like the vCPUs.
fn start_api(
    listener: popek_api::ApiListener,
    machine: &Machine,
    jail: bool,
) -> anyhow::Result<()> {
    popek_api::spawn(
        listener,
        Arc::new(Api(machine.handle())),
        Box::new(move || {
            if jail {
                confine_socket_thread("api");
            }
        }),
    )
    .context("starting the api thread")?;
    Ok(())
}

/// `popek ctl`: one request, the JSON answer on stdout; status 1 for an error answer.
fn ctl(args: CtlArgs) -> anyhow::Result<u8> {
    let (method, path) = match args.action.as_str() {
        "status" => ("GET", "/machine"),
        other => (
            "PUT",
            match other {
                "pause" => "/machine/pause",
                "resume" => "/machine/resume",
                "migrate" => "/machine/migrate",
                _ => "/machine/shutdown",
            },
        ),
    };
    let body = match (&args.action[..], &args.to) {
        ("migrate", Some(to)) => Some(serde_json::json!({ "to": to }).to_string()),
        ("migrate", None) => anyhow::bail!("popek ctl SOCKET migrate tcp:HOST:PORT: where to?"),
        _ => None,
    };
    let (status, body) = popek_api::request(&args.socket, method, path, body.as_deref())?;
    if status == 200 && args.action == "migrate" {
        return wait_for_migration(&args.socket);
    }
    println!("{body}");
    Ok(if status == 200 { 0 } else { 1 })
}

/// After `popek ctl SOCKET migrate`: ask how the migration goes until it ends, print its end
/// (`{"status":"migrated",...}`, or the error) and give status 0 only if the machine moved.
fn wait_for_migration(socket: &std::path::Path) -> anyhow::Result<u8> {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (status, body) = popek_api::request(socket, "GET", "/machine", None)
            .map_err(|e| anyhow::anyhow!("the machine stopped before its migration ended ({e})"))?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status != 200 {
            println!("{body}");
            return Ok(1);
        }
        let m = &v["migration"];
        let to = m["to"].as_str().unwrap_or_default();
        match m["state"].as_str() {
            Some("migrating") => continue,
            Some("migrated") => {
                println!("{}", serde_json::json!({ "status": "migrated", "to": to }));
                return Ok(0);
            }
            _ => {
                let why = m["error"].as_str().unwrap_or("no reason given");
                let error = format!("migration to {to} failed: {why}; the machine runs on here");
                println!("{}", serde_json::json!({ "error": error }));
                return Ok(1);
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Ctl(args) => ctl(args),
        Command::Exec(args) => Ok(exec::run(args)),
        Command::Image(cmd) => image::run(cmd),
        Command::Run(args) => {
            // Before any sandbox: a sandboxed hart thread could not create the map. (`popek
            // exec` opens its own, among the descriptors it keeps from the guest.)
            popek_jit::open_perf_map(None);
            run_machine(args)
        }
        Command::Snapshot(cmd) => snapshot::run(cmd),
    }
}

/// `popek run`: boot (or restore) a machine and run it until the guest stops.
fn run_machine(args: RunArgs) -> anyhow::Result<u8> {
    let mut config = match &args.restore {
        Some(_) => snapshot::restore_config(&args)?,
        None => machine_config(&args)?,
    };
    start_gdb(&args, &mut config)?;
    let api = args
        .api
        .as_deref()
        .map(popek_api::ApiListener::bind)
        .transpose()?;
    let mut machine = match &args.restore {
        Some(dir) => snapshot::restore(dir, &config, &args.command)?,
        None => Machine::new(&config)?,
    };
    // Opened now: once the machine runs, popek is jailed and cannot create files.
    let mut save_to = match &args.save_to {
        Some(dir) => Some((
            dir,
            // The machine runs on after each save: its writable disks are copied.
            popek_board::snapshot::SnapshotFiles::create(dir, machine.config(), true)?,
        )),
        None => None,
    };
    if let Some(listener) = api {
        // The migration thread first: the API may ask for it at once.
        let jail = config.jail;
        machine.enable_migration(Box::new(move || {
            if jail {
                popek_board::jail::net_thread();
            }
        }))?;
        start_api(listener, &machine, config.jail)?;
    }
    if args.stats && args.restore.is_some() {
        let since = STARTED.get().map(|t| t.elapsed()).unwrap_or_default();
        eprintln!(
            "popek: restored, running the guest {:.1} ms after popek started",
            since.as_secs_f64() * 1e3
        );
    }
    let outcome = {
        let terminal = RawTerminal::enter();
        if terminal.is_active() {
            machine.enable_escapes();
        }
        loop {
            match machine.run() {
                Ok(RunOutcome::Migrate) => match machine.finish_migration() {
                    Ok(r) => {
                        eprintln!(
                            "popek: migrated to {} in {} ms: {} pre-copy rounds, {} MiB sent, guest stopped for {:.1} ms",
                            r.to,
                            r.total.as_millis(),
                            r.rounds,
                            r.sent >> 20,
                            r.downtime.as_secs_f64() * 1e3
                        );
                        // `popek ctl SOCKET migrate` learns it went through the socket.
                        machine.wait_until_migration_told(std::time::Duration::from_secs(1));
                        return Ok(0);
                    }
                    Err(e @ popek_board::BoardError::DiskLost(_)) => return Err(e.into()),
                    Err(e) => eprintln!("popek: {e}; the machine runs on here"),
                },
                Ok(RunOutcome::Save) => match &mut save_to {
                    Some((dir, files)) => match machine.save(files) {
                        Ok(r) => eprintln!(
                            "popek: saved to {} ({} MiB of RAM); popek run --restore {0} starts from here",
                            dir.display(),
                            r.ram_saved >> 20
                        ),
                        Err(e) => eprintln!("popek: Ctrl-A s: {e}"),
                    },
                    None => eprintln!("popek: Ctrl-A s saves with popek run --save-to DIR"),
                },
                other => break other,
            }
        }
    };
    let quiet = config.quiet_boot.is_some();
    let rebooted = matches!(outcome, Ok(RunOutcome::Reset));
    if quiet && (!machine.guest_ready() || rebooted) {
        // The guest never got to CMD, or its kernel gave up under it: what its console said
        // is the only clue.
        if let Some(tail) = machine.console_tail(20).filter(|t| !t.is_empty()) {
            eprintln!("{tail}");
        }
    }
    let outcome = outcome.context("running the machine")?;
    if quiet && !machine.guest_ready() {
        anyhow::bail!(
            "the guest stopped ({}) before it was ready to run the command; its console's last lines are above (--verbose shows all of it)",
            describe(outcome)
        );
    }
    if rebooted {
        anyhow::bail!(
            "the guest rebooted before the command finished (its kernel reboots when it panics); {}",
            if quiet {
                "its console's last lines are above (--verbose shows all of it)"
            } else {
                "its console is above"
            }
        );
    }
    if args.stats {
        print_stats(&machine);
    }
    if let (Some(hub), RunOutcome::Exit(code)) = (&config.debug, &outcome) {
        hub.exited(*code as u8);
    }
    match outcome {
        // Exit statuses are 8 bits on Unix, as with QEMU's exit(code).
        RunOutcome::Exit(code) => Ok(code as u8),
        RunOutcome::Quit => {
            eprintln!("popek: terminated (Ctrl-A x)");
            Ok(0)
        }
        RunOutcome::Ready | RunOutcome::Migrate | RunOutcome::Save | RunOutcome::Reset => Ok(0),
    }
}

/// How a run ended, for messages.
pub(crate) fn describe(outcome: RunOutcome) -> String {
    match outcome {
        RunOutcome::Exit(code) => format!("exit status {code}"),
        RunOutcome::Quit => "Ctrl-A x".to_string(),
        RunOutcome::Ready => "ready".to_string(),
        RunOutcome::Migrate => "migrated".to_string(),
        RunOutcome::Save => "saved".to_string(),
        RunOutcome::Reset => "rebooted".to_string(),
    }
}

/// `--stats`: instructions, speed, memory and boot time on stderr.
pub(crate) fn print_stats(machine: &Machine) {
    let s = machine.stats();
    let secs = s.elapsed.as_secs_f64();
    eprintln!(
        "popek: executed {} instructions in {:.3} s ({:.1} MIPS)",
        s.instructions,
        secs,
        s.instructions as f64 / secs.max(1e-9) / 1e6
    );
    eprintln!(
        "popek: guest RAM resident: {} KiB; decode cache resident: {} KiB",
        s.guest_resident >> 10,
        s.decode_cache >> 10
    );
    if let Some((taken, filled, path)) = machine.shared_decode_stats() {
        eprintln!(
            "popek: decoded pages shared with other restores of the snapshot: {taken} used, {filled} of them decoded here ({})",
            path.display()
        );
    }
    if let Some(b) = s.boot {
        eprintln!("popek: guest ready after {:.3} s", b.as_secs_f64());
    }
    if let Some(j) = s.jit {
        eprintln!("popek: JIT {j}");
        if let Some(v) = j.verify_summary() {
            eprintln!("popek: verify: {v}");
        }
    }
}
