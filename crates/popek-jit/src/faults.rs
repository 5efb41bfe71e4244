//! Loads and stores the host checks: when a hart's owner keeps the host's page protection as
//! strict as the guest's ([`popek_cpu::Hart::let_host_check_reads`] and
//! [`popek_cpu::Hart::let_host_check_writes`]), a translated load (store) reads (writes) host
//! memory without looking at the soft TLB, and an access the guest may not make faults on the
//! host, before it changes anything. The `SIGSEGV` handler installed here finds the faulting
//! instruction among the direct accesses of the thread's running JIT and resumes at that
//! access's slow path, which checks it as every other one is checked (and raises the guest's
//! fault if there is one). Any other `SIGSEGV` goes to the handler that was there before, or
//! kills the process as it would have without this one.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::JitError;

/// The direct accesses of one code buffer: the host address of each load or store
/// instruction and of its slow path, in increasing order (blocks are appended front to back
/// and the buffer is emptied whole, with this list).
#[derive(Default)]
pub(crate) struct DirectSites {
    /// `(load, slow path)` host addresses.
    sites: Vec<(usize, usize)>,
    /// Host faults sent to a slow path (counted by the handler).
    redirected: Cell<u64>,
}

impl DirectSites {
    /// Record a direct access at host address `load` whose slow path is at `slow`; `load` is
    /// above every access recorded since the last [`DirectSites::clear`].
    pub fn add(&mut self, load: usize, slow: usize) {
        debug_assert!(self.sites.last().is_none_or(|&(l, _)| l < load));
        self.sites.push((load, slow));
    }

    /// Forget every site (the code buffer was emptied).
    pub fn clear(&mut self) {
        self.sites.clear();
    }

    /// Host faults sent to a slow path so far.
    pub fn redirected(&self) -> u64 {
        self.redirected.get()
    }

    /// The slow path of the direct access at host address `rip`, if there is one.
    fn slow_path_of(&self, rip: usize) -> Option<usize> {
        let i = self.sites.binary_search_by_key(&rip, |&(l, _)| l).ok()?;
        Some(self.sites[i].1)
    }
}

thread_local! {
    /// The sites of the JIT running translated code on this thread (null when none is).
    static RUNNING: Cell<*const DirectSites> = const { Cell::new(std::ptr::null()) };
}

/// While alive, host faults at `sites`' accesses on this thread resume at their slow paths.
/// The engine holds one while it may run translated code; `sites` must not move or be
/// changed while translated code runs (translation happens between runs).
pub(crate) struct Running {
    previous: *const DirectSites,
}

impl Running {
    /// Make `sites` the running JIT's.
    pub fn new(sites: *const DirectSites) -> Running {
        Running {
            previous: RUNNING.with(|r| r.replace(sites)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(self.previous));
    }
}

/// The `SIGSEGV` action before [`install`], for faults that are not a direct access's.
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

thread_local! {
    /// Whether this thread unblocked `SIGSEGV` (see [`install`]).
    static UNBLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Install the handler (once per process; later calls report the first one's outcome), and
/// unblock `SIGSEGV` on the calling thread (once per thread): a fault with the signal blocked
/// kills the process, and popek may have been started with it blocked.
pub(crate) fn install() -> Result<(), JitError> {
    if !UNBLOCKED.with(|u| u.get()) {
        // SAFETY: an emptied sigset with one signal added; pthread_sigmask only reads it.
        let unblocked = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSEGV);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
        };
        if unblocked != 0 {
            return Err(JitError::FaultHandler(std::io::Error::from_raw_os_error(
                unblocked,
            )));
        }
        UNBLOCKED.with(|u| u.set(true));
    }
    let result = PREVIOUS.get_or_init(|| {
        // SAFETY: zeroed sigaction structs are valid; the new one is filled in before use,
        // and `on_fault` only reads thread-local data and the saved action, and writes the
        // interrupted context it is given.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            let mut old: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_fault as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGSEGV, &new, &mut old) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(old)
        }
    });
    match result {
        Ok(_) => Ok(()),
        Err(code) => Err(JitError::FaultHandler(std::io::Error::from_raw_os_error(
            *code,
        ))),
    }
}

/// The `SIGSEGV` handler (see the module's doc).
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let uc = uc as *mut libc::ucontext_t;
    let rip_reg = libc::REG_RIP as usize;
    // SAFETY: the kernel passes the interrupted thread's context, valid for this call.
    let rip = unsafe { (*uc).uc_mcontext.gregs[rip_reg] } as usize;
    let sites = RUNNING.with(|r| r.get());
    if !sites.is_null() {
        // SAFETY: `Running` keeps the pointer valid, and unchanged while translated code runs;
        // a fault anywhere else finds no site (`slow_path_of` matches recorded sites only).
        let sites = unsafe { &*sites };
        if let Some(slow) = sites.slow_path_of(rip) {
            sites.redirected.set(sites.redirected.get() + 1);
            // SAFETY: as above; the slow path expects the registers the faulting access had.
            unsafe { (*uc).uc_mcontext.gregs[rip_reg] = slow as i64 };
            return;
        }
    }
    pass_on(sig, info, uc as *mut libc::c_void);
}

/// A fault that is not a direct access's: to the previous handler, or back to the default
/// action (the faulting instruction runs again and the process dies of it, as without us).
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if let Some(Ok(old)) = PREVIOUS.get() {
        let handler = old.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature; it gets the arguments the kernel gave us.
                let f = unsafe {
                    std::mem::transmute::<
                        usize,
                        extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
                    >(handler)
                };
                f(sig, info, uc);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO takes the signal number.
                let f =
                    unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: restoring the default action is async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_is_found_by_its_load_address_only() {
        let mut sites = DirectSites::default();
        assert_eq!(sites.slow_path_of(0x1000), None);
        for (load, slow) in [(0x1000, 0x1800), (0x1010, 0x1840), (0x2000, 0x2400)] {
            sites.add(load, slow);
        }
        assert_eq!(sites.slow_path_of(0x1000), Some(0x1800));
        assert_eq!(sites.slow_path_of(0x1010), Some(0x1840));
        assert_eq!(sites.slow_path_of(0x2000), Some(0x2400));
        for rip in [0xfff, 0x1001, 0x1800, 0x2001, 0] {
            assert_eq!(sites.slow_path_of(rip), None, "{rip:#x}");
        }
        sites.clear();
        assert_eq!(sites.slow_path_of(0x1000), None);
    }
}
