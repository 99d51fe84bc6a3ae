// Reference outputs of nsfwjs 4.3.0's MobileNetV2 classifier (the model bundled in the package,
// loaded by the package's own `load("MobileNetV2")`, run by TensorFlow.js 4.22.0's pure-JS CPU
// backend) for tests/model_nsfw.rs and the adult/detect evaluation. Usage:
//   cd tools/reference/tfjs && npm ci
//   node nsfw_reference.mjs ../../../tests/fixtures/nsfw/tfjs.json IMAGE…
// Per image: the decoded size and the five class probabilities (Drawing, Hentai, Neutral, Porn,
// Sexy) of `nsfw.infer(image)`: nsfwjs's own preprocessing (÷255, bilinear resize to 224² with
// align_corners) and the network. Plus `synthetic`: the network alone on a fixed 224² input
// (pixel value ((i · 7919) mod 256) / 255 at NHWC index i), which isolates the network from image
// decoding and resizing. PNG and JPEG decoded by pngjs / jpeg-js; probabilities rounded to 7 decimals.
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import * as nsfwjs from 'nsfwjs';
import { decode } from './images.mjs';

const [out, ...images] = process.argv.slice(2);

await tf.setBackend('cpu');
const nsfw = await nsfwjs.load('MobileNetV2');
const round = (v) => Math.round(v * 1e7) / 1e7;
const result = { model: 'nsfwjs 4.3.0 MobileNetV2', tfjs: tf.version.tfjs, classes: ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'], images: {} };

const side = 224;
const synthetic = new Float32Array(side * side * 3);
for (let i = 0; i < synthetic.length; i++) synthetic[i] = ((i * 7919) % 256) / 255;
const s = nsfw.model.predict(tf.tensor4d(synthetic, [1, side, side, 3]));
result.synthetic = Array.from(await s.data(), round);
console.log('synthetic', result.synthetic.join(' '));

for (const file of images) {
  const { width, height, rgba } = decode(file);
  // As tf.browser.fromPixels gives it: int32 RGB.
  const rgb = new Int32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) for (let c = 0; c < 3; c++) rgb[3 * i + c] = rgba[4 * i + c];
  const input = tf.tensor3d(rgb, [height, width, 3], 'int32');
  const probs = nsfw.infer(input);
  const p = Array.from(await probs.data(), round);
  result.images[path.basename(file)] = { width, height, probabilities: p };
  console.log(path.basename(file), width, height, p.join(' '), 'safe', (p[0] + p[2]).toFixed(4));
  tf.dispose([input, probs]);
}
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, JSON.stringify(result));
