import { readFile } from 'node:fs/promises';
import type { Model } from '../model.js';
import * as v from '../validate.js';

/** Options of {@link perplexity} and {@link perplexityOfFile}. */
export interface PerplexityOptions {
  /** Tokens per chunk (llama-perplexity `-c`). Default: 512. */
  contextSize?: number;
  /** Most chunks. Default: all of the text. */
  chunks?: number;
  /** CPU threads. Default: the available cores. */
  threads?: number;
  /** Stops the evaluation; the promise rejects with {@link AbortError}. */
  signal?: AbortSignal;
}

/** What {@link perplexity} resolves to. */
export interface PerplexityResult {
  perplexity: number;
  /** Chunks evaluated. */
  chunks: number;
  /** Tokens scored: the second half of each chunk. */
  scoredTokens: number;
}

/**
 * Perplexity of `text` exactly as llama-perplexity computes it: the text tokenized with BOS, cut into chunks
 * of `contextSize` tokens, each chunk evaluated from an empty context with its first token replaced by BOS,
 * and the second half of each chunk scored.
 */
export async function perplexity(model: Model, text: string, options?: PerplexityOptions): Promise<PerplexityResult> {
  v.string('text', text);
  const o = v.options<PerplexityOptions>('options', options, ['contextSize', 'chunks', 'threads', 'signal']);
  const nCtx = o.contextSize === undefined ? 512 : v.integer('contextSize', o.contextSize, 4, 1 << 20);
  const tokens = model.tokenize(text, { addBos: true });
  const available = Math.floor(tokens.length / nCtx);
  const chunks = o.chunks === undefined ? available : Math.min(available, v.integer('chunks', o.chunks, 1));
  if (tokens.length < 2 * nCtx) throw v.rangeError(`a text of at least ${2 * nCtx} tokens`, 'text', `${tokens.length} tokens`);
  const first = Math.floor(nCtx / 2);
  const vocab = model.vocabularySize;
  const context = await model.createContext({ contextSize: nCtx, batchSize: nCtx, threads: o.threads });
  let nll = 0;
  let count = 0;
  try {
    for (let c = 0; c < chunks; c++) {
      const chunk = tokens.slice(c * nCtx, (c + 1) * nCtx);
      if (model.tokens.addBos && model.tokens.bos !== null) chunk[0] = model.tokens.bos;
      await context.clear();
      const logits = (await context.evaluate(chunk, { logits: 'all', signal: o.signal }))!;
      for (let pos = first; pos < nCtx - 1; pos++) {
        const row = logits.subarray(pos * vocab, (pos + 1) * vocab);
        let max = -Infinity;
        for (let i = 0; i < vocab; i++) if (row[i] > max) max = row[i];
        let sum = 0;
        for (let i = 0; i < vocab; i++) sum += Math.exp(row[i] - max);
        nll += Math.log(sum) + max - row[chunk[pos + 1]];
        count++;
      }
    }
  } finally {
    await context.dispose();
  }
  return { perplexity: Math.exp(nll / count), chunks, scoredTokens: count };
}

/** perplexity() of a text file. */
export async function perplexityOfFile(model: Model, path: string, options?: PerplexityOptions): Promise<PerplexityResult> {
  return perplexity(model, await readFile(path, 'utf8'), options);
}
