// LoRA adapters at run time (issue #18): loading, applying per context, per generation and per parallel request,
// the cache kept apart by adapter, the server's --lora / per-request `lora`, and the errors. The adapter here is
// written by the test (deterministic, rank 8 on one attention matrix and one layer's experts); the PEFT fixture,
// its conversion and the merge oracle are in test/native/convert-lora.test.ts and lora-oracle.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChatSession, createServer, DisposedError, SessionFileError, GgufValueType, loadModel, LoraAdapter, LoraError, writeGguf, type Model, type WriterTensor,
} from '../../dist/index.js';
import { f16Path } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'huozi-lora-'));
const adapterPath = join(dir, 'adapter.gguf');

/** A rank-8 adapter for huozi-tiny: blk.0.attn_q and blk.1.ffn_up_exps, values from a fixed LCG. */
async function writeAdapter(path: string, { arch = 'llama', experts = 8, layer = 1 } = {}): Promise<void> {
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5);
  const f32 = (dims: number[]) => {
    const a = new Float32Array(dims.reduce((x, y) => x * y, 1));
    for (let i = 0; i < a.length; i++) a[i] = rnd() * 0.2;
    return new Uint8Array(a.buffer);
  };
  const tensors: WriterTensor[] = [];
  const pair = (name: string, a: number[], b: number[]) => {
    tensors.push({ name: `${name}.lora_a`, dims: a, type: 0, data: () => [f32(a)] });
    tensors.push({ name: `${name}.lora_b`, dims: b, type: 0, data: () => [f32(b)] });
  };
  pair('blk.0.attn_q.weight', [256, 8], [8, 256]);
  pair(`blk.${layer}.ffn_up_exps.weight`, [256, 8, experts], [8, 192, experts]);
  const s = (value: string) => ({ type: GgufValueType.STRING, value });
  await writeGguf(path, new Map([
    ['general.architecture', s(arch)], ['general.type', s('adapter')], ['adapter.type', s('lora')],
    ['adapter.lora.alpha', { type: GgufValueType.FLOAT32, value: 16 }],
  ]), tensors);
}

let model: Model;
let adapter: LoraAdapter;
const greedy = { temperature: 0, maxTokens: 16 } as const;
let prompt: number[];
let baseTokens: number[];
let loraTokens: number[];

beforeAll(async () => {
  await writeAdapter(adapterPath);
  model = await loadModel(f16Path);
  adapter = await model.loadLora(adapterPath);
  prompt = model.tokenize('床前明月光，');
  const context = await model.createContext({ contextSize: 256, threads: 1 });
  baseTokens = (await context.generate(prompt, greedy).result).tokens;
  loraTokens = (await context.generate(prompt, { ...greedy, loras: [{ adapter }] }).result).tokens;
  await context.dispose();
});

