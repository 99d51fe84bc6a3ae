//! The soak in short (`gpubackend bench soak` runs 10 minutes): the real server binary on the
//! embedded defaults under two equal rounds of overload — 16 clients on mixed endpoints (objects,
//! detector, text, faces, super-resolution) and bad inputs (a truncated JPEG, garbage, a broken
//! meta) — every request answered (200, 400 for the broken meta, or 503 refused), every 200 naming
//! each image exactly once, and resident memory not growing with the work done: the second
//! round ends within a bound of the first (a leak per request would add as much again), and
//! after each round, once quiet, resident memory falls well below its peak.

use std::net::SocketAddr;

use gpubackend::bench::{SoakArgs, SoakReport, run_soak};

use crate::common::{spawn_server, tempdir};

fn round(addr: SocketAddr) -> SoakReport {
    let args = SoakArgs {
        addr: addr.to_string(),
        concurrency: 16,
        duration: 25.0,
        sample: 5.0,
        // Two of `server.trim_interval_ms`'s ticks: freed memory goes back to the OS once quiet.
        idle: 12.0,
        token: "test".into(),
        json: None,
    };
    let r = run_soak(&args).unwrap();
    assert_eq!(r.transport_errors, 0, "{r:?}");
    assert_eq!(r.answer_mismatches, 0, "{r:?}");
    assert!(r.by_status.keys().all(|s| [200, 400, 503].contains(s)), "{r:?}");
    assert!(r.by_status.get(&200).is_some_and(|n| *n > 0) && r.by_status.get(&400).is_some_and(|n| *n > 0), "{r:?}");
    r
}

#[test]
fn overload_with_bad_inputs_answers_everything_and_memory_does_not_grow_with_work() {
    let dir = tempdir("soak");
    let text =
        gpubackend::config::EMBEDDED_DEFAULT.replace("dir = \"data\"", &format!("dir = {:?}", dir.join("store")));
    std::fs::write(dir.join("soak.toml"), text).unwrap();
    let (mut child, addr) = spawn_server(&dir.join("soak.toml"));
    let first = round(addr);
    let second = round(addr);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "resident MB: start {:.0}; round 1 peak {:.0} end {:.0} idle {:.0}; round 2 peak {:.0} end {:.0} idle {:.0}",
        mb(first.rss_start),
        mb(first.rss_peak),
        mb(first.rss_end),
        mb(first.rss_idle),
        mb(second.rss_peak),
        mb(second.rss_end),
        mb(second.rss_idle)
    );
    // The same work again may settle a little higher (allocator arenas, caches), not pile up;
    // and once quiet, what the load took comes back (arenas capped, trimmed when idle).
    let ratio = second.rss_idle as f64 / first.rss_idle as f64;
    assert!(ratio < 1.25, "resident memory grew with the work: {ratio:.2}× after the second round");
    for r in [&first, &second] {
        assert!(
            (r.rss_idle as f64) < 0.8 * r.rss_peak as f64,
            "memory did not come back when idle: peak {} MB, idle {} MB",
            mb(r.rss_peak),
            mb(r.rss_idle)
        );
    }
    assert!(child.0.try_wait().unwrap().is_none(), "server exited");
}
