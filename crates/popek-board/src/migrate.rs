//! Live migration: move a running machine to another popek over TCP.
//!
//! The destination (`popek run --restore tcp:HOST:PORT`) listens; the source, asked through
//! its control socket, connects from its migration thread and copies RAM while the guest runs
//! (pre-copy): first every page that is not all zero, then, round after round, the pages
//! written meanwhile (the [`DirtyLog`]: harts mark pages as their stores fill the write TLB,
//! devices through their DMA hook). Each round ends with a sync: the source waits until the
//! destination has taken in everything sent so far, so that what the socket buffers still held
//! is never copied with the guest stopped (with the destination held to 5 % of a CPU, an idle
//! guest stopped for 90 ms instead of under 1). When a round is small, the machine stops
//! ([`crate::RunOutcome::Migrate`]) and [`Machine::finish_migration`] sends the last dirty pages, the
//! virtqueue rings and the state file; the destination answers once restored, and the source
//! exits. If anything fails before that answer, the source resumes as if nothing happened.
//!
//! Disks move by path: both sides must see the same image (one host, or shared storage). The
//! destination opens them without their locks; the source, stopped, has written everything to
//! the images (its devices pause with an `fdatasync`), lets go of the locks just before the
//! end record, and the destination takes them before it answers. A failed migration takes
//! them back on the source; if it cannot, the machine stops there rather than run without.
//!
//! The stream: `POPEKMIG` and a version, the snapshot manifest (JSON, length-prefixed), then
//! records: a page (`P`, page index from the start of RAM, 4096 bytes), a sync (`Q`, which the
//! destination answers `A` once it has read it), the state (`S`, length-prefixed state file),
//! the end (`E`). The destination answers `K` (restored) or `F` and a message.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use popek_cpu::DirtyLog;
use popek_persist::StateFile;

use crate::error::BoardError;
use crate::machine::{DramMapping, Machine, MachineConfig, MachineHandle, Shared, Stop};
use crate::memmap;
use crate::snapshot::{config_from, Manifest, Source};

const MAGIC: &[u8; 8] = b"POPEKMIG";
/// 2: sync records (`Q`, answered `A`) end each pre-copy round.
const VERSION: u32 = 2;
const PAGE: usize = 4096;
/// Pre-copy stops when a round has fewer dirty pages than this (or after [`MAX_ROUNDS`]).
const SMALL_ROUND: usize = 256;
const MAX_ROUNDS: usize = 30;

/// How the last migration asked of a machine goes: the control socket reports it, so whoever
/// asked (`popek ctl SOCKET migrate`) learns how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationProgress {
    /// Copying to `to`: RAM while the guest runs, or the rest with the guest stopped.
    Migrating {
        /// The destination, as asked.
        to: String,
    },
    /// It failed; the machine runs on here.
    Failed {
        /// The destination, as asked.
        to: String,
        /// Why.
        error: String,
    },
    /// The destination has the machine; this popek exits.
    Done {
        /// The destination, as asked.
        to: String,
    },
}

/// A machine's [`MigrationProgress`], and whether anyone watched it.
#[derive(Default)]
pub(crate) struct ProgressCell {
    state: Mutex<Option<MigrationProgress>>,
    /// A migration was asked for through [`MachineHandle::migrate`] (whoever asked will ask
    /// how it ended).
    asked: AtomicBool,
    /// An answer being written says it is done.
    reported_done: AtomicBool,
    /// Someone was told it is done: such an answer was written.
    told_done: AtomicBool,
}

