// Child process for memory.test.ts: load, generate, dispose, N times; after every `every` cycles, a full garbage
// collection (run with --expose-gc) and then the RSS and V8's heap size (MiB).
import { loadModel } from '../../dist/index.js';

const [path, cycles, every] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc');
const out = [];
for (let i = 1; i <= cycles; i++) {
  const model = await loadModel(path, { useMmap: false }); // read into RAM: the weights count in RSS
  const context = await model.createContext({ contextSize: 2048 });
  await context.generate([1, 1000], { temperature: 0, maxTokens: 16 }).result;
  await model.dispose(); // and with it the context
  if (i % every === 0) {
    globalThis.gc();
    const { rss, heapTotal } = process.memoryUsage();
    out.push({ rss: rss / 2 ** 20, heapTotal: heapTotal / 2 ** 20 });
  }
}
console.log(JSON.stringify(out));
