import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, perplexity } from '../../dist/index.js';
import { f16Path, fixtureDir } from '../helpers.js';

describe('perplexity()', () => {
  it("matches llama-perplexity -c 256 on the held-out English text (fixture README: 48.09)", async () => {
    await using model = await loadModel(f16Path);
    const text = readFileSync(join(fixtureDir, 'eval/heldout-en.txt'), 'utf8');
    const r = await perplexity(model, text, { contextSize: 256 });
    console.log(`f16 perplexity, held-out English, -c 256: ${r.perplexity.toFixed(3)} over ${r.chunks} chunks`);
    expect(Math.abs(r.perplexity - 48.09) / 48.09).toBeLessThan(0.005);
    expect(r.scoredTokens).toBe(r.chunks * 127);
  });

  it('needs at least two chunks of text', async () => {
    await using model = await loadModel(f16Path);
    await expect(perplexity(model, 'too short', { contextSize: 256 })).rejects.toBeInstanceOf(RangeError);
  });
});
