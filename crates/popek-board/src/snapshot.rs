//! Snapshots: save a stopped machine to a directory and build a running one from it.
//!
//! A snapshot directory holds three files:
//! - `manifest.json`: format and popek version, the machine's configuration (RAM, harts, boot
//!   images, command line, devices in slot order) and each disk with a content check (size and
//!   modification time): what a restore must rebuild before any state goes in;
//! - `state.bin`: a [`StateFile`] with one versioned section per hart and device, checksummed;
//! - `ram.img`: guest RAM at guest-physical offsets from the start of DRAM, as a sparse file
//!   (only pages that are not all zero are written), so its size on disk is close to what the
//!   guest touched.
//!
//! A restore maps `ram.img` copy-on-write (`MAP_PRIVATE`) instead of reading it: it costs
//! nothing up front, the guest faults pages in as it touches them, and many restored machines
//! share the snapshot's pages through the host's page cache. The manifest is written last, so
//! a save that failed half-way leaves no manifest and is not taken for a snapshot. Caches (TLBs,
//! decoded code) are never saved; interrupt levels are recomputed from the restored devices.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use popek_persist::{Decoder, Encoder, Persist, PersistError, StateFile};
use serde::{Deserialize, Serialize};

use crate::error::{BoardError, ParseError};
use crate::machine::{DiskConfig, Machine, MachineConfig, NetBackendConfig, NetConfig};
use crate::memmap;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The state file's name.
pub const STATE: &str = "state.bin";
/// The RAM file's name.
pub const RAM: &str = "ram.img";
/// Version of the directory layout and manifest.
const FORMAT: u32 = 1;
const PAGE: usize = 4096;

/// What a snapshot was taken of.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    format: u32,
    popek: String,
    memory: u64,
    cpus: u32,
    bios: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: String,
    rng: bool,
    /// The network card's MAC address and backend ("user" or "tap:NAME").
    net: Option<(String, String)>,
    command_output: bool,
    disks: Vec<DiskEntry>,
    /// virtio device types in slot order (a check that the rebuilt machine matches).
    pub(crate) virtio: Vec<u32>,
    /// Bytes of RAM written to `ram.img` (pages that were not all zero).
    ram_saved: u64,
}

/// A disk and the content check that tells whether it changed since the snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct DiskEntry {
    /// The image; relative to the snapshot directory when `in_snapshot`.
    path: PathBuf,
    readonly: bool,
    size: u64,
    mtime_ns: i128,
    /// A copy saved with the snapshot (a machine that ran on after its save goes on writing
    /// its own image).
    #[serde(default)]
    in_snapshot: bool,
}

fn disk_entry(d: &DiskConfig) -> Result<DiskEntry, BoardError> {
    if d.cow && !d.readonly {
        return Err(BoardError::CowDiskNotSaved(d.path.clone()));
    }
    let meta = std::fs::metadata(&d.path).map_err(|source| BoardError::SnapshotIo {
        path: d.path.clone(),
        source,
    })?;
    Ok(DiskEntry {
        path: d.path.clone(),
        readonly: d.readonly,
        size: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        in_snapshot: false,
    })
}

/// The name of disk `k`'s copy in a snapshot directory.
fn disk_copy_name(k: usize) -> String {
    format!("disk-{k}.img")
}

/// Copy the `size` bytes of `from` into `to` (emptied first), keeping holes: only the data
/// extents `SEEK_DATA`/`SEEK_HOLE` report are read and written.
fn copy_sparse(from: &File, to: &File, size: u64) -> std::io::Result<()> {
    to.set_len(0)?;
    to.set_len(size)?;
    let fd = from.as_raw_fd();
    let seek = |pos: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we hold; no memory is involved.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut at = data;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = end;
    }
    to.sync_all()
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A byte string as a state section (the mask ROM).
struct Blob(Vec<u8>);

impl Persist for Blob {
    const VERSION: u32 = 1;
    fn save(&self, out: &mut Encoder) {
        out.bytes(&self.0);
    }
    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let b = input.bytes()?;
        if b.len() != self.0.len() {
            return Err(input.invalid("size"));
        }
        self.0.copy_from_slice(b);
        Ok(())
    }
}

