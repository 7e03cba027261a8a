// Issue #14, the library core: what a file, a prompt or a caller's options could do to the process.
//  4. a memory-mapped model file that changes on disk (truncated, copied over in place) must not SIGBUS the
//     process: the next evaluation rejects with ModelLoadError;
//  5. characters the vocabulary lacks (emoji, U+FFFD, lone surrogates) tokenized in quadratic time (llama.cpp's SPM
//     byte fallback reserved the exact size on every symbol: scripts/patches/0001), on the main thread;
// 12. stop() on a queued generation stopped the running one instead;
// 13. maxTokens 0 returned one token, contextSize 1 silently gave 256.
import { copyFileSync, mkdtempSync, renameSync, rmSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortError, loadModel, ModelLoadError, type Model } from '../../dist/index.js';
import { demoPath, f16Path, reference } from '../helpers.js';

describe('tokenization of characters outside the vocabulary (#14 item 5)', () => {
  let vocab: Model;
  beforeAll(async () => {
    vocab = await loadModel(demoPath, { vocabOnly: true });
  });
  afterAll(() => vocab.dispose());

  it.each(reference.tokenize.map((t) => [JSON.stringify(t.text), t] as const))(
    'tokenizeAsync matches the HF tokenizer and tokenize for %s',
    async (_, { text, ids }) => {
      expect(await vocab.tokenizeAsync(text, { parseSpecial: true })).toEqual(ids);
      expect(await vocab.tokenizeAsync(text)).toEqual(vocab.tokenize(text));
      expect(await vocab.tokenizeAsync(text, { addBos: false })).toEqual(vocab.tokenize(text, { addBos: false }));
    },
  );

  // 2.4 MB of each. Before the patch these took 60-80 s each on the 2-core CI machine (80k emoji: 1.2 s, and
  // the time grew with the square of the length); now about 1-3 s. The bound only catches the quadratic case.
  const cases = [
    ['emoji', '😀', 600_000],
    ['U+FFFD', '\uFFFD', 800_000],
    ['lone surrogates', '\uD800', 800_000],
  ] as const;
  it.each(cases)('tokenizes 2.4 MB of %s in linear time, byte-identical to a short text of them', (_, ch, n) => {
    // A short text gives the pattern: BOS, the space prefix, then the same byte tokens for every character.
    const one = vocab.tokenize(ch);
    const two = vocab.tokenize(ch + ch);
    const unit = two.slice(one.length);
    expect(unit.length).toBeGreaterThan(0);
    expect(one.slice(one.length - unit.length)).toEqual(unit);
    const head = one.slice(0, one.length - unit.length);
    const started = performance.now();
    const ids = vocab.tokenize(ch.repeat(n));
    const ms = performance.now() - started;
    expect(ms).toBeLessThan(30_000);
    expect(ids.length).toBe(head.length + n * unit.length);
    expect(ids.slice(0, head.length)).toEqual(head);
    for (let i = head.length; i < ids.length; i += unit.length) {
      if (ids[i] !== unit[0] || ids[i + unit.length - 1] !== unit[unit.length - 1]) {
        expect({ at: i, ids: ids.slice(i, i + unit.length) }).toEqual({ at: i, ids: unit });
      }
    }
  });

  it('tokenizeAsync runs on a worker thread: timers fire while it tokenizes 2.4 MB', async () => {
    const text = '😀'.repeat(600_000);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    let ticksAtEnd = -1;
    const ids = await vocab.tokenizeAsync(text).finally(() => {
      ticksAtEnd = ticks;
      clearInterval(timer);
    });
    expect(ids.length).toBe(vocab.tokenize('😀').length + 4 * (600_000 - 1));
    expect(ticksAtEnd).toBeGreaterThan(0);
  });

  it('tokenizeAsync: signal, bad options, dispose', async () => {
    const controller = new AbortController();
    const pending = vocab.tokenizeAsync('😀'.repeat(100_000), { signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortError);
    await expect(vocab.tokenizeAsync('x', { signal: controller.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    await expect(vocab.tokenizeAsync(1 as unknown as string)).rejects.toThrow(TypeError);
    await expect(vocab.tokenizeAsync('x', { bos: true } as never)).rejects.toThrow(/Unknown option "bos"/);
    // dispose() waits for tokenizations in flight (they hold the model).
    const other = await loadModel(demoPath, { vocabOnly: true });
    const inFlight = other.tokenizeAsync('😀'.repeat(200_000));
    await other.dispose();
    expect((await inFlight).length).toBeGreaterThan(800_000);
    await expect(other.tokenizeAsync('x')).rejects.toMatchObject({ code: 'ERR_HUOZI_DISPOSED' });
  });
});

describe('a context (#14 items 5, 12, 13)', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(demoPath);
  });
  afterAll(() => model.dispose());

  it('refuses a text prompt that cannot fit from its length, before tokenizing it', async () => {
    await using context = await model.createContext({ contextSize: 64 });
    const huge = '😀'.repeat(4_000_000); // 16 MB: tokenizing it would take seconds
    let error: unknown;
    try {
      context.generate(huge);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RangeError);
    expect((error as RangeError & { code: string }).code).toBe('ERR_OUT_OF_RANGE');
    expect((error as Error).message).toMatch(/at most contextSize \(64\) tokens for prompt but received a text of 16000000 bytes, at least \d+ tokens/);
    // One that might fit is tokenized (on a worker thread) and checked exactly: the result rejects.
    const g = context.generate('😀'.repeat(100));
    await expect(g.result).rejects.toThrow(/at most contextSize \(64\) tokens for prompt but received "402 tokens"/);
    // The context still works.
    const ok = await context.generate('你好', { maxTokens: 2, temperature: 0 }).result;
    expect(ok.tokens.length).toBe(2);
  });

  it('stop() on a queued generation removes it from the queue and leaves the running one alone', async () => {
    await using context = await model.createContext({ contextSize: 256 });
    const prompt = model.tokenize('床前明月光，');
    const options = { maxTokens: 40, temperature: 0, stopAtEog: false };
    const settled: string[] = [];
    const a = context.generate(prompt, options);
    const b = context.generate(prompt, options);
    a.result.then(() => settled.push('a'), () => settled.push('a failed'));
    b.result.then(() => settled.push('b'), () => settled.push('b rejected'));
    b.stop();
    const bError = await b.result.catch((e: unknown) => e);
    expect(bError).toBeInstanceOf(AbortError);
    expect((bError as AbortError & { result: { tokens: number[]; stopReason: string } }).result).toMatchObject({
      tokens: [], text: '', stopReason: 'abort', promptTokens: prompt.length,
    });
    const resultA = await a.result;
    expect(resultA.stopReason).toBe('maxTokens');
    expect(resultA.tokens.length).toBe(40);
    // b left the queue when it was stopped, before a finished.
    expect(settled).toEqual(['b rejected', 'a']);

    // The same through a signal; and the queue goes on with what comes after.
    const controller = new AbortController();
    const c = context.generate(prompt, options);
    const d = context.generate(prompt, { ...options, signal: controller.signal });
    const e = context.generate(prompt, { ...options, maxTokens: 3 });
    controller.abort();
    await expect(d.result).rejects.toBeInstanceOf(AbortError);
    expect((await c.result).tokens.length).toBe(40);
    expect((await e.result).tokens.length).toBe(3);
    // Stopping the running one still stops it (and only it).
    const f = context.generate(prompt, { ...options, maxTokens: 200 });
    const g = context.generate(prompt, { ...options, maxTokens: 5 });
    for await (const _ of f) {
      f.stop();
      break;
    }
    await expect(f.result).rejects.toBeInstanceOf(AbortError);
    expect((await g.result).tokens.length).toBe(5);
  });

  it('maxTokens 0 evaluates the prompt and generates nothing (Context and ParallelContext)', async () => {
    await using context = await model.createContext({ contextSize: 128 });
    const prompt = model.tokenize('床前明月光，疑是地上霜。');
    const r = await context.generate(prompt, { maxTokens: 0 }).result;
    expect(r).toMatchObject({ text: '', tokens: [], stopReason: 'maxTokens', promptTokens: prompt.length, evaluatedTokens: prompt.length });
    expect(context.tokens).toEqual(prompt); // cached for the next request
    const again = await context.generate(prompt, { maxTokens: 1, temperature: 0 }).result;
    expect(again.tokens.length).toBe(1);
    expect(again.reusedTokens).toBe(prompt.length);
    for (const bad of [-1, 1.5, Number.NaN, Infinity]) {
      expect(() => context.generate(prompt, { maxTokens: bad })).toThrow(RangeError);
    }
    expect(() => context.generate(prompt, { maxTokens: '1' as never })).toThrow(TypeError);

    await using parallel = await model.createParallelContext({ parallel: 2, contextSize: 256 });
    const p = await parallel.generate(prompt, { maxTokens: 0 }).result;
    expect(p).toMatchObject({ text: '', tokens: [], stopReason: 'maxTokens', promptTokens: prompt.length });
  });

  it('holds exactly contextSize tokens, however llama.cpp rounds its cells (contextSize 1, 300)', async () => {
    await using tiny = await model.createContext({ contextSize: 1 });
    expect(tiny.contextSize).toBe(1);
    expect(tiny.batchSize).toBe(1);
    const r = await tiny.generate([1], { temperature: 0, stopAtEog: false }).result;
    expect(r.stopReason).toBe('contextFull');
    expect(r.tokens.length).toBe(1);
    expect(() => tiny.generate([1, 2])).toThrow(/at most contextSize \(1\) tokens/);
    await expect(tiny.evaluate([1, 2])).rejects.toMatchObject({ code: 'ERR_HUOZI_CONTEXT_OVERFLOW' });

    await using c300 = await model.createContext({ contextSize: 300 });
    expect(c300.contextSize).toBe(300);
    const long = await c300.generate([1], { temperature: 0, stopAtEog: false }).result;
    expect(long.stopReason).toBe('contextFull');
    expect(long.tokens.length).toBe(300);

    await using parallel = await model.createParallelContext({ parallel: 2, contextSize: 300 });
    expect(parallel.contextSize).toBe(300);
    expect(parallel.slotContextSize).toBe(150);
    const slot = await parallel.generate([1], { temperature: 0, stopAtEog: false }).result;
    expect(slot.stopReason).toBe('contextFull');
    expect(slot.tokens.length).toBe(150);
    // llama.cpp would have raised a batch smaller than the slots, and cut one larger than the context.
    await expect(model.createParallelContext({ parallel: 4, contextSize: 256, batchSize: 2 })).rejects.toThrow(/batchSize/);
    await expect(model.createParallelContext({ parallel: 2, contextSize: 300, batchSize: 512 })).rejects.toThrow(/batchSize/);
  });
});

describe('a memory-mapped model file that changes on disk (#14 item 4)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'huozi-mapped-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function generateOnce(model: Model) {
    await using context = await model.createContext({ contextSize: 64 });
    return await context.generate([1, 2048], { maxTokens: 3, temperature: 0 }).result;
  }

  it('truncated under a loaded model: the next evaluation rejects with ModelLoadError, the process lives', async () => {
    const path = join(dir, 'truncated.gguf');
    copyFileSync(demoPath, path);
    await using model = await loadModel(path);
    await using context = await model.createContext({ contextSize: 64 });
    expect((await context.generate([1, 2048], { maxTokens: 3, temperature: 0 }).result).tokens.length).toBe(3);
    truncateSync(path, Math.floor(statSync(path).size / 2));
    const error = await context.generate([1, 2048], { maxTokens: 3 }).result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as ModelLoadError).code).toBe('ERR_HUOZI_MODEL_LOAD');
    expect((error as Error).message).toMatch(/changed on disk.*rename it into place/);
    await expect(context.evaluate([1])).rejects.toBeInstanceOf(ModelLoadError);
    await using parallel = await model.createParallelContext({ parallel: 2, contextSize: 128 });
    await expect(parallel.generate([1, 2048], { maxTokens: 3 }).result).rejects.toBeInstanceOf(ModelLoadError);
    await expect(parallel.generate('你好', { maxTokens: 3 }).result).rejects.toBeInstanceOf(ModelLoadError);
  });

  it('another model copied over it in place: ModelLoadError', async () => {
    const path = join(dir, 'copied.gguf');
    copyFileSync(demoPath, path);
    await using model = await loadModel(path);
    expect((await generateOnce(model)).tokens.length).toBe(3);
    copyFileSync(f16Path, path); // opens the same inode with O_TRUNC and writes
    await expect(generateOnce(model)).rejects.toBeInstanceOf(ModelLoadError);
  });

  it('a new file renamed into place, or useMmap false: the loaded model goes on working', async () => {
    const path = join(dir, 'renamed.gguf');
    copyFileSync(demoPath, path);
    await using model = await loadModel(path);
    const before = await generateOnce(model);
    copyFileSync(f16Path, path + '.new');
    renameSync(path + '.new', path); // the loaded model keeps the old inode
    expect((await generateOnce(model)).tokens).toEqual(before.tokens);

    const unmapped = join(dir, 'unmapped.gguf');
    copyFileSync(demoPath, unmapped);
    await using copy = await loadModel(unmapped, { useMmap: false });
    truncateSync(unmapped, 0);
    expect((await generateOnce(copy)).tokens).toEqual(before.tokens);
  });
});
