//! virtio-rng: the guest's entropy source is the host's `getrandom` (virtio 1.2, section 5.4).

use crate::chain;
use crate::drain_queue;
use crate::{device_type, features, Activation, DeviceError, SingleQueue, VirtioDevice};

const QUEUE_SIZE: u16 = 64;
/// Most bytes handed out per request (bounds the work one notification causes).
const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    active: Option<SingleQueue>,
}

impl Rng {
    /// A device with no queue yet.
    pub fn new() -> Rng {
        Rng::default()
    }

    fn process(&mut self) -> Result<(), DeviceError> {
        let Some(SingleQueue {
            mem,
            queue,
            signals,
            wrote,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let mem = &*mem;
        drain_queue(queue, mem, signals, |chain| {
            let want = (chain::total_len(&chain.writable) as usize).min(MAX_REQUEST);
            let mut buf = vec![0u8; want];
            fill_random(&mut buf).map_err(DeviceError::Entropy)?;
            let n = chain::scatter(mem, &chain.writable, &buf);
            for s in &chain.writable {
                wrote(s.addr, s.len as u64);
            }
            Ok(n as u32)
        })
    }
}

/// Fill `buf` from the host's `getrandom(2)`.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        self.active = Some(a.single_queue("virtio-rng")?);
        Ok(())
    }

    fn notify(&mut self, _index: u16) {
        if let Err(e) = self.process() {
            if let Some(active) = &self.active {
                active.signals.fail(&e.to_string());
            }
        }
    }

    fn take_queues(&mut self) -> Result<Vec<virtio_queue::Queue>, DeviceError> {
        Ok(self
            .active
            .take()
            .map(|a| vec![a.queue])
            .unwrap_or_default())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
