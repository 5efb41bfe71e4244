//! `popek exec`: run one riscv64 Linux program in user mode, confined to a root directory.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use popek_board::size::parse_size;
use popek_linux::ExecConfig;

/// `popek exec ARGS` parsed by a parser of `exec`'s arguments alone, or `None` if the command
/// line is not `popek exec` or that parser does not take it (help, `--version`, an error):
/// the whole command line's parser then does what it always does. A guest's every execve
/// starts a `popek exec`, and the whole parser builds every subcommand's arguments first.
pub(crate) fn parse_alone() -> Option<ExecArgs> {
    use clap::{Args, FromArgMatches};
    let mut argv = std::env::args_os().skip(1);
    if argv.next()? != "exec" {
        return None;
    }
    let matches = ExecArgs::augment_args(clap::Command::new("exec"))
        .try_get_matches_from(std::iter::once(OsString::from("exec")).chain(argv))
        .ok()?;
    ExecArgs::from_arg_matches(&matches).ok()
}

/// Arguments of `popek exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Directory the program sees as `/`: every path it uses resolves inside it (symlinks and
    /// `..` cannot leave it). Dynamic programs need their loader and libraries in it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,

    /// Add or replace a variable in the program's environment (which starts as popek's own,
    /// or empty with --clear-env).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<OsString>,

    /// Start the program's environment empty: it gets only the --env variables.
    #[arg(long)]
    clear_env: bool,

    /// The most memory the program's writable mappings may take, e.g. 512M or 8G; past it
    /// mmap, brk and mprotect fail with ENOMEM (per process the program forks).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    memory: u64,

    /// Pass host descriptor N (above 2) to the program; 0, 1 and 2 always are, every other
    /// descriptor popek inherited is closed (repeatable).
    #[arg(long = "pass-fd", value_name = "N")]
    pass_fd: Vec<i32>,

    /// Host pid of the guest's first process, when a guest execve re-executes popek.
    #[arg(long, value_name = "PID", hide = true)]
    guest_root: Option<i32>,

    /// Allow the program to create sockets (denied by default).
    #[arg(long)]
    allow_net: bool,

    /// argv[0] for the program, when it differs from PROG (used by the program's own execve).
    #[arg(long, value_name = "NAME", hide = true, allow_hyphen_values = true)]
    argv0: Option<OsString>,

    /// Serve gdb's remote protocol at ADDR (tcp:HOST:PORT or a unix socket path) and wait for
    /// gdb before the program's first instruction, like `qemu-riscv64 -g`.
    #[arg(long, value_name = "ADDR")]
    gdb: Option<String>,

    #[command(flatten)]
    engine: crate::EngineArgs,

    /// Print instructions executed, speed and JIT counts on stderr when the program ends (each
    /// process it forks or executes prints its own, naming its pid).
    #[arg(long)]
    stats: bool,

    /// The riscv64 program (a path inside the root, or a name found in PATH there).
    #[arg(value_name = "PROG")]
    prog: OsString,

    /// Arguments for the program.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<OsString>,
}

/// Run the program; returns popek's exit status if it could not be started (otherwise the process
/// ends with the program's status).
pub fn run(mut args: ExecArgs) -> u8 {
    let debug = match args.gdb.as_deref().map(popek_gdb::GdbListener::bind) {
        None => None,
        Some(Err(e)) => {
            eprintln!("popek: error: {e}");
            return 1;
        }
        Some(Ok(listener)) => {
            args.pass_fd.push(listener.raw_fd());
            Some(popek_linux::ExecDebug {
                hub: Arc::new(popek_gdb::DebugHub::new(1, true)),
                listener: Arc::new(Mutex::new(Some(listener))),
            })
        }
    };
    let mut env: Vec<OsString> = if args.clear_env {
        Vec::new()
    } else {
        std::env::vars_os()
            .map(|(k, v)| {
                let mut s = k;
                s.push("=");
                s.push(v);
                s
            })
            .collect()
    };
    for e in args.env {
        let key: Vec<u8> = {
            use std::os::unix::ffi::OsStrExt;
            let b = e.as_bytes();
            b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())].to_vec()
        };
        env.retain(|old| {
            use std::os::unix::ffi::OsStrExt;
            let b = old.as_bytes();
            !(b.starts_with(&key) && b.get(key.len()) == Some(&b'='))
        });
        env.push(e);
    }
    let config = ExecConfig {
        root: args.root,
        env,
        allow_net: args.allow_net,
        prog: args.prog,
        args: args.args,
        argv0: args.argv0,
        memory_limit: args.memory,
        pass_fds: args.pass_fd,
        guest_root: args.guest_root,
        debug,
        engine: args.engine.config(),
        stats: args.stats,
    };
    match popek_linux::exec(config) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("popek: {e}");
            e.exit_status()
        }
    }
}
