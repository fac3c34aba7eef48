//! Where a forward pass spends its time, by kind of module (`control-clip bench`'s breakdown of a UNet
//! step): the models wrap their convolutions, norms and attention in [`time`], which adds the elapsed time
//! to a process-wide total while [`enable`] is on and costs one atomic load otherwise. Only meaningful on
//! the CPU backend, whose operations run when called (wgpu's run later, when the results are read); never
//! on in wasm, where `std::time::Instant` does not exist.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The kinds of module timed; everything else in a step is "the rest".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Conv,
    Norm,
    Attention,
    Linear,
}

impl Section {
    pub const ALL: [Section; 4] = [Section::Conv, Section::Norm, Section::Attention, Section::Linear];

    pub fn name(self) -> &'static str {
        match self {
            Section::Conv => "conv",
            Section::Norm => "norm",
            Section::Attention => "attention",
            Section::Linear => "linear",
        }
    }
}

// Never set in wasm (no clock there).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Runs `f`, adding its wall time to `section`'s total while profiling is enabled.
#[inline]
pub fn time<R>(section: Section, f: impl FnOnce() -> R) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    if ENABLED.load(Ordering::Relaxed) {
        let start = std::time::Instant::now();
        let out = f();
        NANOS[section as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        return out;
    }
    let _ = section;
    f()
}

/// Starts (or stops) collecting, from zero.
#[cfg(not(target_arch = "wasm32"))]
pub fn enable(on: bool) {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Milliseconds collected per section since [`enable`].
pub fn totals_ms() -> Vec<(Section, f64)> {
    Section::ALL.iter().map(|&s| (s, NANOS[s as usize].load(Ordering::Relaxed) as f64 / 1e6)).collect()
}
