//! Save and restore of a virtio-mmio transport and its device's queues.
//!
//! Saving asks the device for its queues ([`VirtioDevice::take_queues`]: it stops and hands them
//! back with nothing in flight), records the transport's registers and each queue's state, and
//! activates the device again on the same queues so the machine goes on. Restoring rebuilds the
//! registers on a freshly created device and, if the driver had started it, activates it on the
//! saved queues: the device resumes from the saved ring indexes.

use popek_persist::{Decoder, Encoder, Persist, PersistError};
use virtio_queue::{Queue, QueueState};

use crate::mmio::VirtioMmio;
#[cfg(doc)]
use crate::VirtioDevice;

fn save_queue(out: &mut Encoder, q: &QueueState) {
    out.u32(q.max_size as u32);
    out.u32(q.next_avail as u32);
    out.u32(q.next_used as u32);
    out.bool(q.event_idx_enabled);
    out.u32(q.size as u32);
    out.bool(q.ready);
    out.u64(q.desc_table);
    out.u64(q.avail_ring);
    out.u64(q.used_ring);
}

fn restore_queue(input: &mut Decoder<'_>) -> Result<Queue, PersistError> {
    let u16_field = |input: &mut Decoder<'_>, name| {
        let v = input.u32()?;
        u16::try_from(v).map_err(|_| input.invalid(name))
    };
    let max_size = u16_field(input, "queue max_size")?;
    let next_avail = u16_field(input, "queue next_avail")?;
    let next_used = u16_field(input, "queue next_used")?;
    let event_idx_enabled = input.bool("queue event_idx")?;
    let size = u16_field(input, "queue size")?;
    let ready = input.bool("queue ready")?;
    let state = QueueState {
        max_size,
        next_avail,
        next_used,
        event_idx_enabled,
        size,
        ready,
        desc_table: input.u64()?,
        avail_ring: input.u64()?,
        used_ring: input.u64()?,
    };
    Queue::try_from(state).map_err(|_| input.invalid("queue"))
}

impl Persist for VirtioMmio {
    const VERSION: u32 = 1;

    /// The machine pauses the device first ([`VirtioMmio::pause`]), so the queue states are
    /// those of a device with nothing in flight.
    fn save(&self, out: &mut Encoder) {
        let r = self.registers();
        out.u32(self.device_type());
        for v in [
            r.device_features_sel,
            r.driver_features_sel,
            r.queue_sel,
            r.status,
            r.config_generation,
            r.interrupt_status,
        ] {
            out.u32(v);
        }
        out.u64(r.driver_features);
        out.bool(r.failed);
        out.u64(r.queues.len() as u64);
        for (q, handed) in r.queues.iter().zip(&r.handed_over) {
            save_queue(out, q);
            out.bool(*handed);
        }
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        if input.u32()? != self.device_type() {
            return Err(input.invalid("device type (the machine's devices differ)"));
        }
        let mut w = [0u32; 6];
        for v in &mut w {
            *v = input.u32()?;
        }
        let driver_features = input.u64()?;
        let failed = input.bool("failed")?;
        let n = input.u64()?;
        if n != self.queue_count() as u64 {
            return Err(input.invalid("queue count"));
        }
        let mut queues = Vec::new();
        let mut handed_over = Vec::new();
        for _ in 0..n {
            queues.push(restore_queue(input)?);
            handed_over.push(input.bool("queue handed over")?);
        }
        let [device_features_sel, driver_features_sel, queue_sel, status, config_generation, interrupt_status] =
            w;
        self.set_registers(
            crate::mmio::Registers {
                device_features_sel,
                driver_features_sel,
                queue_sel,
                status,
                config_generation,
                interrupt_status,
                driver_features,
                failed,
                queues: Vec::new(),
                handed_over,
            },
            queues,
        )
        .map_err(|e| {
            tracing::warn!("restoring a virtio device: {e}");
            input.invalid("queues (the device refused them)")
        })
    }
}
