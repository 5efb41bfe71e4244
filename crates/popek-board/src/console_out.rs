//! What the guest writes to its UART console, on its way to popek's stdout: buffered and flushed
//! by the run loop (every few milliseconds, on WFI and at exit) rather than after every byte; and
//! for `popek run -- CMD` held back until the guest says it is ready, so the user sees CMD's
//! output and not the firmware's banner and the kernel's chatter. What was held is dropped once
//! the guest is ready, or shown (its last lines) when it never gets there.

use std::collections::VecDeque;
use std::io::{BufWriter, Stdout, Write};

/// How much held output is kept (the tail shown when the guest fails to get ready).
const HELD_MAX: usize = 64 << 10;

/// The UART's output sink.
pub struct Console {
    out: BufWriter<Stdout>,
    /// Output held until the guest is ready (None: passed through).
    held: Option<VecDeque<u8>>,
}

impl Console {
    /// Output goes to stdout as the guest writes it.
    pub fn new() -> Console {
        Console {
            out: BufWriter::with_capacity(1 << 16, std::io::stdout()),
            held: None,
        }
    }

    /// Output is held (its last 64 KiB kept) until [`Console::release`].
    pub fn held() -> Console {
        Console {
            held: Some(VecDeque::new()),
            ..Console::new()
        }
    }

    /// Whether output is being held.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The guest is ready: drop what was held, pass everything after through.
    pub fn release(&mut self) {
        self.held = None;
    }

    /// The last `lines` complete or partial lines of what was held, if output is held.
    pub fn tail(&self, lines: usize) -> Option<String> {
        let held = self.held.as_ref()?;
        let bytes: Vec<u8> = held.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    /// Write buffered output to stdout.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.held {
            Some(held) => {
                held.extend(buf);
                let excess = held.len().saturating_sub(HELD_MAX);
                held.drain(..excess);
                Ok(buf.len())
            }
            None => self.out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_output_keeps_a_bounded_tail() {
        let mut c = Console::held();
        for i in 0..20_000 {
            writeln!(c, "line {i}\r").unwrap();
        }
        assert_eq!(c.tail(2).unwrap(), "line 19998\nline 19999");
        let held: usize = c.held.as_ref().unwrap().len();
        assert!(held <= HELD_MAX, "{held}");
        c.release();
        assert!(!c.holding());
        assert_eq!(c.tail(2), None);
    }
}
