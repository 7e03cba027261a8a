// The same requests to `huozi-gguf serve` and to llama.cpp's own llama-server, built from the same tree as the
// addon (scripts/native-tools.mjs), on the same model, slots, context, threads and batch sizes: the logprobs of
// a greedy answer agree within 1e-4, and a JSON Schema gives the same greedy text from both.
//
// Which of llama-server's logprobs: with `post_sampling_probs` false (its default, sent explicitly here) each
// token's probabilities are the softmax of the raw logits (tools/server: get_token_probabilities over
// llama_get_logits_ith, before temperature, penalties, truncation and the grammar), reported as
// log(p) in float, which is what ours reports (the log-softmax of the raw logits; lib/generation.ts). With
// `post_sampling_probs` true it reports the sampling chain's probabilities instead, which the library has as
// `postSamplingProbs` and the server does not offer.
//
// The request is /v1/completions with the prompt as token ids on both: the fixture's file has no chat template,
// and for a chat request llama-server would render its own (ChatML) where ours renders Huozi's. Ours answers in
// the legacy completions shape (`tokens`, `token_logprobs`, `top_logprobs` as text -> logprob), llama-server in
// the chat shape inside its completion (`logprobs.content[]` with ids and bytes).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer as netServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import Ajv from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, huoziTemplate, loadModel, type HuoziServer, type Model } from '../../dist/index.js';
import { buildNativeTools, nativeTool } from '../../scripts/native-tools.mjs';
import { f16Path, root } from '../helpers.js';

// CMakeLists.txt turns llama-server's target on only where the vendored tree has tools/ui (trimmed copies lack
// it); .build/native, the fallback tree, needs the same sources.
const llamaDir = join(root, 'vendor', 'llama.cpp');
const missing = ['tools/server/CMakeLists.txt', 'tools/ui/CMakeLists.txt'].filter((f) => !existsSync(join(llamaDir, f)));
const why = missing.length > 0 ? `this llama.cpp tree cannot build llama-server (no ${missing.map((f) => `vendor/llama.cpp/${f}`).join(', ')})` : undefined;
if (why) console.warn(`test/server/llama-server.test.ts is skipped: ${why}`);

const THREADS = 1;
const CONTEXT = 2048;
const BATCH = 2048;
const UBATCH = 512;

