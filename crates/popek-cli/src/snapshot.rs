//! `popek snapshot create` and `popek run --restore`: save a booted machine, start it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use popek_board::snapshot::SnapshotFiles;
use popek_board::{Machine, MachineConfig, RunOutcome};

use crate::{machine_config, RunArgs};

/// The kernel command-line word that tells the default guest's init to wait, once ready, for
/// the line a restore types on its console (see [`typed_line`]). The number is the version of
/// that line's form.
const SNAPSHOT_ARG: &str = "popek.snapshot=2";

/// What inits before version 2 were told: they read the line with `read` (one system call a
/// character), CMD's words alone.
const OLD_SNAPSHOT_ARG: &str = "popek.snapshot";

/// `popek snapshot ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum SnapshotCmd {
    /// Boot a machine (the options of `popek run`), wait until the guest is ready and idle
    /// (at most half a second after its ready signal), save it to DIR and exit.
    /// `popek run --restore DIR [-- CMD]` then starts from there.
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    /// Where to save (created if missing; a snapshot already there is replaced).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    #[command(flatten)]
    run: RunArgs,
}

/// Run a `popek snapshot` command.
pub(crate) fn run(cmd: SnapshotCmd) -> anyhow::Result<u8> {
    match cmd {
        SnapshotCmd::Create(args) => create(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<u8> {
    let run = &args.run;
    if !run.command.is_empty() {
        anyhow::bail!(
            "popek snapshot create takes no command: give it to the restore (popek run --restore {} -- CMD)",
            args.dir.display()
        );
    }
    if run.restore.is_some() {
        anyhow::bail!("popek snapshot create boots a new machine: drop --restore");
    }
    if run.vsock.is_some() {
        anyhow::bail!("a machine with --vsock cannot be saved (its connections live outside the guest): drop --vsock");
    }
    let mut config = machine_config(run)?;
    let prepared = run.kernel.is_none() && run.bios.is_none();
    if prepared {
        // The default guest's init waits for a command once ready; its output then goes to
        // the two output consoles, as with `popek run -- CMD`.
        config.command_output = true;
        config.append = format!(
            "{} {} {SNAPSHOT_ARG}",
            config.append,
            crate::guest::PANIC_REBOOTS
        );
        if !run.verbose {
            config.quiet_boot = Some(Duration::from_secs(run.ready_timeout));
        }
    }
    config.stop_when_ready = true;
    // The machine stops after its save: its disks stay as saved, no copy needed.
    let mut files = SnapshotFiles::create(&args.dir, &config, false)?;
    let mut machine = Machine::new(&config)?;
    let outcome = machine.run().context("booting the machine")?;
    if outcome != RunOutcome::Ready {
        if let Some(tail) = machine.console_tail(20).filter(|t| !t.is_empty()) {
            eprintln!("{tail}");
        }
        anyhow::bail!(
            "the guest stopped ({}) before it was ready: nothing was saved",
            crate::describe(outcome)
        );
    }
    let booted = machine.stats().elapsed;
    let started = Instant::now();
    let report = machine.save(&mut files)?;
    eprintln!(
        "popek: saved to {} after {:.2} s of boot: {} MiB of {} MiB guest RAM written in {} ms",
        args.dir.display(),
        booted.as_secs_f64(),
        report.ram_saved >> 20,
        report.ram_size >> 20,
        started.elapsed().as_millis()
    );
    if run.stats {
        crate::print_stats(&machine);
    }
    Ok(0)
}

/// The run-time settings of `popek run --restore` (the machine itself comes from the snapshot).
pub(crate) fn restore_config(args: &RunArgs) -> anyhow::Result<MachineConfig> {
    let net = crate::net_config(args)?;
    if args.net.as_ref().is_some_and(|n| n.mac_given) {
        anyhow::bail!(
            "a restored guest keeps the MAC address it read at boot: drop mac= from --net"
        );
    }
    Ok(MachineConfig {
        jail: true,
        engine: args.engine.config(),
        restore_writes_disks: args.write_disks,
        restore_shares_decode: args.share_decode,
        stop_on_reset: !args.command.is_empty(),
        quiet_boot: (!args.command.is_empty() && !args.verbose)
            .then(|| Duration::from_secs(args.ready_timeout)),
        net,
        ..MachineConfig::default()
    })
}

/// The longest line a guest's terminal reads whole (Linux's canonical-mode buffer, less one).
const MAX_TYPED: usize = 4095;

/// CMD as the line the restored guest's init reads: each word `$'...'`-quoted for its shell,
/// with quotes, backslashes and every control character escaped (the terminal would act on
/// them).
fn typed_command(command: &[String]) -> String {
    let mut line = String::new();
    for word in command {
        line.push_str("$'");
        for c in word.chars() {
            match c {
                '\\' => line.push_str("\\\\"),
                '\'' => line.push_str("\\'"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    line.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => line.push(c),
            }
        }
        line.push_str("' ");
    }
    line.trim_end().to_string()
}

/// What the typed line starts with to run a command: the init's function and a space.
const RUN_COMMAND: &str = "run_command ";

/// The line a restored default guest's init reads as shell input: `run_command` and CMD's
/// words, or `return` (no command: it goes on to a shell).
fn typed_line(command: &[String]) -> anyhow::Result<String> {
    if command.is_empty() {
        return Ok("return\n".to_string());
    }
    let words = typed_command(command);
    if RUN_COMMAND.len() + words.len() > MAX_TYPED {
        anyhow::bail!(
            "the command is {} bytes quoted; a restored guest reads at most {} (put it in a script on a disk)",
            words.len(),
            MAX_TYPED - RUN_COMMAND.len()
        );
    }
    Ok(format!("{RUN_COMMAND}{words}\n"))
}

/// Build the machine saved in `dir` and type what its init waits for ([`typed_line`]: CMD, or
/// a shell).
pub(crate) fn restore(
    dir: &Path,
    config: &MachineConfig,
    command: &[String],
) -> anyhow::Result<Machine> {
    if let Some(addr) = dir.to_str().and_then(|d| d.strip_prefix("tcp:")) {
        if !command.is_empty() {
            anyhow::bail!("a migrated machine goes on with what it was running: drop -- CMD");
        }
        if config.restore_shares_decode {
            anyhow::bail!(
                "--share-decode shares the code of a snapshot directory's RAM, which a migrated machine has none of: drop --share-decode"
            );
        }
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--restore tcp:{addr}: cannot listen"))?;
        eprintln!("popek: waiting for a migration on tcp:{addr}");
        return Ok(Machine::receive(&listener, config)?);
    }
    let machine = Machine::restore(dir, config)?;
    let words = |w: &str| machine.config().append.split_whitespace().any(|a| a == w);
    if words(OLD_SNAPSHOT_ARG) {
        anyhow::bail!(
            "{} was taken of an older default guest, which waits for its command in another form: create the snapshot again",
            dir.display()
        );
    }
    if words(SNAPSHOT_ARG) {
        machine.type_input(typed_line(command)?.as_bytes());
    } else if !command.is_empty() {
        anyhow::bail!(
            "this snapshot's guest does not take a command after a restore (only the default guest's does): drop -- CMD"
        );
    }
    Ok(machine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_commands_escape_what_a_terminal_would_act_on() {
        let words: Vec<String> = ["sh", "-c", "echo 'a'\nb\\c\u{3}d é"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            typed_command(&words),
            r"$'sh' $'-c' $'echo \'a\'\x0ab\\c\x03d é'"
        );
        assert_eq!(typed_command(&[]), "");
    }

    #[test]
    fn typed_lines_run_a_command_or_return_to_a_shell() {
        assert_eq!(typed_line(&[]).unwrap(), "return\n");
        assert_eq!(
            typed_line(&["true".to_string()]).unwrap(),
            "run_command $'true'\n"
        );
        // The whole line fits the guest terminal's line buffer, or the restore refuses it.
        let longest = "x".repeat(MAX_TYPED - RUN_COMMAND.len() - "$''".len());
        assert_eq!(
            typed_line(std::slice::from_ref(&longest)).unwrap().len(),
            MAX_TYPED + 1
        );
        let err = typed_line(&[longest + "x"]).unwrap_err().to_string();
        assert!(err.contains("reads at most"), "{err}");
    }
}