impl ProgressCell {
    fn set(&self, p: MigrationProgress) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The migration under way failed for `error`.
    fn fail(&self, error: String) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let to = match state.take() {
            Some(MigrationProgress::Migrating { to }) => to,
            _ => String::new(),
        };
        *state = Some(MigrationProgress::Failed { to, error });
    }

    /// What to report, noting a report that it is done (told once the answer is written:
    /// [`ProgressCell::answered`]).
    fn report(&self) -> Option<MigrationProgress> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(MigrationProgress::Done { .. }) = &state {
            self.reported_done.store(true, Ordering::SeqCst);
        }
        state
    }

    /// An answer was written: if it said the migration is done, someone was told.
    fn answered(&self) {
        if self.reported_done.load(Ordering::SeqCst) {
            self.told_done.store(true, Ordering::SeqCst);
        }
    }
}

/// A migration whose pre-copy is done, waiting for the machine to stop.
pub(crate) struct Outgoing {
    out: BufWriter<TcpStream>,
    to: String,
    rounds: usize,
    sent: u64,
    started: Instant,
}

/// What a finished migration reports.
#[derive(Clone, Debug)]
pub struct MigrationReport {
    /// Where the machine went.
    pub to: String,
    /// Pre-copy rounds.
    pub rounds: usize,
    /// Bytes of RAM sent in all.
    pub sent: u64,
    /// From the machine stopping to the destination's answer.
    pub downtime: Duration,
    /// From the request to the destination's answer.
    pub total: Duration,
}

/// Why a migration failed, without the "migration: " its error's message starts with.
fn why(e: &BoardError) -> String {
    match e {
        BoardError::Migration(m) => m.clone(),
        e => e.to_string(),
    }
}

fn io_error(what: &str, e: std::io::Error) -> BoardError {
    BoardError::Migration(format!("{what}: {e}"))
}

fn send_pages(
    out: &mut impl Write,
    ram: &[u8],
    pages: impl Iterator<Item = u64>,
) -> std::io::Result<u64> {
    let mut sent = 0;
    for p in pages {
        let start = p as usize * PAGE;
        let Some(page) = ram.get(start..start + PAGE) else {
            continue;
        };
        out.write_all(b"P")?;
        out.write_all(&p.to_le_bytes())?;
        out.write_all(page)?;
        sent += PAGE as u64;
    }
    Ok(sent)
}

/// Wait until the destination has read everything sent so far: a sync record, answered once
/// the destination reaches it (or `F` and why, if it gave up).
fn sync(out: &mut BufWriter<TcpStream>) -> Result<(), BoardError> {
    let waiting = "waiting for the destination to catch up";
    let err = |e| io_error(waiting, e);
    out.write_all(b"Q").map_err(err)?;
    out.flush().map_err(err)?;
    read_answer(out.get_mut(), b'A', "a sync", waiting)
}

/// Read the destination's one-byte answer to `what`: `want`, or `F` and why it gave up (the
/// rest of the stream), or anything else, an error too.
fn read_answer(
    stream: &mut TcpStream,
    want: u8,
    what: &str,
    waiting: &str,
) -> Result<(), BoardError> {
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .map_err(|e| io_error(waiting, e))?;
    match answer[0] {
        a if a == want => Ok(()),
        b'F' => {
            let mut why = String::new();
            let _ = stream.read_to_string(&mut why);
            Err(BoardError::Migration(format!(
                "the destination refused the machine: {}",
                why.trim()
            )))
        }
        other => Err(BoardError::Migration(format!(
            "the destination answered {other:#x} to {what}"
        ))),
    }
}