/// A snapshot directory's files, created and opened before the machine runs (and is jailed).
#[derive(Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    state: File,
    ram: File,
    manifest: File,
    ram_size: u64,
    /// A snapshot was saved into these files already (zero pages must then be punched out).
    used: bool,
    /// Per disk of the machine: the file its copy goes to, for the writable disks of a
    /// machine that runs on after the save.
    disk_copies: Vec<Option<File>>,
}

impl SnapshotFiles {
    /// Create `dir` (if missing) and empty files for `config`'s machine. A snapshot already
    /// there stops being one (its files are replaced by new ones, the manifest first;
    /// restores of it still running keep the old ones). With `runs_on` (the machine goes
    /// on after a save, and so goes on writing its disks), each writable disk is copied into
    /// the snapshot when it is saved, so the snapshot keeps the disk as the guest saw it.
    pub fn create(
        dir: &Path,
        config: &MachineConfig,
        runs_on: bool,
    ) -> Result<SnapshotFiles, BoardError> {
        std::fs::create_dir_all(dir).map_err(|source| BoardError::SnapshotDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        // New files, not the old ones truncated: restores still running from a snapshot
        // there map its RAM and read its disk copies, which must not change under them. The
        // manifest goes first, so the directory stops being a snapshot at once.
        let open = |name: &str| {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(&path)(e));
                }
                _ => {}
            }
            File::create(&path).map_err(io_err(&path))
        };
        let manifest = open(MANIFEST)?;
        let state = open(STATE)?;
        let ram = open(RAM)?;
        ram.set_len(config.memory).map_err(io_err(&dir.join(RAM)))?;
        let disk_copies = config
            .disks
            .iter()
            .enumerate()
            .map(|(k, d)| {
                (runs_on && !d.readonly && !d.cow)
                    .then(|| open(&disk_copy_name(k)))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            state,
            ram,
            manifest,
            ram_size: config.memory,
            used: false,
            disk_copies,
        })
    }
}

/// How much a save wrote.
#[derive(Clone, Copy, Debug)]
pub struct SaveReport {
    /// Bytes of RAM written (pages that were not all zero).
    pub ram_saved: u64,
    /// Guest RAM size.
    pub ram_size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BoardError + '_ {
    move |source| BoardError::SnapshotIo {
        path: path.to_path_buf(),
        source,
    }
}

