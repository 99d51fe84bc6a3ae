//! Times a P-Net-shaped channels-last trunk (3→10 3×3, pool 2/2, 10→16 3×3, 16→32 3×3, 32→6 1×1)
//! on a batch of 128² tiles at every SIMD level this CPU has:
//! `cargo run --release -p gpubackend-kernels --example trunk_speed [tiles] [rounds]`.
use gpubackend_kernels::hwc::{HwcConv, Layer, Trunk};
use gpubackend_kernels::{Act, Level};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a count"));
    let (n, rounds) = (args.next().unwrap_or(8), args.next().unwrap_or(20));
    let ramp = |len: usize, s: f32| (0..len).map(|i| ((i * 7919 % 1009) as f32 / 504.5 - 1.0) * s).collect::<Vec<_>>();
    let conv = |cin, cout, k, prelu: bool| {
        let act = if prelu { Act::PRelu(ramp(cout, 0.25)) } else { Act::Identity };
        Layer::Conv(HwcConv::new(cin, cout, k, &ramp(cout * cin * k * k, 0.3), Some(&ramp(cout, 0.1)), &act))
    };
    let trunk = Trunk {
        cin: 3,
        layers: vec![
            conv(3, 10, 3, true),
            Layer::MaxPool(2, 2),
            conv(10, 16, 3, true),
            conv(16, 32, 3, true),
            conv(32, 6, 1, false),
        ],
    };
    let side = 128;
    let x = ramp(n * 3 * side * side, 1.0);
    let flops = trunk.flops(side, side);
    for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
        if !level.available() {
            continue;
        }
        trunk.forward_at(level, &x, n, side, side);
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(trunk.forward_at(level, &x, n, side, side));
        }
        let per_tile = t.elapsed().as_secs_f64() / (rounds * n) as f64;
        println!(
            "{:<24} {:.3} ms per 128² tile, {:.1} GFLOP/s ({} threads)",
            level.name(),
            per_tile * 1e3,
            flops / per_tile / 1e9,
            rayon::current_num_threads()
        );
    }
}
