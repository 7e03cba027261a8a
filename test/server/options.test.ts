// ServerOptions takes ParallelContextOptions as they are (issue #15): the fields the server used to leave out
// (unifiedCache, ubatchSize, batchThreads) reach the ParallelContext and have their effect, and a bad value is
// refused by the ParallelContext's own check, its message naming the field.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, loadModel, type HuoziServer, type Model } from '../../dist/index.js';
import { f16Path } from '../helpers.js';

let model: Model;

beforeAll(async () => {
  model = await loadModel(f16Path);
});
afterAll(async () => {
  await model?.dispose();
});

async function withServer<T>(options: Parameters<typeof createServer>[1], use: (server: HuoziServer, url: string) => Promise<T>): Promise<T> {
  const server = await createServer(model, { servedModelName: 'huozi', threads: 1, ...options });
  try {
    const { url } = await server.listen(0);
    return await use(server, url);
  } finally {
    await server.close();
  }
}

/** A seeded completion of token ids; the prompt tokens a slot's cache held. */
async function cachedTokens(url: string, prompt: number[]): Promise<number> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'huozi', prompt, max_tokens: 2, temperature: 0, seed: 7 }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } };
  return body.usage.prompt_tokens_details.cached_tokens;
}

describe('ParallelContextOptions through createServer', () => {
  it('unifiedCache: every slot may use the whole cache (server.context and /v1/models say so)', async () => {
    await withServer({ parallel: 2, contextSize: 1024 }, async (server) => {
      expect(server.context.slotContextSize).toBe(512);
    });
    await withServer({ parallel: 2, contextSize: 1024, unifiedCache: true }, async (server, url) => {
      expect(server.context.parallel).toBe(2);
      expect(server.context.contextSize).toBe(1024);
      expect(server.context.slotContextSize).toBe(1024);
      const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { meta: { context_length: number } }[] };
      expect(models.data[0].meta.context_length).toBe(1024);
    });
  });

  it('ubatchSize: a seeded request reuses only whole ubatches of a cached prefix', async () => {
    const first = Array.from({ length: 50 }, (_, i) => 100 + i);
    // Shares its first 41 tokens with `first`.
    const second = [...first.slice(0, 41), 900, 901, 902];
    for (const [ubatchSize, reused] of [[8, 40], [16, 32], [undefined, 0]] as const) {
      await withServer({ parallel: 1, contextSize: 512, ...(ubatchSize === undefined ? {} : { ubatchSize }) }, async (_, url) => {
        expect(await cachedTokens(url, first)).toBe(0);
        expect(await cachedTokens(url, second)).toBe(reused);
      });
    }
  });

  it('batchThreads is accepted', async () => {
    await withServer({ parallel: 1, contextSize: 256, batchThreads: 1 }, async (server) => {
      expect(server.context.parallel).toBe(1);
    });
  });

  it("a bad value is refused with the ParallelContext's message naming the field", async () => {
    await expect(createServer(model, { parallel: 1, contextSize: 512, batchSize: 256, ubatchSize: 512, threads: 1 })).rejects.toThrow(
      'Expected positive integer no larger than batchSize (256) for ubatchSize but received 512',
    );
    await expect(createServer(model, { parallel: 1, contextSize: 512, unifiedCache: 'yes' as never, threads: 1 })).rejects.toThrow(/unifiedCache/);
    await expect(createServer(model, { parallel: 1, contextSize: 512, batchThreads: 0, threads: 1 })).rejects.toThrow(/batchThreads/);
    // Still no option the server does not know.
    await expect(createServer(model, { ubatchsize: 64 } as never)).rejects.toThrow('Unknown option "ubatchsize" in options. Did you mean "ubatchSize"?');
  });
});
