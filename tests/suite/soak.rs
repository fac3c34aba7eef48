//! The short soak CI runs (`control-clip soak`; the long run and its figures are in docs/reliability.md):
//! many generations of the tiny bundle in one process on each backend, alternating two seeds. Resident
//! memory must not grow between the halves (64 MiB of allocator slack) and every image must equal its
//! seed's first, bit for bit. Speed is not judged here: CI runs the other tests beside this one, so the
//! slowdown bound is set to 10× and only catches a pathological growth (a cost that rises with each
//! generation); the long run judges it at 1.25×.

use crate::common::fixtures;

fn soak(backend: &str, generations: usize) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .arg("soak")
        .arg("--bundle")
        .arg(fixtures().join("bundles/tiny-random"))
        .args(["--backend", backend, "--generations", &generations.to_string(), "--max-slowdown", "10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{backend}: {stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn many_generations_keep_memory_and_images() {
    for (backend, n) in [("cpu", 40), ("wgpu", 8)] {
        let report = soak(backend, n);
        assert_eq!(report["generations"], n);
        assert_eq!(report["images_differing_from_their_seeds_first"], serde_json::json!([]));
        assert!(report["rss_growth_mib"].as_f64().unwrap() <= 64.0, "{report}");
    }
}

#[test]
fn too_few_generations_are_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .args(["soak", "--generations", "3", "--bundle"])
        .arg(fixtures().join("bundles/tiny-random"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--generations"));
}
