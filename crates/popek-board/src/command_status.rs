//! The exit status of `popek run -- CMD`, as the default guest's init reports it: one line
//! with the number, written to a third output-only virtio console (its `/dev/hvc2`, next to
//! CMD's stdout and stderr). Writing a line to a device is a shell builtin, where the test
//! finisher needs `devmem`: a fork and an exec of busybox, about 1.5 million guest
//! instructions, which were most of what a restored clone ran for `-- true`.

use std::io::Write;
use std::sync::Mutex;

/// The status the guest reported, until the hart loop takes it to stop the machine.
#[derive(Debug, Default)]
pub struct CommandStatus {
    code: Mutex<Option<u32>>,
}

impl CommandStatus {
    /// The reported status, once (the machine stops on it).
    pub fn take(&self) -> Option<u32> {
        self.code.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn set(&self, code: u32) {
        *self.code.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
    }
}

/// Longest line the port keeps: a status is at most three digits, a terminal adds `\r`.
const MAX_LINE: usize = 16;

/// The host side of the status console: collects a line and records the number on it.
pub struct StatusPort {
    line: Vec<u8>,
    status: std::sync::Arc<CommandStatus>,
}

impl StatusPort {
    /// A port recording into `status`.
    pub fn new(status: std::sync::Arc<CommandStatus>) -> StatusPort {
        StatusPort {
            line: Vec::new(),
            status,
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        match text.trim().parse::<u8>() {
            Ok(code) => self.status.set(code.into()),
            Err(_) => tracing::warn!("the guest's status console got {text:?}, not an exit status"),
        }
        self.line.clear();
    }
}

impl Write for StatusPort {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_line_with_a_number_is_the_status() {
        let status = Arc::new(CommandStatus::default());
        let mut port = StatusPort::new(status.clone());
        port.write_all(b"4").unwrap();
        assert_eq!(status.take(), None, "no status before the line ends");
        port.write_all(b"2\r\n").unwrap();
        assert_eq!(status.take(), Some(42));
        assert_eq!(status.take(), None, "taken once");
        port.write_all(b"0\n").unwrap();
        assert_eq!(status.take(), Some(0));
    }

    #[test]
    fn other_lines_are_not_a_status() {
        let status = Arc::new(CommandStatus::default());
        let mut port = StatusPort::new(status.clone());
        port.write_all(b"hello\n256\n-1\n\n").unwrap();
        assert_eq!(status.take(), None);
        port.write_all(&[b'7'; 100]).unwrap();
        port.write_all(b"\n").unwrap();
        assert_eq!(status.take(), None, "an overlong line is cut, not a status");
    }
}
