//! virtio-rng (virtio spec §5.4): one request queue whose writable buffers the device fills
//! with bytes from the host's kernel random source.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, Writer};

use super::{
    pop_or_rearm, ActivateError, ActiveQueue, Counters, Interrupt, UsedBatch, VirtioDevice,
    TYPE_RNG,
};
use crate::memory::GuestMemoryMmap;

const QUEUE_SIZES: &[u16] = &[256];
/// At most this much entropy per request, so that one guest request cannot keep the device
/// busy or make it allocate without bound.
const MAX_REQUEST: usize = 64 << 10;

#[derive(Debug)]
pub struct Rng {
    source: File,
    active: Option<ActiveQueue>,
    /// Entropy bytes handed to the guest, for metrics.
    stats: Arc<Counters>,
    buf: Vec<u8>,
}

impl Rng {
    /// A device reading from `/dev/urandom`, which never blocks once the host is booted.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self::with_source(File::open("/dev/urandom")?))
    }

    fn with_source(source: File) -> Self {
        Self {
            source,
            active: None,
            stats: Counters::new(&["bytes"]),
            buf: vec![0; MAX_REQUEST],
        }
    }

    fn process(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let buf = &mut self.buf;
        let mut used = UsedBatch::new();
        while let Some(chain) = pop_or_rearm(&mut active.queue, &active.mem) {
            let head = chain.head_index();
            // A chain that points outside guest memory or loops is completed with nothing
            // written; the queue goes on.
            let written = match Writer::new(&active.mem, chain) {
                Ok(mut writer) => {
                    let want = writer.available_bytes().min(MAX_REQUEST);
                    match self.source.read_exact(&mut buf[..want]) {
                        Ok(()) => writer.write_all(&buf[..want]).map_or(0, |()| want),
                        Err(e) => {
                            tracing::warn!("virtio-rng: reading the host source: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-rng: bad descriptor chain {head}: {e}");
                    0
                }
            };
            self.stats.add(0, written as u64);
            let len = u32::try_from(written).unwrap_or(0);
            if !used.push(&mut active.queue, &active.mem, &active.interrupt, head, len) {
                // The used ring itself is out of guest memory: nothing more can be completed.
                tracing::debug!("virtio-rng: used ring unwritable");
                break;
            }
        }
        used.publish(&mut active.queue, &active.mem, &active.interrupt);
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueue::new(mem, queues, interrupt)?);
        // Requests posted before DRIVER_OK.
        self.process();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn counters(&self) -> Arc<Counters> {
        self.stats.clone()
    }
}