/// Bump the dirty log's generation and wait until every hart has dropped its write-TLB
/// entries (or is parked and will before it runs again).
fn flush_writers(shared: &Shared, log: &DirtyLog) -> bool {
    let g = log.flush_writers();
    shared.wake_all();
    while shared
        .dirty_acks
        .iter()
        .any(|a| a.load(Ordering::Acquire) < g)
    {
        if shared.is_stopping() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

impl MachineHandle {
    /// How the last migration asked of this machine goes (`None`: none was asked).
    pub fn migration(&self) -> Option<MigrationProgress> {
        self.0.progress.report()
    }

    /// The answer that carried [`MachineHandle::migration`]'s report was written (a machine
    /// that moved away exits once the asker has the answer, not while it is being written:
    /// see [`Machine::wait_until_migration_told`]).
    pub fn migration_answered(&self) {
        self.0.progress.answered()
    }

    /// Ask the migration thread to move the machine to `to` (`tcp:HOST:PORT` or `HOST:PORT`).
    /// Returns at once; the machine stops when the destination has it, and
    /// [`MachineHandle::migration`] tells how it goes.
    pub fn migrate(&self, to: &str) -> Result<(), BoardError> {
        let requests = self
            .0
            .migrate_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tx = requests.as_ref().ok_or_else(|| {
            BoardError::Migration(
                "this machine has no migration thread (popek run --api starts one)".into(),
            )
        })?;
        // Before the request leaves: whoever asked sees this migration's progress from now
        // on, not an earlier one's.
        self.0
            .progress
            .set(MigrationProgress::Migrating { to: to.into() });
        self.0.progress.asked.store(true, Ordering::SeqCst);
        tx.send(to.to_string()).map_err(|_| {
            let e = "the migration thread is gone";
            self.0.progress.fail(e.into());
            BoardError::Migration(e.into())
        })
    }
}

impl Machine {
    /// Start the thread that carries out [`MachineHandle::migrate`] requests. `confine` runs
    /// first on it (the jail: it may open TCP connections and nothing else).
    pub fn enable_migration(&self, confine: Box<dyn FnOnce() + Send>) -> Result<(), BoardError> {
        let (tx, rx) = mpsc::channel::<String>();
        *self
            .shared
            .migrate_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let shared = self.shared.clone();
        // What a migration would send, or why this machine cannot migrate (it still runs and
        // serves its API either way).
        let manifest: Result<Vec<u8>, String> = if self.config.vsock.is_some() {
            Err("machines with vsock cannot migrate yet".into())
        } else {
            self.manifest(0)
                .map_err(|e| e.to_string())
                .and_then(|m| serde_json::to_vec(&m).map_err(|e| format!("manifest: {e}")))
        };
        let ram = self.dram_mapping()?;
        std::thread::Builder::new()
            .name("migrate".into())
            .spawn(move || {
                confine();
                for to in rx {
                    let manifest = match &manifest {
                        Ok(m) => m,
                        Err(why) => {
                            tracing::error!("migration to {to} refused: {why}");
                            shared.progress.fail(why.clone());
                            continue;
                        }
                    };
                    match precopy(&shared, manifest, &ram, &to) {
                        Ok(outgoing) => {
                            *shared.migration.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(outgoing);
                            shared.stop(Ok(Stop::Migrate));
                            return;
                        }
                        Err(e) => {
                            shared.dirty.stop();
                            let why = why(&e);
                            eprintln!(
                                "popek: migration to {to} failed: {why}; the machine runs on here"
                            );
                            shared.progress.fail(why);
                        }
                    }
                }
            })
            .map_err(|e| BoardError::Internal(format!("migration thread: {e}")))?;
        Ok(())
    }

    /// After [`RunOutcome::Migrate`](crate::RunOutcome::Migrate): send the last dirty pages,
    /// the rings and the state; once the destination has restored the machine, report. On
    /// error the machine is as before (devices running): run it again.
    pub fn finish_migration(&mut self) -> Result<MigrationReport, BoardError> {
        let outgoing = self
            .shared
            .migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| BoardError::Internal("no migration in progress".into()))?;
        let stopped = Instant::now();
        let result = self.final_copy(outgoing, stopped);
        self.shared.dirty.stop();
        match &result {
            Ok(r) => self
                .shared
                .progress
                .set(MigrationProgress::Done { to: r.to.clone() }),
            Err(e) => self.shared.progress.fail(why(e)),
        }
        if result.is_err() {
            self.take_over_disks()
                .map_err(|e| BoardError::DiskLost(e.to_string()))?;
            let mut devices = self.shared.devices();
            for v in &mut devices.bus.virtio {
                v.resume();
            }
        }
        result
    }

    /// After a migration ended here: if it was asked for through [`MachineHandle::migrate`]
    /// (the control socket) and nobody has been told it is done yet, give the asker up to
    /// `limit` to ask (`popek ctl SOCKET migrate` asks every 20 ms), so they learn the machine
    /// moved rather than that it vanished.
    pub fn wait_until_migration_told(&self, limit: Duration) {
        let p = &self.shared.progress;
        let started = Instant::now();
        while p.asked.load(Ordering::SeqCst)
            && !p.told_done.load(Ordering::SeqCst)
            && started.elapsed() < limit
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Hold every disk's lock (again): on a migration's destination before the machine runs
    /// (the source let go of them when it stopped), or on a source whose migration failed.
    pub fn take_over_disks(&mut self) -> Result<(), BoardError> {
        let mut devices = self.shared.devices();
        for v in &mut devices.bus.virtio {
            v.take_over()
                .map_err(|e| BoardError::Migration(e.to_string()))?;
        }
        Ok(())
    }

    fn final_copy(
        &mut self,
        mut o: Outgoing,
        stopped: Instant,
    ) -> Result<MigrationReport, BoardError> {
        let state = self.save_state(false)?;
        let dram = self.dram_mapping()?;
        let ram = dram.bytes();
        let mut pages = self.shared.dirty.take();
        for (start, len) in self.ring_areas() {
            let first = start.wrapping_sub(memmap::DRAM) >> 12;
            let last = (start + len.max(1) - 1).wrapping_sub(memmap::DRAM) >> 12;
            pages.extend(first..=last);
        }
        pages.sort_unstable();
        pages.dedup();
        let err = |e| io_error("sending the final copy", e);
        o.sent += send_pages(&mut o.out, ram, pages.into_iter()).map_err(err)?;
        o.out.write_all(b"S").map_err(err)?;
        o.out
            .write_all(&(state.len() as u64).to_le_bytes())
            .map_err(err)?;
        o.out.write_all(&state).map_err(err)?;
        // The disks' data reached their images when the devices paused; the destination takes
        // their locks once it has the machine.
        {
            let mut devices = self.shared.devices();
            for v in &mut devices.bus.virtio {
                v.hand_over();
            }
        }
        o.out.write_all(b"E").map_err(err)?;
        o.out.flush().map_err(err)?;
        read_answer(
            o.out.get_mut(),
            b'K',
            "the machine",
            "waiting for the destination",
        )?;
        Ok(MigrationReport {
            to: o.to,
            rounds: o.rounds,
            sent: o.sent,
            downtime: stopped.elapsed(),
            total: o.started.elapsed(),
        })
    }

    fn ring_areas(&self) -> Vec<(u64, u64)> {
        let devices = self.shared.devices();
        devices
            .bus
            .virtio
            .iter()
            .flat_map(|v| v.ring_areas())
            .collect()
    }

    /// Accept one migration on `listener` and build the machine it carries. `run` gives the
    /// run-time settings, as for [`Machine::restore`].
    pub fn receive(listener: &TcpListener, run: &MachineConfig) -> Result<Machine, BoardError> {
        let (stream, peer) = listener
            .accept()
            .map_err(|e| io_error("accepting the migration", e))?;
        tracing::info!("migration from {peer}");
        let mut answer = stream
            .try_clone()
            .map_err(|e| io_error("migration socket", e))?;
        let mut input = BufReader::with_capacity(1 << 20, stream);
        match Machine::receive_from(&mut input, &mut answer, run) {
            Ok(machine) => {
                answer
                    .write_all(b"K")
                    .map_err(|e| io_error("answering the source", e))?;
                Ok(machine)
            }
            Err(e) => {
                let _ = answer.write_all(format!("F{e}").as_bytes());
                Err(e)
            }
        }
    }

    fn receive_from(
        input: &mut impl Read,
        answer: &mut impl Write,
        run: &MachineConfig,
    ) -> Result<Machine, BoardError> {
        let err = |e| io_error("receiving the machine", e);
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(err)?;
        if &head[..8] != MAGIC || head[8..] != VERSION.to_le_bytes() {
            return Err(BoardError::Migration(
                "the sender is not a popek migration of this version".into(),
            ));
        }
        let len = read_u64(input).map_err(err)?;
        if len > 1 << 20 {
            return Err(BoardError::Migration("oversized manifest".into()));
        }
        let mut manifest = vec![0u8; len as usize];
        input.read_exact(&mut manifest).map_err(err)?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| BoardError::Migration(format!("bad manifest: {e}")))?;
        let config = config_from(&manifest, run, Source::Migration)
            .map_err(|e| BoardError::Migration(e.to_string()))?;
        let mut machine = Machine::build(&config, false)?;
        if machine.virtio_types() != manifest.virtio {
            return Err(BoardError::Migration("the machines' devices differ".into()));
        }
        loop {
            let mut tag = [0u8; 1];
            input.read_exact(&mut tag).map_err(err)?;
            match tag[0] {
                b'P' => {
                    let p = read_u64(input).map_err(err)? as usize;
                    let page = machine
                        .dram_mut()?
                        .get_mut(p * PAGE..(p + 1) * PAGE)
                        .ok_or_else(|| BoardError::Migration(format!("page {p} is outside RAM")))?;
                    input.read_exact(page).map_err(err)?;
                }
                b'Q' => answer
                    .write_all(b"A")
                    .map_err(|e| io_error("answering the source's sync", e))?,
                b'S' => {
                    let len = read_u64(input).map_err(err)?;
                    if len > 64 << 20 {
                        return Err(BoardError::Migration("oversized state".into()));
                    }
                    let mut bytes = vec![0u8; len as usize];
                    input.read_exact(&mut bytes).map_err(err)?;
                    let state = StateFile::from_bytes(&bytes)
                        .map_err(|e| BoardError::Migration(e.to_string()))?;
                    machine
                        .restore_state(&state, false)
                        .map_err(|e| BoardError::Migration(e.to_string()))?;
                }
                b'E' => {
                    machine.take_over_disks()?;
                    return Ok(machine);
                }
                t => return Err(BoardError::Migration(format!("unknown record {t:#x}"))),
            }
        }
    }
}

fn read_u64(input: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Connect to `to` and copy RAM while the guest runs, until a round is small.
fn precopy(
    shared: &Arc<Shared>,
    manifest: &[u8],
    ram: &DramMapping,
    to: &str,
) -> Result<Outgoing, BoardError> {
    let started = Instant::now();
    let addr = to.strip_prefix("tcp:").unwrap_or(to);
    let stream =
        TcpStream::connect(addr).map_err(|e| io_error(&format!("connecting to {addr}"), e))?;
    let _ = stream.set_nodelay(true);
    let mut out = BufWriter::with_capacity(1 << 20, stream);
    let err = |e| io_error("sending RAM", e);
    out.write_all(MAGIC).map_err(err)?;
    out.write_all(&VERSION.to_le_bytes()).map_err(err)?;
    out.write_all(&(manifest.len() as u64).to_le_bytes())
        .map_err(err)?;
    out.write_all(manifest).map_err(err)?;
    let log = shared.dirty.clone();
    log.start();
    if !flush_writers(shared, &log) {
        return Err(BoardError::Migration("the machine stopped".into()));
    }
    let ram = ram.bytes();
    let size = ram.len() as u64;
    // Round 0: every page that is not all zero (the destination's RAM starts zeroed).
    let nonzero = (0..(size as usize / PAGE) as u64)
        .filter(|&p| ram[p as usize * PAGE..][..PAGE].iter().any(|&b| b != 0));
    let mut sent = send_pages(&mut out, ram, nonzero).map_err(err)?;
    let mut rounds = 1;
    loop {
        let pages = log.take();
        if !flush_writers(shared, &log) {
            return Err(BoardError::Migration("the machine stopped".into()));
        }
        let n = pages.len();
        sent += send_pages(&mut out, ram, pages.into_iter()).map_err(err)?;
        sync(&mut out)?;
        rounds += 1;
        tracing::info!("migration round {rounds}: {n} dirty pages");
        if n < SMALL_ROUND || rounds >= MAX_ROUNDS {
            break;
        }
    }
    Ok(Outgoing {
        out,
        to: to.to_string(),
        rounds,
        sent,
        started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that the migration is done counts as told only once its answer was written:
    /// the moved machine must not exit while the answer is still being written.
    #[test]
    fn done_is_told_once_its_answer_is_written() {
        let p = ProgressCell::default();
        p.set(MigrationProgress::Migrating { to: "x".into() });
        assert!(matches!(
            p.report(),
            Some(MigrationProgress::Migrating { .. })
        ));
        p.answered();
        assert!(!p.told_done.load(Ordering::SeqCst), "it said migrating");
        p.set(MigrationProgress::Done { to: "x".into() });
        assert!(matches!(p.report(), Some(MigrationProgress::Done { .. })));
        assert!(
            !p.told_done.load(Ordering::SeqCst),
            "the answer is not written yet"
        );
        p.answered();
        assert!(p.told_done.load(Ordering::SeqCst));
    }

    /// A destination that reads `before` bytes of the stream, then the sync record, and
    /// answers `reply`; what it read, for the test to check.
    fn destination(
        before: usize,
        reply: &'static [u8],
    ) -> (TcpStream, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = vec![0u8; before + 1];
            s.read_exact(&mut got).unwrap();
            s.write_all(reply).unwrap();
            got
        });
        (TcpStream::connect(addr).unwrap(), peer)
    }

    /// A sync sends what was buffered and then the sync record, and returns only once the
    /// destination answered, having read all of it.
    #[test]
    fn sync_returns_once_the_destination_has_read_everything() {
        let (stream, peer) = destination(3 * (9 + PAGE), b"A");
        let mut out = BufWriter::with_capacity(1 << 20, stream);
        let ram: Vec<u8> = (0..4 * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        send_pages(&mut out, &ram, [0, 2, 3].into_iter()).unwrap();
        sync(&mut out).unwrap();
        let got = peer.join().unwrap();
        assert_eq!(got[0], b'P');
        assert_eq!(got[1..9], 0u64.to_le_bytes());
        assert!(got[9..9 + PAGE].iter().all(|&b| b == 1));
        let last = 2 * (9 + PAGE);
        assert_eq!(got[last + 1..last + 9], 3u64.to_le_bytes());
        assert!(got[last + 9..last + 9 + PAGE].iter().all(|&b| b == 4));
        assert_eq!(*got.last().unwrap(), b'Q', "the sync record comes last");
    }

    /// A destination that gave up answers `F` and why: the sync fails with its reason, and so
    /// does an answer that is neither.
    #[test]
    fn sync_reports_a_refusing_destination() {
        let (stream, peer) = destination(0, b"Fpage 9 is outside RAM");
        let mut out = BufWriter::new(stream);
        let e = sync(&mut out).unwrap_err().to_string();
        peer.join().unwrap();
        assert!(
            e.contains("refused the machine: page 9 is outside RAM"),
            "{e}"
        );
        let (stream, peer) = destination(0, b"K");
        let e = sync(&mut BufWriter::new(stream)).unwrap_err().to_string();
        peer.join().unwrap();
        assert!(e.contains("answered 0x4b to a sync"), "{e}");
    }
}
