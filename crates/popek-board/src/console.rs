//! The host terminal as the guest's console: raw mode while the machine runs (restored on every
//! exit path, including signals and panics), and QEMU's Ctrl-A escapes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The terminal settings to restore, shared with the signal handler.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
static RAW: AtomicBool = AtomicBool::new(false);

/// Puts stdin's terminal in raw mode for its lifetime; does nothing when stdin is not a TTY.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Enter raw mode if stdin is a terminal.
    pub fn enter() -> RawTerminal {
        // SAFETY: all-zero bytes are a valid termios (plain integers and arrays).
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: isatty and tcgetattr only read the descriptor's state into `t`.
        let is_tty = unsafe { libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 };
        if !is_tty {
            return RawTerminal { active: false };
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct in place; tcsetattr applies it to stdin.
        unsafe {
            libc::cfmakeraw(&mut raw);
            // Keep output post-processing so the host side of the terminal behaves.
            raw.c_oflag |= libc::OPOST;
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        RAW.store(true, Ordering::SeqCst);
        install_signal_handlers();
        RawTerminal { active: true }
    }

    /// Whether the terminal is in raw mode (escapes are interpreted only then).
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}

/// Restore the saved terminal settings (idempotent).
fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        if let Ok(saved) = SAVED.try_lock() {
            if let Some(t) = saved.as_ref() {
                // SAFETY: tcsetattr with settings previously read from the same descriptor.
                unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
            }
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore();
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + sig) };
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installing a handler that only calls tcsetattr and _exit.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// What the escape filter decided about a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Escape {
    /// Bytes to give to the guest.
    Input(Vec<u8>),
    /// The user asked to leave (Ctrl-A x).
    Quit,
    /// The user asked to save the machine (Ctrl-A s); the bytes before it go to the guest.
    Save(Vec<u8>),
}

/// QEMU-style Ctrl-A escapes: Ctrl-A x quits, Ctrl-A s saves a snapshot (`--save-to`),
/// Ctrl-A Ctrl-A sends one Ctrl-A.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending_ctrl_a: bool,
}

impl EscapeFilter {
    /// Filter `bytes` typed by the user.
    pub fn filter(&mut self, bytes: &[u8]) -> Escape {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.pending_ctrl_a {
                self.pending_ctrl_a = false;
                match b {
                    b'x' | b'X' => return Escape::Quit,
                    // What follows Ctrl-A s in the same read is dropped, as a terminal
                    // types nothing that fast.
                    b's' | b'S' => return Escape::Save(out),
                    0x01 => out.push(0x01),
                    _ => {}
                }
            } else if b == 0x01 {
                self.pending_ctrl_a = true;
            } else {
                out.push(b);
            }
        }
        Escape::Input(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r"), Escape::Input(b"ls\r".to_vec()));
        assert_eq!(f.filter(b"a\x01\x01b"), Escape::Input(b"a\x01b".to_vec()));
        assert_eq!(f.filter(b"\x01"), Escape::Input(vec![]));
        assert_eq!(f.filter(b"x"), Escape::Quit);
        assert_eq!(f.filter(b"ab\x01s"), Escape::Save(b"ab".to_vec()));
    }
}
