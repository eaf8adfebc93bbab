//! The I/O thread of one virtio device: it waits on the device's queue-notify eventfds (which
//! KVM signals directly on the guest's QueueNotify write, without a vCPU exit to us) and runs
//! the device's queue processing.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::MmioTransport;

/// The epoll token of the stop eventfd; queue eventfds use their queue index, host events
/// `HOST + index`.
const STOP: u64 = u64::MAX;
const HOST: u64 = 1 << 32;

/// A running device thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Serves `transport`'s queues, queue `i` being notified through `queue_events[i]`.
    pub fn spawn(
        name: String,
        transport: Arc<Mutex<MmioTransport>>,
        queue_events: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        for (index, event) in (0u64..).zip(&queue_events) {
            epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                // Edge-triggered: every notify (every eventfd write) wakes us once, so the
                // counter never needs a read syscall to re-arm.
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, index),
            )?;
        }
        let host_events = transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .host_events();
        for (index, fd) in (0u64..).zip(&host_events) {
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, HOST + index),
            )?;
        }
        let thread_stop = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(256 << 10)
            .spawn(move || run(&epoll, &thread_stop, &transport, &queue_events))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(epoll: &Epoll, stop: &EventFd, transport: &Mutex<MmioTransport>, queues: &[EventFd]) {
    let mut events = vec![EpollEvent::default(); queues.len() + 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == STOP {
                let _ = stop.read();
                return;
            }
            if token >= HOST {
                let index = usize::try_from(token - HOST).unwrap_or(usize::MAX);
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .host_event(index);
                continue;
            }
            if let Ok(index) = u16::try_from(token) {
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notify_queue(index);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
