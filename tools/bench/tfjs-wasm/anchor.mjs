// The TensorFlow.js anchor of `gpubackend bench networks`: a graph model (the COCO CenterNet
// detector's centernet.json + .bin) on TensorFlow.js's WebAssembly backend (XNNPACK, SIMD) in
// Node, timed as tools/bench/anchors.py times onnxruntime and ncnn: two warm-up passes, then
// passes until `duration` seconds have gone (at least 3). Reads one case as JSON on stdin
// ({"file", "shape": [n, c, h, w], "threads", "duration"}); the input is N×H×W×C as the graph
// takes it. Writes {"ms", "threads", "simd"} to stdout: the mean milliseconds per pass, the threads
// the backend really ran on (its multi-threaded build needs web workers, which Node does not
// give it: 1) and whether its SIMD build was loaded. Packages: package.json (npm ci).
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadGraphModel } from '@tensorflow/tfjs-converter';
import * as wasm from '@tensorflow/tfjs-backend-wasm';

const c = JSON.parse(fs.readFileSync(0, 'utf8'));
const dir = path.dirname(c.file);
const json = JSON.parse(fs.readFileSync(c.file));
const weightSpecs = json.weightsManifest.flatMap((g) => g.weights);
const bins = json.weightsManifest.flatMap((g) => g.paths).map((p) => fs.readFileSync(path.join(dir, p)));
const all = Buffer.concat(bins);
const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);

wasm.setThreadsCount(c.threads);
if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend did not start');
const model = await loadGraphModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs, weightData }));
const [n, ch, h, w] = c.shape;
const values = new Float32Array(n * h * w * ch);
// Deterministic values in 0–255 (the detector takes RGB pixels as they are).
for (let i = 0; i < values.length; i++) values[i] = (i * 7919) % 256;
const x = tf.tensor4d(values, [n, h, w, ch]);
const pass = () => {
  const out = model.execute(x);
  for (const t of Array.isArray(out) ? out : [out]) {
    t.dataSync();
    t.dispose();
  }
};
pass();
pass();
let passes = 0;
const start = performance.now();
while ((performance.now() - start) / 1e3 < c.duration || passes < 3) {
  pass();
  passes += 1;
}
const ms = (performance.now() - start) / passes;
const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
console.log(JSON.stringify({ ms, threads: wasm.getThreadsCount(), simd }));
