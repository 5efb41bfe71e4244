//! Tests that run the whole stack: a test guest (see [`guest`]) against [`crate::UserNet`].

mod e2e;
mod guest;
mod publish;
mod robust;

/// Sends the stack's tracing to the test output when RUST_LOG is set.
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