afterAll(async () => {
  await model?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

describe('LoraAdapter', () => {
  it('reads the adapter file', () => {
    expect(adapter.alpha).toBe(16);
    expect(adapter.path).toBe(adapterPath);
    expect(adapter.metadata['adapter.type']).toBe('lora');
  });

  it('changes the answer; scale 0 and no adapter give the base logits exactly', async () => {
    expect(loraTokens).not.toEqual(baseTokens);
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    const base = (await context.evaluate(prompt))!;
    await context.setLoras([{ adapter, scale: 0 }]);
    await context.eraseFrom(0);
    const zero = (await context.evaluate(prompt))!;
    expect(Buffer.from(zero.buffer).equals(Buffer.from(base.buffer))).toBe(true);
    await context.setLoras([{ adapter, scale: 1 }]);
    const scaled = (await context.evaluate(prompt))!;
    expect(Buffer.from(scaled.buffer).equals(Buffer.from(base.buffer))).toBe(false);
    expect(context.loras).toEqual([{ adapter, scale: 1 }]);
    await context.dispose();
  });

  it('keeps the cache apart: a generation with other adapters never reuses cells computed without them', async () => {
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    // Alternating on one context gives each answer as on a fresh one.
    for (let i = 0; i < 2; i++) {
      expect((await context.generate(prompt, greedy).result).tokens).toEqual(baseTokens);
      expect((await context.generate(prompt, { ...greedy, loras: [{ adapter }] }).result).tokens).toEqual(loraTokens);
    }
    // setLoras applies to what follows; a generation's own list wins, and the context's comes back after it.
    await context.setLoras([{ adapter }]);
    expect((await context.generate(prompt, greedy).result).tokens).toEqual(loraTokens);
    expect((await context.generate(prompt, { ...greedy, loras: [] }).result).tokens).toEqual(baseTokens);
    expect((await context.generate(prompt, greedy).result).tokens).toEqual(loraTokens);
    await context.dispose();
  });

  it('serves parallel requests with different adapters at once, each as alone', async () => {
    const context = await model.createParallelContext({ parallel: 4, contextSize: 1024, threads: 1 });
    const runs = [undefined, [{ adapter }], [], [{ adapter, scale: 1 }], undefined, [{ adapter }]].map((loras) =>
      context.generate(prompt, loras === undefined ? greedy : { ...greedy, loras }).result);
    const results = await Promise.all(runs);
    expect(results.map((r) => r.tokens)).toEqual([baseTokens, loraTokens, baseTokens, loraTokens, baseTokens, loraTokens]);
    await context.setLoras([{ adapter }]);
    expect((await context.generate(prompt, greedy).result).tokens).toEqual(loraTokens);
    expect((await context.generate(prompt, { ...greedy, loras: [] }).result).tokens).toEqual(baseTokens);
    await context.dispose();
  });

  it('refuses what it cannot apply, with typed errors and nothing lost', async () => {
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    await expect(context.setLoras({} as never)).rejects.toThrow(TypeError);
    await expect(context.setLoras([{ adapter: {} as never }])).rejects.toThrow(TypeError);
    await expect(context.setLoras([{ adapter }, { adapter }])).rejects.toThrow(/each adapter once/);
    await expect(context.setLoras([{ adapter, scale: Number.NaN }])).rejects.toThrow(RangeError);
    await expect(context.setLoras([{ adapter, scale: 1, extra: 1 } as never])).rejects.toThrow(/extra/);
    expect(() => context.generate(prompt, { loras: 'x' as never })).toThrow(TypeError);
    // Another model's adapter (the same file, loaded for another Model object).
    const other = await loadModel(f16Path);
    const foreign = await other.loadLora(adapterPath);
    await expect(context.setLoras([{ adapter: foreign }])).rejects.toThrow(/loaded for this model/);
    await other.dispose();
    expect(foreign.disposed).toBe(true); // disposing a model disposes its adapters
    // Files made for another model, or not adapters: LoraError naming the problem, before llama.cpp sees them.
    const wrongExperts = join(dir, 'experts4.gguf');
    await writeAdapter(wrongExperts, { experts: 4 });
    await expect(model.loadLora(wrongExperts)).rejects.toThrow(LoraError);
    const wrongLayer = join(dir, 'layer99.gguf');
    await writeAdapter(wrongLayer, { layer: 99 });
    await expect(model.loadLora(wrongLayer)).rejects.toThrow(/blk\.99/);
    const wrongArch = join(dir, 'arch.gguf');
    await writeAdapter(wrongArch, { arch: 'qwen2' });
    await expect(model.loadLora(wrongArch)).rejects.toThrow(LoraError);
    await expect(model.loadLora(f16Path)).rejects.toThrow(LoraError);
    await expect(model.loadLora(join(dir, 'missing.gguf'))).rejects.toThrow(/ENOENT/);
    await expect(model.loadLora(dir)).rejects.toThrow(/not a regular file|directory/i);
    // The context still works, with the adapter.
    expect((await context.generate(prompt, { ...greedy, loras: [{ adapter }] }).result).tokens).toEqual(loraTokens);
    await context.dispose();
  });

  it('a disposed adapter cannot be set; a context applying it keeps working', async () => {
    const own = await model.loadLora(adapterPath);
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    await context.setLoras([{ adapter: own }]);
    await own.dispose();
    expect(own.disposed).toBe(true);
    expect((await context.generate(prompt, greedy).result).tokens).toEqual(loraTokens);
    await expect(context.setLoras([{ adapter: own }])).rejects.toThrow(DisposedError);
    expect(() => context.generate(prompt, { ...greedy, loras: [{ adapter: own }] })).toThrow(DisposedError);
    await context.setLoras([]);
    expect((await context.generate(prompt, greedy).result).tokens).toEqual(baseTokens);
    await context.dispose();
  });
});

describe('session files record the adapters', () => {
  it('loads only into a context that applies the same adapters and scales', async () => {
    const file = join(dir, 'session.bin');
    const a = await model.createContext({ contextSize: 256, threads: 1 });
    await a.setLoras([{ adapter }]);
    const saved = new ChatSession(a);
    await saved.prompt('床前明月光', greedy);
    await saved.save(file);
    const b = await model.createContext({ contextSize: 256, threads: 1 });
    const restored = new ChatSession(b);
    await expect(restored.load(file)).rejects.toThrow(/other LoRA adapters/);
    await b.setLoras([{ adapter, scale: 0.5 }]);
    await expect(restored.load(file)).rejects.toThrow(SessionFileError);
    await b.setLoras([{ adapter }]);
    await restored.load(file);
    expect(b.tokens).toEqual(a.tokens);
    // A session saved on the base model does not load where an adapter is applied.
    const c = await model.createContext({ contextSize: 256, threads: 1 });
    const plain = new ChatSession(c);
    await plain.prompt('床前明月光', greedy);
    await plain.save(file);
    await expect(restored.load(file)).rejects.toThrow(/other LoRA adapters/);
    for (const x of [a, b, c]) await x.dispose();
  });

  it('ChatSession answers take `loras` too', async () => {
    const context = await model.createContext({ contextSize: 512, threads: 1 });
    const plain = await new ChatSession(context).prompt('床前明月光', greedy);
    const adapted = await new ChatSession(context).prompt('床前明月光', { ...greedy, loras: [{ adapter }] });
    const again = await new ChatSession(context).prompt('床前明月光', greedy);
    expect(adapted.text).not.toBe(plain.text);
    expect(again.text).toBe(plain.text);
    await expect(new ChatSession(context).prompt('x', { loras: [{ adapter, scale: 'x' as never }] })).rejects.toThrow(TypeError);
    await context.dispose();
  });
});

describe('the server: --lora and a request\'s `lora`', () => {
  it('answers with the adapters a request names, lists them, and refuses unknown ids', async () => {
    const server = await createServer(model, { threads: 1, parallel: 2, contextSize: 1024, loras: [{ adapter, scale: 1 }], servedModelName: 'huozi' });
    const { url } = await server.listen(0, '127.0.0.1');
    try {
      const post = async (body: Record<string, unknown>) => {
        const res = await fetch(`${url}/v1/completions`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ model: 'huozi', prompt, max_tokens: 16, temperature: 0, ignore_eos: false, ...body }),
        });
        return { status: res.status, json: (await res.json()) as Record<string, any> };
      };
      // The server holds back a last token that ends inside a character.
      const text = (tokens: number[]) => model.detokenize(tokens).replace(/\ufffd+$/, '');
      // The server's default (scale 1), the adapter off, at scale 1 by id.
      expect((await post({})).json.choices[0].text).toBe(text(loraTokens));
      expect((await post({ lora: [{ id: 0, scale: 0 }] })).json.choices[0].text).toBe(text(baseTokens));
      expect((await post({ lora: [{ id: 0, scale: 1 }] })).json.choices[0].text).toBe(text(loraTokens));
      const listed = await (await fetch(`${url}/lora-adapters`)).json();
      expect(listed).toEqual([{ id: 0, path: adapterPath, scale: 1 }]);
      for (const lora of [[{ id: 1, scale: 1 }], [{ id: 0 }], [{ id: -1, scale: 1 }], [{ id: 0, scale: 1, x: 1 }], 'x', [{ id: 0, scale: 1 }, { id: 0, scale: 2 }]]) {
        const r = await post({ lora });
        expect(r.status, JSON.stringify(lora)).toBe(400);
        expect(r.json.error.param).toMatch(/^lora/);
      }
    } finally {
      await server.close();
    }
  });
});
