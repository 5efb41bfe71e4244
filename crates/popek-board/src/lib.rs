//! popek's `virt` board: the same memory map as QEMU's `virt` machine, so images and bare-metal
//! programs built for it run unchanged. The board owns guest RAM, the devices and the hart(s),
//! routes MMIO from the hart to devices ([`bus::VirtBus`]) and drives the run loop.

pub mod bus;
pub mod command_status;
pub mod console;
pub mod console_out;
pub mod error;
pub mod fdt;
pub mod jail;
pub mod loader;
pub mod machine;
pub mod memmap;
pub mod migrate;
mod shared_decode;
pub mod size;
pub mod snapshot;

pub use error::{BoardError, ParseError};
pub use machine::{
    parse_mac, DiskConfig, Machine, MachineConfig, MachineHandle, MachineState, NetBackendConfig,
    NetConfig, RunOutcome, RunStats, VsockConfig, DEFAULT_MAC,
};
