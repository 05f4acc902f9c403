//! A fixed CPU load: one thread spinning for as long as the hog lives, so
//! a measurement can be repeated on a machine with a core taken, on
//! demand, instead of hoping for a busy moment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A thread that keeps one core busy until dropped. It does arithmetic,
/// not `spin_loop` hints, so it competes for the core like a real
/// CPU-bound neighbour (a `while :; do :; done` in a shell).
pub struct CpuHog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl CpuHog {
    /// Starts spinning at once.
    pub fn start() -> std::io::Result<CpuHog> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cpu-hog".into())
            .spawn(move || {
                let mut x: u64 = 1;
                while !flag.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
                x
            })?;
        Ok(CpuHog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
