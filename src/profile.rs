//! Where a forward pass spends its time, by kind of module (`control-clip bench`'s breakdown of a UNet
//! step): the models wrap their convolutions, norms and attention in [`time`], which adds the elapsed time
//! to a process-wide total while [`enable`] is on and costs one atomic load otherwise. Only meaningful on
//! the CPU backend, whose operations run when called (wgpu's run later, when the results are read). In wasm
//! the clock is the page's `performance.now()` (`std::time::Instant` does not exist there), read through JS.

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

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Runs `f`, adding its wall time to `section`'s total while profiling is enabled.
#[inline]
pub fn time<R>(section: Section, f: impl FnOnce() -> R) -> R {
    if ENABLED.load(Ordering::Relaxed) {
        let start = now_ns();
        let out = f();
        NANOS[section as usize].fetch_add(now_ns().saturating_sub(start), Ordering::Relaxed);
        return out;
    }
    f()
}

/// A monotonic clock in nanoseconds, from an arbitrary origin.
#[cfg(not(target_arch = "wasm32"))]
fn now_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// `performance.now()` of the page or worker (0 where there is none: every section then reads 0).
#[cfg(target_arch = "wasm32")]
fn now_ns() -> u64 {
    use wasm_bindgen::JsCast;
    let performance = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok();
    let now = performance
        .and_then(|p| js_sys::Reflect::get(&p, &"now".into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok()).and_then(|f| f.call0(&p).ok()));
    now.and_then(|v| v.as_f64()).map_or(0, |ms| (ms * 1e6) as u64)
}

/// Starts (or stops) collecting, from zero.
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
