#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) with SanitizerCoverage on stable Rust and runs each for a bounded
# time from the committed corpus; exits non-zero on any crash, whose input is kept under
# fuzz/artifacts/<target>/ (turn it into a regression test, see README "Fuzzing").
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]     (default 20 s, every target)
# FUZZ_SEED=N fixes libFuzzer's seed (`make test` uses 1: CI explores the same way each run; a
# find there is a real bug all the same). Unset: a new seed each run (`make fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(multipart decode onnx ncnn_param tfjs pytorch)
# Instrumented builds differ from the server's (flags): a target dir of their own.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gpubackend-target}/fuzz
# What cargo-fuzz passes for `--sanitizer none`: inline 8-bit counters + PC table + compare tracing.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cforce-frame-pointers"
# --target: the flags then apply to the targets' code, not to build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
(cd fuzz && cargo build --release --locked --bins --target "$host")
status=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  mkdir -p "fuzz/artifacts/$t"
  # New inputs go to a scratch dir; the committed corpus seeds it and stays as it is.
  if ! "$CARGO_TARGET_DIR/$host/release/$t" "$work" "fuzz/corpus/$t" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 ${FUZZ_SEED:+-seed=$FUZZ_SEED} 2>"$work.log"; then
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    tail -40 "$work.log" >&2
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$work.log" | tail -1 | grep -o '[0-9]*' || echo '?')
  echo "fuzz: $t ${seconds}s: $runs runs, coverage $cov edges, corpus $(ls "fuzz/corpus/$t" | wc -l) seeds + $(ls "$work" | wc -l) new"
  rm -rf "$work" "$work.log"
done
exit $status
