//! virtio-console, output only (virtio 1.2, section 5.3, without MULTIPORT): what the guest
//! writes to its `/dev/hvcN` goes byte for byte to a host descriptor. `popek run -- CMD` gives
//! the default guest two of them, so CMD's stdout and stderr reach popek's own stdout and
//! stderr separately and exactly (no terminal line discipline, no boot messages in between).
//!
//! The guest's driver waits for each transmit buffer to come back before its write returns, and
//! this device writes the bytes to the host before giving the buffer back: once the guest's
//! write(2) returned, the host has the data.

use std::io::Write;

use virtio_queue::{Queue, QueueT};

use crate::chain;
use crate::drain_queue;
use crate::{device_type, features, Activation, DeviceError, GuestMem, Signals, VirtioDevice};

const QUEUE_SIZE: u16 = 64;
const RECEIVE_QUEUE: usize = 0;
const TRANSMIT_QUEUE: usize = 1;

struct Active {
    mem: GuestMem,
    /// Never filled (no input), but kept so a snapshot can save it.
    receive: Queue,
    transmit: Queue,
    signals: std::sync::Arc<Signals>,
}

/// An output-only console port whose bytes go to a host writer.
pub struct Console {
    out: Box<dyn Write + Send>,
    active: Option<Active>,
}

impl Console {
    /// A port writing to `out` (popek's stdout or stderr).
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console { out, active: None }
    }

    fn transmit(&mut self) -> Result<(), DeviceError> {
        let Some(Active {
            mem,
            transmit,
            signals,
            ..
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let out = &mut self.out;
        drain_queue(transmit, mem, signals, |c| {
            let data = chain::gather(mem, &c.readable);
            // The host side going away (a closed pipe) loses the output, not the guest.
            let _ = out.write_all(&data).and_then(|()| out.flush());
            Ok(0)
        })
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: none offered (no SIZE, MULTIPORT or EMERG_WRITE).
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        let mut queues = a.queues;
        if queues.len() <= TRANSMIT_QUEUE || !queues[TRANSMIT_QUEUE].ready() {
            return Err(DeviceError::QueueNotSetUp {
                device: "virtio-console",
                queue: "transmit",
            });
        }
        let transmit = queues.swap_remove(TRANSMIT_QUEUE);
        let receive = queues.swap_remove(RECEIVE_QUEUE);
        self.active = Some(Active {
            mem: a.mem,
            receive,
            transmit,
            signals: a.signals,
        });
        Ok(())
    }

    fn notify(&mut self, index: u16) {
        if index as usize != TRANSMIT_QUEUE {
            return;
        }
        if let Err(e) = self.transmit() {
            if let Some(active) = &self.active {
                active.signals.fail(&e.to_string());
            }
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn take_queues(&mut self) -> Result<Vec<Queue>, DeviceError> {
        Ok(self
            .active
            .take()
            .map(|a| vec![a.receive, a.transmit])
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Driver;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_host_exactly() {
        let sink = Sink::default();
        let mut d = Driver::new(Box::new(Console::new(Box::new(sink.clone()))));
        d.setup(u64::MAX);
        let data = b"out\r\n\x00\xffbinary";
        let (a, b) = (d.alloc(6), d.alloc(data.len() as u64 - 6));
        d.write_mem(a, &data[..6]);
        d.write_mem(b, &data[6..]);
        let head = d.add(
            TRANSMIT_QUEUE,
            &[(a, 6, false), (b, data.len() as u32 - 6, false)],
        );
        d.notify(TRANSMIT_QUEUE);
        assert_eq!(d.used(TRANSMIT_QUEUE), Some((head, 0)));
        assert_eq!(sink.0.lock().unwrap().as_slice(), data);
        // Buffers on the receive queue stay with the device: there is no input.
        let r = d.alloc(16);
        d.add(RECEIVE_QUEUE, &[(r, 16, true)]);
        d.notify(RECEIVE_QUEUE);
        assert_eq!(d.used(RECEIVE_QUEUE), None);
    }
}
