//! COM1: a 16550A (vm-superio) whose output goes to a file, our stdout, or nowhere.
//!
//! The output outlives a boot: a reboot builds a new UART but keeps writing to the same place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
/// Writes (one per guest byte, typically) queued for stdout before output is dropped. The
/// queue's slots are allocated up front, so it stays small: the writer thread drains it far
/// faster than a guest can fill it through port I/O exits.
const STDOUT_QUEUE: usize = 1024;
pub const COM1_LEN: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// A serial log that rotates: past `max` bytes the file becomes `<path>.old` and a new one
/// starts, so a chatty guest keeps its latest output without filling the host's disk.
#[derive(Debug)]
struct RotatingFile {
    file: File,
    path: PathBuf,
    written: u64,
    max: u64,
    /// The old log is emptied with the guest's first byte, not when the file is opened: a
    /// VMM that fails before its guest runs (a drive another VMM holds) leaves the log alone.
    emptied: bool,
}

impl RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.emptied {
            self.file.set_len(0)?;
            self.emptied = true;
        }
        if self.written + buf.len() as u64 > self.max && self.written > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".old");
            std::fs::rename(&self.path, old)?;
            self.file = File::create(&self.path)?;
            self.written = 0;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
enum Sink {
    File(RotatingFile),
    /// Bytes go to a writer thread through a bounded queue: a stdout pipe nobody reads must
    /// not block a vCPU (and with it pause, stop and shutdown); when the queue is full, guest
    /// output is dropped.
    Stdout {
        queue: SyncSender<Vec<u8>>,
        drained: Receiver<()>,
    },
    Off,
    #[cfg(test)]
    Memory(Vec<u8>),
}

/// Where serial bytes go; cheap to clone, shared by every boot of the VM.
#[derive(Debug, Clone)]
pub struct SerialOutput(Arc<Mutex<Sink>>);

impl SerialOutput {
    /// A log at `path`, emptied when the guest first writes, that rotates past `max` bytes.
    pub fn file(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        Ok(Self::with(Sink::File(RotatingFile {
            file,
            path: path.to_owned(),
            written: 0,
            max: max.max(1),
            emptied: false,
        })))
    }

    pub fn stdout() -> std::io::Result<Self> {
        let (queue, rx) = sync_channel::<Vec<u8>>(STDOUT_QUEUE);
        let (drained_tx, drained) = channel();
        std::thread::Builder::new()
            .name("serial-stdout".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let mut out = std::io::stdout();
                let mut batch = Vec::new();
                while let Ok(first) = rx.recv() {
                    // One write for everything queued meanwhile, not one per guest byte.
                    batch.clear();
                    batch.extend_from_slice(&first);
                    while let Ok(more) = rx.try_recv() {
                        batch.extend_from_slice(&more);
                    }
                    if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
                let _ = drained_tx.send(());
            })?;
        Ok(Self::with(Sink::Stdout { queue, drained }))
    }

    /// Stops taking output and waits, at most `grace`, until what was queued is written.
    pub fn finish(&self, grace: Duration) {
        let sink = std::mem::replace(&mut *self.lock(), Sink::Off);
        if let Sink::Stdout { queue, drained } = sink {
            drop(queue);
            let _ = drained.recv_timeout(grace);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn off() -> Self {
        Self::with(Sink::Off)
    }

    #[cfg(test)]
    pub fn memory() -> Self {
        Self::with(Sink::Memory(Vec::new()))
    }

    #[cfg(test)]
    pub fn captured(&self) -> Vec<u8> {
        match &*self.0.lock().unwrap() {
            Sink::Memory(v) => v.clone(),
            _ => Vec::new(),
        }
    }

    fn with(sink: Sink) -> Self {
        Self(Arc::new(Mutex::new(sink)))
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *self.lock() {
            // Unbuffered: whoever watches the file sees each byte as the guest writes it.
            Sink::File(f) => f.write(buf),
            Sink::Stdout { queue, .. } => {
                // Full queue or a dead writer: the bytes are dropped, the guest goes on.
                let _ = queue.try_send(buf.to_vec());
                Ok(buf.len())
            }
            Sink::Off => Ok(buf.len()),
            #[cfg(test)]
            Sink::Memory(v) => v.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Raises COM1's interrupt through a KVM irqfd; without one (unit tests) it does nothing.
#[derive(Debug)]
pub struct IrqTrigger(Option<EventFd>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// The UART of one boot.
pub struct GuestSerial(Serial<IrqTrigger, NoEvents, SerialOutput>);

impl std::fmt::Debug for GuestSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestSerial")
    }
}

impl GuestSerial {
    pub fn new(out: SerialOutput, irq: Option<EventFd>) -> Self {
        Self(Serial::new(IrqTrigger(irq), out))
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }

    pub fn write(
        &mut self,
        offset: u8,
        value: u8,
    ) -> Result<(), vm_superio::serial::Error<std::io::Error>> {
        self.0.write(offset, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_output_rotates_past_its_limit() {
        let dir = std::env::temp_dir().join(format!("triad-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        std::fs::write(&path, b"the previous boot's log").unwrap();
        let mut out = SerialOutput::file(&path, 100).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"the previous boot's log");
        for _ in 0..25 {
            out.write_all(b"0123456789").unwrap();
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("serial.log.old")).unwrap().len();
        assert!(current <= 100 && old <= 100, "{current} {old}");
        assert_eq!(current + old, 150, "the latest 150 bytes survive");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
