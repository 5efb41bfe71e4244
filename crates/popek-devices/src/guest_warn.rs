//! Warnings a guest can cause (a driver breaking the virtio protocol, a flood of connections):
//! each place that logs one does so at most [`GUEST_WARN_LIMIT`] times, then says once that it
//! stops, so a hostile or broken guest cannot flood the host's log.

/// How many times one place logs a guest-caused warning.
pub const GUEST_WARN_LIMIT: u32 = 5;

/// `tracing::warn!` for guest-caused conditions, limited per call site (see the module doc).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static SEEN: ::std::sync::atomic::AtomicU32 = ::std::sync::atomic::AtomicU32::new(0);
        let n = SEEN.fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
        if n < $crate::guest_warn::GUEST_WARN_LIMIT {
            ::tracing::warn!($($arg)+);
        } else if n == $crate::guest_warn::GUEST_WARN_LIMIT {
            ::tracing::warn!(
                "the guest caused that warning {} times; further ones from this place are not shown",
                n + 1
            );
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Counts the events a subscriber sees.
    struct Counter(Arc<Mutex<usize>>);

    impl tracing::Subscriber for Counter {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            *self.0.lock().unwrap() += 1;
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_flood_is_cut_to_the_limit_plus_one_line() {
        let seen = Arc::new(Mutex::new(0));
        tracing::subscriber::with_default(Counter(seen.clone()), || {
            for i in 0..348 {
                crate::guest_warn!("rejected queue {i}");
            }
        });
        assert_eq!(*seen.lock().unwrap(), super::GUEST_WARN_LIMIT as usize + 1);
    }
}