impl Machine {
    /// Save the stopped machine into `files` (opened by [`SnapshotFiles::create`] before the
    /// machine ran: a jailed popek cannot create files). Devices stop their work while they are
    /// saved and go on afterwards, so the machine can run on.
    pub fn save(&mut self, files: &mut SnapshotFiles) -> Result<SaveReport, BoardError> {
        if self.config.vsock.is_some() {
            return Err(BoardError::NotSaveable(
                "the vsock device's connections cannot be saved: snapshot a machine without --vsock".into(),
            ));
        }
        if files.ram_size != self.config.memory {
            return Err(BoardError::Internal(
                "snapshot files sized for another machine".into(),
            ));
        }
        // An empty manifest first: until the new one is complete, the directory is no snapshot.
        let manifest_path = files.dir.join(MANIFEST);
        files
            .manifest
            .set_len(0)
            .and_then(|_| files.manifest.sync_all())
            .map_err(io_err(&manifest_path))?;
        let state = self.save_state(true)?;
        let f = &files.state;
        f.set_len(0)
            .and_then(|_| f.write_all_at(&state, 0))
            .and_then(|_| f.sync_all())
            .map_err(io_err(&files.dir.join(STATE)))?;
        let ram_saved = self.save_ram(&files.ram, &files.dir.join(RAM), files.used)?;
        files.used = true;
        let mut manifest = self.manifest(ram_saved)?;
        self.save_disk_copies(files, &mut manifest)?;
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| BoardError::Internal(format!("manifest: {e}")))?;
        files
            .manifest
            .write_all_at(text.as_bytes(), 0)
            .and_then(|_| files.manifest.sync_all())
            .map_err(io_err(&manifest_path))?;
        Ok(SaveReport {
            ram_saved,
            ram_size: self.config.memory,
        })
    }

    /// Copy the disks `files` has copies for (the harts are stopped: no request is in flight)
    /// and point the manifest at the copies.
    fn save_disk_copies(
        &self,
        files: &SnapshotFiles,
        manifest: &mut Manifest,
    ) -> Result<(), BoardError> {
        for (k, to) in files.disk_copies.iter().enumerate() {
            let (Some(to), Some(disk)) = (to, self.config.disks.get(k)) else {
                continue;
            };
            let copy = files.dir.join(disk_copy_name(k));
            let from = File::open(&disk.path).map_err(io_err(&disk.path))?;
            let size = from.metadata().map_err(io_err(&disk.path))?.len();
            copy_sparse(&from, to, size).map_err(io_err(&copy))?;
            let meta = to.metadata().map_err(io_err(&copy))?;
            manifest.disks[k] = DiskEntry {
                path: PathBuf::from(disk_copy_name(k)),
                readonly: disk.readonly,
                size: meta.len(),
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                in_snapshot: true,
            };
        }
        Ok(())
    }

    /// Every hart's and device's state, as the bytes of a state file. With `resume`, devices
    /// go on afterwards; without, they stay paused (a migration's final copy, which must not
    /// see them write guest RAM any more).
    pub(crate) fn save_state(&mut self, resume: bool) -> Result<Vec<u8>, BoardError> {
        let mut file = StateFile::new();
        for (i, hart) in self.harts.iter().enumerate() {
            file.put(format!("hart{i}"), hart);
        }
        let mut mrom = Blob(vec![0; memmap::MROM_SIZE as usize]);
        self.harts[0]
            .memory()
            .read(memmap::MROM, &mut mrom.0)
            .ok_or_else(|| BoardError::Internal("mask ROM missing".into()))?;
        file.put("mrom", &mrom);
        let mut devices = self.shared.devices();
        let bus = &mut devices.bus;
        let mut paused = Vec::new();
        let mut failure = None;
        for (slot, v) in bus.virtio.iter_mut().enumerate() {
            match v.pause() {
                Ok(()) => paused.push(slot),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            // An edge the UART raised since the last slice is not device state yet: move it
            // into the PLIC's pending bits, or the restored guest would wait for it forever.
            bus.route_interrupts();
            file.put("clint", &bus.clint);
            file.put("plic", &bus.plic);
            file.put("uart", &bus.uart);
            file.put("finisher", &bus.finisher);
            file.put("boot-timer", &bus.boot_timer);
            file.put("vmgenid", &bus.vmgenid);
            for (slot, v) in bus.virtio.iter().enumerate() {
                file.put(format!("virtio{slot}"), v);
            }
            for h in &mut self.harts {
                h.flush_caches();
            }
        }
        // Devices go on if asked to, and whenever the save failed.
        if resume || failure.is_some() {
            for slot in paused {
                bus.virtio[slot].resume();
            }
        }
        match failure {
            Some(e) => Err(BoardError::NotSaveable(e.to_string())),
            None => Ok(file.to_bytes()),
        }
    }

    /// Write guest RAM into `f` (a sparse file of RAM's size) at guest-physical offsets;
    /// with `punch`, runs of zero pages become holes (the file held an earlier save). Returns
    /// the bytes written.
    fn save_ram(&self, f: &File, path: &Path, punch: bool) -> Result<u64, BoardError> {
        // The harts are stopped and the devices paused or idle (a device thread writing now
        // would be a bug of its own: the snapshot would then be torn).
        let dram = self.dram_mapping()?;
        let ram = dram.bytes();
        let mut written = 0u64;
        let mut run = |zero: bool, start: usize, end: usize| -> std::io::Result<()> {
            if !zero {
                written += (end - start) as u64;
                return f.write_all_at(&ram[start..end], start as u64);
            }
            if punch {
                // SAFETY: fallocate on an open descriptor with a range inside the file.
                let rc = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        start as libc::off_t,
                        (end - start) as libc::off_t,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        let mut start = 0;
        let mut zero_run = true;
        for (i, page) in ram.chunks(PAGE).enumerate() {
            let zero = page.iter().all(|&b| b == 0);
            if zero != zero_run {
                if i * PAGE > start {
                    run(zero_run, start, i * PAGE).map_err(io_err(path))?;
                }
                start = i * PAGE;
                zero_run = zero;
            }
        }
        if ram.len() > start {
            run(zero_run, start, ram.len()).map_err(io_err(path))?;
        }
        f.sync_all().map_err(io_err(path))?;
        Ok(written)
    }

    pub(crate) fn manifest(&self, ram_saved: u64) -> Result<Manifest, BoardError> {
        let c = &self.config;
        let net = c.net.as_ref().map(|n| {
            let backend = match &n.backend {
                NetBackendConfig::User { .. } => "user".to_string(),
                NetBackendConfig::Tap { name } => format!("tap:{name}"),
            };
            (mac_string(n.mac), backend)
        });
        let virtio = self.virtio_types();
        Ok(Manifest {
            format: FORMAT,
            popek: env!("CARGO_PKG_VERSION").to_string(),
            memory: c.memory,
            cpus: c.cpus,
            bios: c.bios.clone(),
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            append: c.append.clone(),
            rng: c.rng,
            net,
            command_output: c.command_output,
            disks: c.disks.iter().map(disk_entry).collect::<Result<_, _>>()?,
            virtio,
            ram_saved,
        })
    }

    /// Build the machine saved in `dir`. `run` gives what is not part of a snapshot (the jail,
    /// quiet console, debugger, forwarded ports); the rest comes from the manifest.
    pub fn restore(dir: &Path, run: &MachineConfig) -> Result<Machine, BoardError> {
        let refused = |reason: String| BoardError::SnapshotRefused {
            dir: dir.to_path_buf(),
            reason,
        };
        let manifest_path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(refused(format!(
                    "no {MANIFEST}: not a snapshot (create one with popek snapshot create {})",
                    dir.display()
                )))
            }
            Err(source) => {
                return Err(BoardError::SnapshotIo {
                    path: manifest_path,
                    source,
                })
            }
        };
        if text.is_empty() {
            return Err(refused(
                "its save did not finish (empty manifest): create the snapshot again".into(),
            ));
        }
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            refused(format!(
                "{MANIFEST} is damaged ({e}): create the snapshot again"
            ))
        })?;
        if manifest.format != FORMAT {
            return Err(refused(format!(
                "its format is {}, this popek reads {FORMAT}: create the snapshot again",
                manifest.format
            )));
        }
        let config = config_from(&manifest, run, Source::Snapshot(dir))
            .map_err(|e| refused(e.to_string()))?;
        let state_path = dir.join(STATE);
        let state_bytes = std::fs::read(&state_path).map_err(io_err(&state_path))?;
        let state =
            StateFile::from_bytes(&state_bytes).map_err(|source| BoardError::SnapshotState {
                dir: dir.to_path_buf(),
                source,
            })?;
        let mut machine = Machine::build(&config, false)?;
        let types = machine.virtio_types();
        if types != manifest.virtio {
            return Err(refused(format!(
                "its devices {:?} differ from the rebuilt machine's {types:?}",
                manifest.virtio
            )));
        }
        tracing::info!("snapshot {}: machine rebuilt", dir.display());
        machine.map_ram(&dir.join(RAM))?;
        let shared = run.restore_shares_decode.then(|| {
            crate::shared_decode::open(&dir.join(RAM), memmap::DRAM >> 12, machine.config.memory)
        });
        if let Some((shared, path)) = shared.flatten() {
            for hart in &mut machine.harts {
                hart.set_shared_decode(shared.clone());
            }
            machine.shared_decode = Some((shared, path));
        }
        machine
            .restore_state(&state, true)
            .map_err(|source| BoardError::SnapshotState {
                dir: dir.to_path_buf(),
                source,
            })?;
        tracing::info!("snapshot {}: restored", dir.display());
        Ok(machine)
    }

    /// Map `path` copy-on-write over guest DRAM.
    fn map_ram(&mut self, path: &Path) -> Result<(), BoardError> {
        let size = self.config.memory;
        let f = File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        if len != size {
            return Err(BoardError::SnapshotRefused {
                dir: path.parent().unwrap_or(path).to_path_buf(),
                reason: format!(
                    "{RAM} holds {len} bytes but the machine has {size}: the snapshot is damaged"
                ),
            });
        }
        let dram = self.dram_mapping()?;
        // SAFETY: `host..host+size` is DRAM's anonymous mapping, owned by `self.ram` and not yet
        // used by anyone (the harts have not run); MAP_FIXED replaces it in place with a private
        // mapping of the same size and protection, which `self.ram` unmaps when dropped as before.
        let rc = unsafe {
            libc::mmap(
                dram.host as *mut libc::c_void,
                dram.size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                f.as_raw_fd(),
                0,
            )
        };
        if rc == libc::MAP_FAILED {
            return Err(io_err(path)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Put `state` into the machine just built. `new_generation`: a restore from a snapshot
    /// (possibly one of many clones), not the same machine moved by a migration.
    pub(crate) fn restore_state(
        &mut self,
        state: &StateFile,
        new_generation: bool,
    ) -> Result<(), PersistError> {
        for (i, hart) in self.harts.iter_mut().enumerate() {
            state.get(&format!("hart{i}"), hart)?;
        }
        if state.has(&format!("hart{}", self.harts.len())) {
            return Err(PersistError::MissingSection(format!(
                "only {} harts (the snapshot has more; restore with its --cpus)",
                self.harts.len()
            )));
        }
        let mut mrom = Blob(vec![0; memmap::MROM_SIZE as usize]);
        state.get("mrom", &mut mrom)?;
        let mem = self.harts[0].memory().clone();
        mem.write(memmap::MROM, &mrom.0)
            .ok_or_else(|| PersistError::MissingSection("mask ROM".into()))?;
        let mut devices = self.shared.devices();
        let bus = &mut devices.bus;
        state.get("clint", &mut bus.clint)?;
        state.get("plic", &mut bus.plic)?;
        state.get("uart", &mut bus.uart)?;
        state.get("finisher", &mut bus.finisher)?;
        state.get("boot-timer", &mut bus.boot_timer)?;
        state.get("vmgenid", &mut bus.vmgenid)?;
        if new_generation {
            // A restored machine is a new generation: the guest reseeds its random generator.
            bus.new_generation();
        }
        for (slot, v) in bus.virtio.iter_mut().enumerate() {
            state.get(&format!("virtio{slot}"), v)?;
        }
        // Console input that came while restoring goes to the restored UART now.
        devices.hold_input = false;
        devices.update(&self.shared.pins);
        drop(devices);
        for h in &mut self.harts {
            h.flush_caches();
        }
        Ok(())
    }

    /// The virtio device types in slot order.
    pub(crate) fn virtio_types(&self) -> Vec<u32> {
        let devices = self.shared.devices();
        devices.bus.virtio.iter().map(|v| v.device_type()).collect()
    }

    /// Queue `bytes` as console input, as if typed (e.g. the command a restored guest runs).
    pub fn type_input(&self, bytes: &[u8]) {
        let mut devices = self.shared.devices();
        devices.pending_input.extend_from_slice(bytes);
        devices.update(&self.shared.pins);
    }
}

/// Why the machine a manifest describes cannot be built again here (a restore or a
/// migration's destination refuses it with this message).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A disk of the snapshot cannot be examined.
    #[error(transparent)]
    Disk(BoardError),
    /// A disk's size or modification time differ from the saved ones.
    #[error("disk {} changed since the snapshot was taken (the restored guest's caches would not match it): create the snapshot again", .0.display())]
    DiskChanged(PathBuf),
    /// The saved MAC address is not one.
    #[error(transparent)]
    Mac(#[from] ParseError),
    /// A network was asked of a machine saved without a network card.
    #[error("the saved machine has no network card (the guest would not see one): drop --net and --publish")]
    NoNetCard,
}

/// Where a manifest comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    /// A snapshot directory (disk copies saved with it are found there).
    Snapshot(&'a Path),
    /// A migration: the same machine moving, not a clone.
    Migration,
}

/// The machine configuration a snapshot was taken of, with the run-time settings of `run`.
/// Writable disks are copy-on-write unless `run.restore_writes_disks` or the machine is
/// migrating (then it is the same machine, not a clone: it goes on writing its disks).
pub(crate) fn config_from(
    m: &Manifest,
    run: &MachineConfig,
    from: Source<'_>,
) -> Result<MachineConfig, ConfigError> {
    let mut disks = Vec::new();
    for d in &m.disks {
        let path = match from {
            Source::Snapshot(dir) if d.in_snapshot => dir.join(&d.path),
            _ => d.path.clone(),
        };
        let now = disk_entry(&DiskConfig {
            path: path.clone(),
            readonly: d.readonly,
            cow: false,
            handed_over: false,
        })
        .map_err(ConfigError::Disk)?;
        // A migrating machine's source writes its disks until it stops (and then hands them
        // over under their locks): only their size must agree.
        let moved = matches!(from, Source::Migration);
        if now.size != d.size || (now.mtime_ns != d.mtime_ns && !moved) {
            return Err(ConfigError::DiskChanged(path));
        }
        disks.push(DiskConfig {
            path,
            readonly: d.readonly,
            cow: !d.readonly && !run.restore_writes_disks && !moved,
            handed_over: moved,
        });
    }
    // The card is the saved one (the guest read its MAC address at boot); its backend is the
    // run's if it names one (a clone on a tap of its own), else the saved one.
    let net = match (&m.net, &run.net) {
        (None, None) => None,
        (None, Some(_)) => return Err(ConfigError::NoNetCard),
        (Some((mac, backend)), asked) => Some(NetConfig {
            mac: crate::machine::parse_mac(mac)?,
            backend: match (asked, backend.strip_prefix("tap:")) {
                (Some(asked), _) => asked.backend.clone(),
                (None, Some(name)) => NetBackendConfig::Tap { name: name.into() },
                (None, None) => NetBackendConfig::User {
                    publish: Vec::new(),
                },
            },
        }),
    };
    Ok(MachineConfig {
        memory: m.memory,
        cpus: m.cpus,
        bios: m.bios.clone(),
        kernel: m.kernel.clone(),
        initrd: m.initrd.clone(),
        append: m.append.clone(),
        disks,
        rng: m.rng,
        net,
        vsock: None,
        jail: run.jail,
        command_output: m.command_output,
        quiet_boot: run.quiet_boot,
        debug: run.debug.clone(),
        stop_when_ready: false,
        engine: run.engine,
        restore_writes_disks: run.restore_writes_disks,
        restore_shares_decode: run.restore_shares_decode,
        // A restored guest was ready when it was saved.
        hold_input_until_ready: false,
        stop_on_reset: run.stop_on_reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Creating a snapshot where one is leaves the old RAM image to the restores mapping it:
    /// their guest memory does not change under them.
    #[test]
    fn a_new_snapshot_leaves_running_restores_their_ram() {
        let dir = std::env::temp_dir().join(format!("popek-snapshot-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(RAM), vec![0x5au8; 8192]).unwrap();
        let old = File::open(dir.join(RAM)).unwrap();
        // SAFETY: a new private read-only mapping of a file we own, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                old.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let config = MachineConfig {
            memory: 8192,
            ..MachineConfig::default()
        };
        let files = SnapshotFiles::create(&dir, &config, false).unwrap();
        // SAFETY: the mapping is 8192 readable bytes.
        let seen = unsafe { std::slice::from_raw_parts(p as *const u8, 8192) };
        assert!(
            seen.iter().all(|b| *b == 0x5a),
            "the running restore's RAM changed"
        );
        let new = std::fs::read(dir.join(RAM)).unwrap();
        assert_eq!(new, vec![0u8; 8192], "the new image starts empty");
        // SAFETY: mapped above with this length.
        unsafe { libc::munmap(p, 8192) };
        drop(files);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
