//! COM1: a 16550A (vm-superio) whose output goes to a file, our stdout, or nowhere.
//!
//! The output outlives a boot: a reboot builds a new UART but keeps writing to the same place.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

#[derive(Debug)]
enum Sink {
    File(File),
    Stdout,
    Off,
    #[cfg(test)]
    Memory(Vec<u8>),
}

/// Where serial bytes go; cheap to clone, shared by every boot of the VM.
#[derive(Debug, Clone)]
pub struct SerialOutput(Arc<Mutex<Sink>>);

impl SerialOutput {
    pub fn file(file: File) -> Self {
        Self::with(Sink::File(file))
    }

    pub fn stdout() -> Self {
        Self::with(Sink::Stdout)
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
        let mut sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *sink {
            // Unbuffered: whoever watches the file sees each byte as the guest writes it.
            Sink::File(f) => f.write(buf),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
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
