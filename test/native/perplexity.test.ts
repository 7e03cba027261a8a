import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, perplexity } from '../../dist/index.js';
import { buildNativeTools, nativePerplexity } from '../../scripts/native-tools.mjs';
import { demoPath, f16Path, fixtureDir } from '../helpers.js';

// Relative difference allowed between our perplexity and llama-perplexity's on the same file and text. Both
// compute the same sums over the same chunks; llama-perplexity evaluates 8 chunks of 256 tokens per batch
// (n_batch 2048, one sequence each), we one chunk at a time. Measured (source build, AMD EPYC with AVX-512):
// equal at the 4 decimals llama-perplexity prints (f16 English 48.0848, Chinese 1541.4610, q4_0 English over
// 40 chunks), i.e. within 1.1e-6 relative; this allows five times that.
const PERPLEXITY_TOLERANCE = 5e-6;

beforeAll(() => {
  // llama.cpp's own llama-perplexity from the addon's tree (scripts/native-tools.mjs; .ci/run builds it).
  const tools = buildNativeTools(['llama-perplexity']);
  console.log(`native tools: ${tools.why}`);
}, 1_200_000);

describe('perplexity()', () => {
  // f16 on the whole of both texts; q4_0 (the demo model) on the first 40 chunks, to keep the time down.
  it.each([
    { name: 'f16', path: f16Path, lang: 'en', chunks: undefined },
    { name: 'f16', path: f16Path, lang: 'zh', chunks: undefined },
    { name: 'q4_0', path: demoPath, lang: 'en', chunks: 40 },
  ])('$name, held-out $lang text: matches llama-perplexity -c 256 from the same tree', async ({ path, lang, chunks }) => {
    const file = join(fixtureDir, `eval/heldout-${lang}.txt`);
    const native = nativePerplexity(path, file, { contextSize: 256, threads: 2, chunks });
    await using model = await loadModel(path);
    const r = await perplexity(model, readFileSync(file, 'utf8'), { contextSize: 256, threads: 2, chunks });
    const diff = Math.abs(r.perplexity - native.perplexity) / native.perplexity;
    console.log(
      `perplexity -c 256: ours ${r.perplexity.toFixed(6)} over ${r.chunks} chunks, llama-perplexity ` +
        `${native.perplexity.toFixed(4)} over ${native.chunks}: ${diff.toExponential(2)} apart (allowed ${PERPLEXITY_TOLERANCE})`,
    );
    expect(r.chunks).toBe(native.chunks);
    expect(r.scoredTokens).toBe(r.chunks * 127);
    expect(diff).toBeLessThan(PERPLEXITY_TOLERANCE);
  }, 300_000);

  it('needs at least two chunks of text', async () => {
    await using model = await loadModel(f16Path);
    await expect(perplexity(model, 'too short', { contextSize: 256 })).rejects.toBeInstanceOf(RangeError);
  });
});
