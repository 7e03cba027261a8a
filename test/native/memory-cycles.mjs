// Child process for memory.test.ts: load, generate, dispose, N times; prints RSS (MiB) after each block.
import { loadModel } from '../../dist/index.js';

const [path, cycles, every] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const out = [];
for (let i = 1; i <= cycles; i++) {
  const model = await loadModel(path, { useMmap: false }); // read into RAM: the weights count in RSS
  const context = await model.createContext({ contextSize: 2048 });
  await context.generate([1, 1000], { temperature: 0, maxTokens: 16 }).result;
  await model.dispose();
  if (i % every === 0) out.push(process.memoryUsage().rss / 2 ** 20);
}
console.log(JSON.stringify(out));
