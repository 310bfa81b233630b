//! How candle's own CPU worker waits between element-wise ops.
//!
//! candle 0.11 runs element-wise ops of 64K elements or more (adds, activations, casts) on a
//! pool of its own, beside the rayon pool our kernels and its matmuls use, and that pool's
//! idle worker spins 25,000 times after each op before it sleeps. With as many threads as
//! cores in both pools, that spinning takes a core from the next kernel: `seedbed bench` on a
//! 2-core VM, SD-Turbo-shaped, text encode 0.40-0.42 s spinning against 0.31-0.34 s parked at
//! once, the UNet call 4.54-4.76 s against 4.41-4.45 s (bench/RESULTS.md).

/// candle's variable for the spin count, read when its pool starts.
const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Make candle's idle element-wise worker sleep at once, unless the environment already says
/// how long it spins. Call first thing in `main`, before any other thread exists.
pub fn park_idle_workers_at_once() {
    if std::env::var_os(SPIN_LIMIT).is_none() {
        // SAFETY: this runs before any other thread is started, so nothing reads the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(SPIN_LIMIT, "0")
        };
    }
}
