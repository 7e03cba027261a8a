import { describe, expect, it } from 'vitest';
import { createServer } from '../../dist/index.js';
import { serveTinyModel } from './serve.js';

const s = serveTinyModel();

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

describe('POST /v1/embeddings', () => {
  it('answers the openai client (base64 on the wire, decoded), as the library computes it', async () => {
    const r = await s.client.embeddings.create({ model: 'huozi', input: '床前明月光，疑是地上霜。' });
    expect(r.object).toBe('list');
    expect(r.model).toBe('huozi');
    expect(r.data).toHaveLength(1);
    expect(r.data[0]).toMatchObject({ object: 'embedding', index: 0 });
    expect(r.data[0].embedding).toHaveLength(s.model.info.embeddingSize);
    const tokens = s.model.tokenize('床前明月光，疑是地上霜。').length;
    expect(r.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
    await using context = await s.model.createEmbeddingContext({ threads: 1 });
    const ours = await context.embed('床前明月光，疑是地上霜。');
    expect(cosine(r.data[0].embedding, ours)).toBeGreaterThan(0.99999);
    expect(Math.hypot(...r.data[0].embedding)).toBeCloseTo(1, 5);
  });

  it('float and base64 give the same numbers; lists of texts and of token ids', async () => {
    const input = ['Hello world', '你好', 'a'];
    const float = await s.post({ model: 'huozi', input, encoding_format: 'float' }, '/v1/embeddings');
    const b64 = await s.post({ model: 'huozi', input, encoding_format: 'base64', user: 'someone' }, '/v1/embeddings');
    expect(float.status).toBe(200);
    expect(b64.status).toBe(200);
    for (let i = 0; i < input.length; i++) {
      const bytes = Buffer.from(b64.json.data[i].embedding as string, 'base64');
      const decoded = Array.from({ length: bytes.length / 4 }, (_, k) => bytes.readFloatLE(k * 4));
      expect(decoded).toEqual(float.json.data[i].embedding);
      expect(float.json.data[i].index).toBe(i);
    }
    const ids = input.map((t) => s.model.tokenize(t));
    const byIds = await s.post({ model: 'huozi', input: ids, dimensions: s.model.info.embeddingSize }, '/v1/embeddings');
    expect(byIds.status).toBe(200);
    for (let i = 0; i < input.length; i++) expect(cosine(byIds.json.data[i].embedding, float.json.data[i].embedding)).toBeGreaterThan(0.99999);
    const one = await s.post({ model: 'huozi', input: ids[0] }, '/v1/embeddings');
    expect(one.json.data).toHaveLength(1);
    expect(one.json.usage.prompt_tokens).toBe(ids[0].length);
  });

  it('concurrent requests are all answered', async () => {
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => s.post({ model: 'huozi', input: [`text ${i}`, 'x'] }, '/v1/embeddings')));
    for (const a of answers) expect(a.status).toBe(200);
  });

  it.each([
    [{ model: 'huozi' }, 400, 'input'],
    [{ model: 'huozi', input: '' }, 400, 'input'],
    [{ model: 'huozi', input: [] }, 400, 'input'],
    [{ model: 'huozi', input: [''] }, 400, 'input[0]'],
    [{ model: 'huozi', input: ['a', 1] }, 400, 'input'],
    [{ model: 'huozi', input: [[1, 2], []] }, 400, 'input[1]'],
    [{ model: 'huozi', input: [1, -2] }, 400, 'input[1]'],
    [{ model: 'huozi', input: [1, 2.5] }, 400, 'input[1]'],
    [{ model: 'huozi', input: [1, 99_999_999] }, 400, 'input[1]'],
    [{ model: 'huozi', input: [[1], [1, 99_999_999]] }, 400, 'input[1][1]'],
    [{ model: 'huozi', input: { text: 'a' } }, 400, 'input'],
    [{ model: 'huozi', input: 'a', encoding_format: 'int8' }, 400, 'encoding_format'],
    [{ model: 'huozi', input: 'a', dimensions: 128 }, 400, 'dimensions'],
    [{ model: 'huozi', input: 'a', dimensions: 0 }, 400, 'dimensions'],
    [{ model: 'huozi', input: 'a', user: 5 }, 400, 'user'],
    [{ model: 'huozi', input: 'a', temperature: 0 }, 400, 'temperature'],
    [{ model: 'other', input: 'a' }, 404, 'model'],
    [{ input: 'a' }, 400, 'model'],
    [{ model: 'huozi', input: Array.from({ length: 2049 }, () => 'a'), what: '2049 inputs' }, 400, 'input'],
    [{ model: 'huozi', input: 'word '.repeat(5000), what: 'a text over contextSize' }, 400, 'input'],
    [{ model: 'huozi', input: ['a', 'word '.repeat(5000)], what: 'a text over contextSize' }, 400, 'input[1]'],
    [{ model: 'huozi', input: new Array(3000).fill(5), what: 'ids over contextSize' }, 400, 'input'],
  ])('%#: %i naming %s', async ({ what: _what, ...body }: Record<string, unknown>, status, param) => {
    const r = await s.post(body, '/v1/embeddings');
    expect(r.status).toBe(status);
    expect(r.json.error.param).toBe(param);
  });

  it('a 50 MB body is refused with 413; GET with 405; the server goes on', async () => {
    const big = JSON.stringify({ model: 'huozi', input: 'a'.repeat(50 << 20) });
    const r = await fetch(`${s.url}/v1/embeddings`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: big });
    expect(r.status).toBe(413);
    expect((await fetch(`${s.url}/v1/embeddings`)).status).toBe(405);
    expect((await s.post({ model: 'huozi', input: 'still here' }, '/v1/embeddings')).status).toBe(200);
  });

  it('embeddings: false answers 501; bad embedding options are refused when the server is created', async () => {
    const off = await createServer(s.model, { embeddings: false, parallel: 1, contextSize: 256, threads: 1 });
    const { url } = await off.listen(0, '127.0.0.1');
    const r = await fetch(`${url}/v1/embeddings`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"model":"x","input":"a"}' });
    expect(r.status).toBe(501);
    await off.close();
    await expect(createServer(s.model, { embeddings: { pooling: 'none' } })).rejects.toThrow(RangeError);
    await expect(createServer(s.model, { embeddings: 'yes' as never })).rejects.toThrow(TypeError);
    await expect(createServer(s.model, { embeddings: { contextSize: 0 } })).rejects.toThrow(/contextSize/);
  });
});
