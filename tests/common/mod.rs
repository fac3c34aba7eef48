//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use control_clip::BackendKind;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every native backend the tests must pass on: wgpu (lavapipe here) and the CPU backend.
pub fn backends() -> [BackendKind; 2] {
    BackendKind::ALL
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: tests set this before any runtime starts; the value is the same in every thread.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    pollster::block_on(f)
}
