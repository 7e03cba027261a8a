// Loads a model with N GPU layers and a context, generates a few tokens (so every buffer is in use) and exits;
// with "hold", prints "ready" and keeps the memory until killed. Used by scripts/gpu-check.mjs.
import { loadModel } from '../dist/index.js';

const [path, ngl, ctx, hold] = process.argv.slice(2);
const model = await loadModel(path, { gpuLayers: Number(ngl) });
const context = await model.createContext({ contextSize: Number(ctx), flashAttention: true });
await context.generate([1, 500, 600, 700], { temperature: 0, maxTokens: 8, stopAtEog: false }).result;
if (hold === 'hold') {
  process.stdout.write('ready\n');
  setInterval(() => {}, 1 << 30);
} else {
  await model.dispose();
}
