#!/usr/bin/env bash
# `make bench-oip`: Triton's own load tool (perf_analyzer 2.51.0, scripts/setup-perf-analyzer.sh)
# against gpubackend's Open Inference Protocol, HTTP and gRPC, beside our Vision API driven by
# `gpubackend bench e2e`, one server (MobileNetV2 only, the embedded defaults otherwise), same
# machine, one after another. Per run: images/s, p50 / p99 ms and the server's serving CPU per
# request (process CPU outside the forward passes, from /metrics).
#   GPUBACKEND=path/to/gpubackend CONCURRENCY="1 4 16 32" SECONDS_PER=10 bash scripts/bench-oip.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${GPUBACKEND:-${CARGO_TARGET_DIR:-$HOME/.cache/gpubackend-target}/debug/gpubackend}
concurrency=${CONCURRENCY:-"1 4 16 32"}
seconds=${SECONDS_PER:-10}
bash scripts/setup-perf-analyzer.sh >/dev/null
pa=tools/perf_analyzer/perf_analyzer
port=${PORT:-18080}
grpc=${GRPC_PORT:-18001}
out=$(mktemp -d)
"$bin" --port "$port" --grpc-port "$grpc" --models mobilenet_v2 >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; do
  kill -0 $server 2>/dev/null || { cat "$out/server.log"; exit 1; }
  sleep 0.5
done

# A JPEG for the image model: perf_analyzer's BYTES data is base64 of a 4-byte length + the bytes.
python3 - "$out/jpeg.json" <<'PY'
import base64, json, struct, sys
jpeg = open("tests/data/chelsea.jpg", "rb").read()
json.dump({"data": [{"image": {"b64": base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode()}}]}, open(sys.argv[1], "w"))
PY

# Serving CPU seconds (process minus inference threads) and answered requests, from /metrics.
counters() {
  curl -s "http://127.0.0.1:$port/metrics" | awk -v proto="$1" '
    /^gpubackend_process_cpu_seconds_total/ {p=$2}
    /^gpubackend_inference_cpu_seconds_total/ {i=$2}
    $0 ~ "^gpubackend_oip_requests_total" && $0 ~ "protocol=\""proto"\"" && /outcome="ok"/ {n+=$2}
    /^gpubackend_requests_total/ && /outcome="ok"/ {v+=$2}
    END {printf "%s %s\n", p-i, (proto=="vision" ? v+0 : n+0)}'
}

printf '%-26s %5s %10s %10s %10s %16s\n' run clients images/s p50_ms p99_ms serving_ms/req
for c in $concurrency; do
  for proto in http grpc; do
    for model in mobilenet_v2 mobilenet_v2_image; do
      url=127.0.0.1:$port; [ "$proto" = grpc ] && url=127.0.0.1:$grpc
      extra=(); [ "$model" = mobilenet_v2_image ] && extra=(--input-data "$out/jpeg.json")
      read -r cpu0 n0 < <(counters "$proto")
      "$pa" -m "$model" -u "$url" -i "$proto" -b 1 --concurrency-range "$c:$c" \
        --measurement-interval $((seconds * 1000)) --stability-percentage 50 --max-trials 3 \
        "${extra[@]}" -f "$out/pa.csv" >"$out/pa.log" 2>&1 || { cat "$out/pa.log"; exit 1; }
      read -r cpu1 n1 < <(counters "$proto")
      python3 - "$out/pa.csv" "$proto/$model" "$c" "$cpu0" "$cpu1" "$n0" "$n1" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
cpu = (float(sys.argv[5]) - float(sys.argv[4])) / max(1.0, float(sys.argv[7]) - float(sys.argv[6])) * 1000
print(f"{'perf_analyzer ' + sys.argv[2]:<26} {sys.argv[3]:>5} {float(row['Inferences/Second']):>10.1f} "
      f"{float(row['p50 latency']) / 1000:>10.1f} {float(row['p99 latency']) / 1000:>10.1f} {cpu:>16.2f}")
PY
    done
  done
  "$bin" bench e2e --addr "127.0.0.1:$port" --concurrency "$c" --duration "$seconds" \
    --images tests/data/chelsea.jpg --json "$out/e2e.json" >"$out/e2e.log" 2>&1 || { cat "$out/e2e.log"; exit 1; }
  python3 - "$out/e2e.json" "$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{'vision objects/detect':<26} {sys.argv[2]:>5} {r['images_per_s']:>10.1f} {r['p50_ms']:>10.1f} "
      f"{r['p99_ms']:>10.1f} {r['serving_ms_per_req']:>16.2f}")
PY
done