let model: Model;
let ours: HuoziServer;
let oursUrl: string;
let theirs: ChildProcess | undefined;
let theirsUrl: string;
let prompt: number[];

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function startLlamaServer(): Promise<void> {
  const port = await freePort();
  const child = spawn(nativeTool('llama-server'), [
    '-m', f16Path, '--port', String(port), '-np', '1', '-c', String(CONTEXT), '-t', String(THREADS),
    '-b', String(BATCH), '-ub', String(UBATCH), '--alias', 'm', '--no-webui',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  theirs = child;
  let log = '';
  child.stderr!.on('data', (d) => {
    log = (log + d).slice(-8000);
  });
  theirsUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 1200; i++) {
    if (child.exitCode !== null) throw new Error(`llama-server exited with ${child.exitCode}:\n${log}`);
    try {
      if ((await fetch(`${theirsUrl}/health`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`llama-server did not become healthy:\n${log}`);
}

async function complete(url: string, body: Record<string, unknown>): Promise<Record<string, any>> {
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text);
}

/** Token bytes as text, as ours names a token in the legacy shape (a broken UTF-8 sequence is one U+FFFD). */
const decode = (bytes: number[]) => new TextDecoder().decode(Uint8Array.from(bytes));

describe.skipIf(why !== undefined)(why ? `huozi-gguf serve and llama-server (skipped: ${why})` : 'huozi-gguf serve and llama-server', () => {
  beforeAll(async () => {
    // llama-server from the addon's own tree (.ci/run builds it before the tests; here it is built if missing).
    const tools = buildNativeTools(['llama-server']);
    console.log(`llama-server: ${nativeTool('llama-server')} (${tools.why}${tools.fallback.length ? '; from .build/native' : ''})`);
    model = await loadModel(f16Path);
    ours = await createServer(model, {
      servedModelName: 'm', parallel: 1, contextSize: CONTEXT, batchSize: BATCH, ubatchSize: UBATCH, threads: THREADS,
    });
    ({ url: oursUrl } = await ours.listen(0));
    await startLlamaServer();
    const text = huoziTemplate.render([{ role: 'user', content: '请背诵《静夜思》' }], true).map((s) => s.text).join('');
    prompt = Array.from(model.tokenize(text, { parseSpecial: true }));
  }, 1_800_000);

  afterAll(async () => {
    if (theirs && theirs.exitCode === null) {
      theirs.kill('SIGTERM');
      await new Promise((r) => theirs!.once('exit', r));
    }
    await ours?.close();
    await model?.dispose();
  });

  // Every request here sends cache_prompt false to both, so that its logits do not depend on the one before it: with
  // the prompt cached, llama-server evaluates the prompt's last token again alone (a one-token batch, whose
  // logits differ from the whole prompt's in the last bits), where ours keeps the prompt's last logits; under
  // greedy decoding a near-tie in the fixture then gives a different answer from the second request on.
  it('greedy logprobs with top_logprobs 5: the same tokens, and every logprob within 1e-4 of llama-server\'s (raw log-softmax on both)', async () => {
    const request = { model: 'm', prompt, max_tokens: 16, temperature: 0, cache_prompt: false };
    const a = await complete(oursUrl, { ...request, logprobs: 5 });
    const b = await complete(theirsUrl, { ...request, logprobs: 5, post_sampling_probs: false });
    expect(a.usage.prompt_tokens).toBe(prompt.length);
    expect(b.usage.prompt_tokens).toBe(prompt.length);
    // 16 tokens on both, none of them a stop token.
    expect(a.choices[0].finish_reason).toBe('length');
    expect(b.choices[0].finish_reason).toBe('length');
    const text: string = a.choices[0].text;
    expect(text).toBe(b.choices[0].text);

    const mine = a.choices[0].logprobs as { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };
    const theirsLp = b.choices[0].logprobs.content as { id: number; bytes: number[]; logprob: number; top_logprobs: { id: number; bytes: number[]; logprob: number }[] }[];
    expect(mine.tokens).toHaveLength(16);
    // llama-server reports a token only once the text is whole UTF-8 (tools/server process_token: a token that
    // leaves a character incomplete gets no entry, and the token completing it carries the whole character's
    // bytes with its own logprob and alternatives). Ours reports every token; a token inside a character shares
    // its text_offset with the next. So ours' tokens form groups, each ending where a character is complete, and
    // each group's last token is llama-server's entry.
    const ends: number[] = [];
    for (let i = 0; i < mine.tokens.length; i++) {
      if (i === mine.tokens.length - 1 || mine.text_offset[i + 1] > mine.text_offset[i]) ends.push(i);
    }
    expect(theirsLp).toHaveLength(ends.length);
    let largest = 0;
    let compared = 0;
    ends.forEach((i, j) => {
      const t = theirsLp[j];
      const from = j === 0 ? 0 : ends[j - 1] + 1;
      // The group's text is the entry's.
      expect(text.slice(mine.text_offset[from], i + 1 < mine.tokens.length ? mine.text_offset[i + 1] : text.length)).toBe(decode(t.bytes));
      if (from === i) expect(mine.tokens[i]).toBe(decode(t.bytes));
      largest = Math.max(largest, Math.abs(mine.token_logprobs[i] - t.logprob));
      expect(Math.abs(mine.token_logprobs[i] - t.logprob)).toBeLessThan(1e-4);
      // Greedy: the token is llama-server's most likely one too.
      expect(t.top_logprobs).toHaveLength(5);
      expect(t.top_logprobs[0].id).toBe(t.id);
      // Ours keys the alternatives by their text (U+FFFD for a broken sequence), keeping the first (most likely)
      // of tokens with the same text.
      const expected = new Map<string, number>();
      for (const alt of t.top_logprobs) if (!expected.has(decode(alt.bytes))) expected.set(decode(alt.bytes), alt.logprob);
      expect(Object.keys(mine.top_logprobs[i]).sort()).toEqual([...expected.keys()].sort());
      for (const [key, logprob] of expected) {
        largest = Math.max(largest, Math.abs(mine.top_logprobs[i][key] - logprob));
        expect(Math.abs(mine.top_logprobs[i][key] - logprob)).toBeLessThan(1e-4);
        compared++;
      }
    });
    console.log(`${ends.length} of ${mine.tokens.length} tokens and ${compared} alternatives compared with llama-server's; largest difference ${largest.toExponential(2)}`);
  });

  it('a JSON Schema, greedy: the same text from both (the same converter and grammar), and it validates', async () => {
    const schema = {
      type: 'object',
      additionalProperties: false,
      properties: {
        title: { type: 'string', maxLength: 12 },
        author: { type: 'string', maxLength: 8 },
        lines: { type: 'integer', minimum: 1, maximum: 40 },
        form: { enum: ['五言', '七言', '词'] },
        images: { type: 'array', items: { type: 'string', maxLength: 6 }, minItems: 1, maxItems: 3 },
        meta: {
          type: 'object', additionalProperties: false,
          properties: { dynasty: { type: 'string', maxLength: 4 }, year: { type: 'integer', minimum: 600, maximum: 1300 } },
          required: ['dynasty', 'year'],
        },
        famous: { type: 'boolean' },
      },
      required: ['title', 'author', 'lines', 'form', 'images', 'meta', 'famous'],
    };
    // The converter's whitespace rule lets the fixture write long runs of tabs: room for them.
    const request = { model: 'm', prompt, max_tokens: 1024, temperature: 0, cache_prompt: false };
    const a = await complete(oursUrl, { ...request, response_format: { type: 'json_schema', json_schema: { name: 'poem', schema, strict: true } } });
    const b = await complete(theirsUrl, { ...request, json_schema: schema });
    // Both ended where the grammar does (not at max_tokens).
    expect(a.choices[0].finish_reason).toBe('stop');
    expect(b.choices[0].finish_reason).toBe('stop');
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(a.usage.completion_tokens).toBe(b.usage.completion_tokens);
    const validate = new Ajv({ strict: false }).compile(schema);
    expect(validate(JSON.parse(a.choices[0].text)), JSON.stringify(validate.errors)).toBe(true);
  });
});
