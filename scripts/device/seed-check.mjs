// Seeded generations on a cold context, a warm one (same prompt; a prompt sharing a prefix) and after clear():
// prints whether each equals the cold tokens. node scripts/device/seed-check.mjs [ubatchSize]
import { readFileSync } from 'node:fs';
import { ensureF16 } from '../fixture.mjs';
const { loadModel } = await import('../../dist/index.js');
const ref = JSON.parse(readFileSync(new URL('../../test/fixtures/huozi-tiny/reference.json', import.meta.url), 'utf8'));
const ub = Number(process.argv[2] ?? 512);
const model = await loadModel(await ensureF16());
const ctx = await model.createContext({ contextSize: 1024, batchSize: Math.max(ub, 64), ubatchSize: ub, threads: 2 });
const opts = { temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 48, seed: 1234, stopAtEog: false };
const a = ref.greedy[7].prompt_ids;
const long = [...ref.greedy[0].prompt_ids, ...ref.greedy[0].output_ids, ...a.slice(1)];
let bad = 0;
for (const prompt of [a, long]) {
  await ctx.clear();
  const cold = (await ctx.generate(prompt, opts).result).tokens.join(',');
  const check = (name, r) => { const ok = r.tokens.join(',') === cold; bad += ok ? 0 : 1; console.log(`${prompt.length}-token prompt, ubatch ${ub}: ${name} ${ok ? 'same' : 'DIFFERENT'} (reused ${r.reusedTokens})`); };
  check('warm, same prompt', await ctx.generate(prompt, opts).result);
  await ctx.generate(prompt.slice(0, prompt.length - 9).concat([1000, 1001, 1002]), { ...opts, seed: 7 }).result;
  check('warm, shared prefix', await ctx.generate(prompt, opts).result);
  await ctx.generate(prompt.slice(0, prompt.length - 3), { temperature: 0, maxTokens: 30 }).result;
  check('after an unseeded generation of a prefix', await ctx.generate(prompt, opts).result);
  await ctx.clear();
  check('after clear()', await ctx.generate(prompt, opts).result);
}
await model.dispose();
process.exitCode = bad ? 1 : 0;
