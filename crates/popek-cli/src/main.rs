//! `popek`: run RISC-V machines and programs on any x86_64 Linux host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use popek_board::size::parse_size;
use popek_board::{Machine, MachineConfig, RunOutcome};

/// popek: an efficient, isolated duplicate of a RISC-V machine.
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
    /// With --bios alone, runs a bare-metal program in M-mode from the start of RAM, exactly as
    /// `qemu-system-riscv64 -M virt -bios prog.elf -nographic` would; the UART is the terminal, and
    /// popek exits with the status the program writes to the test finisher.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Firmware or bare-metal program: a RISC-V ELF (loaded by physical address) or a flat
    /// binary (loaded at 0x80000000).
    #[arg(long, value_name = "FILE")]
    bios: PathBuf,

    /// Guest RAM size, e.g. 128M or 2G.
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    memory: u64,

    /// Print guest instructions executed and the run time to stderr at exit.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POPEK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
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
            eprintln!("popek: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => {
            let config = MachineConfig {
                memory: args.memory,
                bios: args.bios,
            };
            let mut machine = Machine::new(&config)?;
            let outcome = machine.run().context("running the machine")?;
            if args.stats {
                let s = machine.stats();
                let secs = s.elapsed.as_secs_f64();
                eprintln!(
                    "popek: executed {} instructions in {:.3} s ({:.1} MIPS)",
                    s.instructions,
                    secs,
                    s.instructions as f64 / secs.max(1e-9) / 1e6
                );
            }
            match outcome {
                // Exit statuses are 8 bits on Unix, as with QEMU's exit(code).
                RunOutcome::Exit(code) => Ok(code as u8),
            }
        }
    }
}
