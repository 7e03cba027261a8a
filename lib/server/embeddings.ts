// POST /v1/embeddings in OpenAI's shape, on an EmbeddingContext of the served model. The context is created at the
// first request (llama-server needs `--embeddings` for the endpoint and then serves only embeddings; here a
// server answers chat, completions and embeddings at once, and one that is never asked for embeddings never pays
// for their context). `embeddings: false` turns the endpoint off (501, as llama-server without --embeddings).
import { endianness } from 'node:os';
import type { ServerResponse } from 'node:http';
import { checkEmbeddingOptions, type EmbeddingContext, type EmbeddingContextOptions, type EmbeddingPlan } from '../embedding.js';
import type { Model } from '../model.js';
import * as v from '../validate.js';
import { bad, HttpError } from './http-error.js';

type Body = Record<string, unknown>;

/** OpenAI's limits: inputs per request, and tokens in all inputs of one request. */
export const MAX_EMBEDDING_INPUTS = 2048;
export const MAX_EMBEDDING_REQUEST_TOKENS = 300_000;

/** A request to /v1/embeddings, checked. */
export interface EmbeddingRequest {
  model: string;
  /** Texts or token-id lists, at least one. */
  inputs: (string | number[])[];
  /** `input` was one text or one list of token ids (errors name `input`, not `input[0]`). */
  single: boolean;
  encoding: 'float' | 'base64';
  dimensions?: number;
}

// `user` (an end-user id for OpenAI's abuse monitoring) is accepted, as by the chat endpoints, and recorded
// nowhere: it cannot change the answer.
const FIELDS = new Set(['input', 'model', 'encoding_format', 'dimensions', 'user']);

function unknownKey(param: string): HttpError {
  return new HttpError(400, `Unrecognized request argument supplied: ${param}`, { param, code: 'unknown_parameter' });
}

const isTokenIds = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === 'number');

/** Parses a request body (400 naming the field on anything wrong). */
export function parseEmbeddingRequest(body: Body): EmbeddingRequest {
  for (const key of Object.keys(body)) if (!FIELDS.has(key)) throw unknownKey(key);
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0) throw bad('model', 'a non-empty string', model);
  const input = body.input;
  const expected = 'a non-empty string, an array of them, an array of token ids, or an array of those';
  let inputs: (string | number[])[];
  const single = typeof input === 'string' || isTokenIds(input);
  if (single) inputs = [input];
  else if (Array.isArray(input) && input.length > 0 && (input.every((x) => typeof x === 'string') || input.every((x) => Array.isArray(x)))) {
    inputs = input as (string | number[])[];
  } else {
    throw bad('input', expected, input);
  }
  if (inputs.length > MAX_EMBEDDING_INPUTS) {
    throw new HttpError(400, `'input' has ${inputs.length} items; at most ${MAX_EMBEDDING_INPUTS} are accepted in one request.`, {
      param: 'input', code: 'invalid_value',
    });
  }
  inputs.forEach((x, i) => {
    const at = single ? 'input' : `input[${i}]`;
    if (typeof x === 'string') {
      if (x.length === 0) throw bad(at, 'a non-empty string', x);
    } else if (!isTokenIds(x)) {
      throw bad(at, 'a non-empty array of token ids', x);
    } else {
      const j = x.findIndex((t) => !Number.isInteger(t) || t < 0);
      if (j >= 0) throw bad(`${at}[${j}]`, 'a token id (a non-negative integer)', x[j]);
    }
  });
  const format = body.encoding_format ?? 'float';
  if (format !== 'float' && format !== 'base64') throw bad('encoding_format', "'float' or 'base64'", format);
  let dimensions: number | undefined;
  if (body.dimensions !== undefined && body.dimensions !== null) {
    if (typeof body.dimensions !== 'number' || !Number.isInteger(body.dimensions) || body.dimensions < 1) {
      throw bad('dimensions', 'a positive integer', body.dimensions);
    }
    dimensions = body.dimensions;
  }
  const user = body.user;
  if (user !== undefined && user !== null && typeof user !== 'string') throw bad('user', 'a string', user);
  return { model, inputs, single, encoding: format, dimensions };
}

/** The little-endian float32 bytes of `values`, in base64 (OpenAI's `encoding_format: 'base64'`). */
export function float32Base64(values: Float32Array): string {
  const bytes = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  if (endianness() === 'LE') return bytes.toString('base64');
  const copy = Buffer.from(bytes);
  copy.swap32();
  return copy.toString('base64');
}

export interface EmbeddingsSettings {
  model: Model;
  name: string;
  aliases: readonly string[];
  /** false: the endpoint answers 501. */
  options: EmbeddingContextOptions | false;
  /** Requests that may run or wait at once; more get 503. */
  maxQueue: number;
}

/** The /v1/embeddings endpoint of one server. */
export class Embeddings {
  readonly #s: EmbeddingsSettings;
  readonly #plan: EmbeddingPlan | undefined;
  #context: Promise<EmbeddingContext<Float32Array>> | undefined;
  #closed = false;
  #active = 0;

  /** Checks the options at once (TypeError/RangeError naming them); the context itself comes with the first request. */
  constructor(settings: EmbeddingsSettings) {
    this.#s = settings;
    if (settings.options !== false) {
      this.#plan = checkEmbeddingOptions(settings.model, settings.options);
      if (this.#plan.pooling === 'none') {
        throw v.rangeError("'mean', 'cls', 'last' or 'model' (the server answers one vector per input)", 'embeddings.pooling', 'none');
      }
    }
  }

  /** Whether the endpoint is on. */
  get enabled(): boolean {
    return this.#plan !== undefined;
  }

  /** The embedding context, once a request made it. */
  get context(): Promise<EmbeddingContext<Float32Array>> | undefined {
    return this.#context;
  }

  #get(): Promise<EmbeddingContext<Float32Array>> {
    if (!this.#context) {
      const made = this.#s.model.createEmbeddingContext(this.#s.options as EmbeddingContextOptions & { pooling?: 'mean' | 'cls' | 'last' | 'model' });
      this.#context = made;
      // A failure (memory, say) is answered to this request; the next one tries again.
      made.catch(() => {
        if (this.#context === made) this.#context = undefined;
      });
    }
    return this.#context;
  }

  /** Answers `body` on `res`; the usage for the request log. */
  async serve(res: ServerResponse, body: Body): Promise<{ prompt_tokens: number; total_tokens: number } | undefined> {
    if (!this.#plan) {
      throw new HttpError(501, 'This server does not serve embeddings (it was started with embeddings off; huozi-gguf serve --no-embeddings).', {
        code: 'not_supported',
      });
    }
    const request = parseEmbeddingRequest(body);
    if (request.model !== this.#s.name && !this.#s.aliases.includes(request.model)) {
      throw new HttpError(404, `The model '${request.model}' does not exist; this server serves '${this.#s.name}'.`, {
        param: 'model', code: 'model_not_found',
      });
    }
    const dimension = this.#s.model.info.embeddingSize;
    if (request.dimensions !== undefined && request.dimensions !== dimension) {
      throw new HttpError(400, `'dimensions' must be ${dimension}, this model's embedding size: it cannot make shorter embeddings.`, {
        param: 'dimensions', code: 'invalid_value',
      });
    }
    const vocabulary = this.#s.model.vocabularySize;
    const limit = this.#plan.contextSize;
    for (const [i, x] of request.inputs.entries()) {
      const at = request.single ? 'input' : `input[${i}]`;
      const least = typeof x === 'string' ? this.#s.model.minTokens(x) : x.length;
      if (least > limit) throw tooLong(at, least, limit, typeof x === 'string' ? 'at least ' : '');
      if (typeof x !== 'string') {
        const j = x.findIndex((t) => t >= vocabulary);
        if (j >= 0) throw bad(`${at}[${j}]`, `a token id below the vocabulary size (${vocabulary})`, x[j]);
      }
    }
    if (this.#closed) throw new HttpError(503, 'The server is shutting down.', { type: 'server_error', code: 'shutting_down' });
    if (this.#active >= this.#s.maxQueue + 1) {
      throw new HttpError(503, `The server is busy: ${this.#active} embedding requests are running or waiting. Try again shortly.`, {
        type: 'server_error', code: 'server_busy', headers: { 'Retry-After': '1' },
      });
    }
    this.#active++;
    const left = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) left.abort();
    };
    res.on('close', onClose);
    try {
      const context = await this.#get();
      const texts = request.inputs.filter((x): x is string => typeof x === 'string');
      // Tokenized first so that a request over the limits is refused whole, before it computes anything.
      const counts = await Promise.all(texts.map((t) => this.#s.model.tokenizeAsync(t, { signal: left.signal }).then((ids) => ids.length)));
      let c = 0;
      let total = 0;
      for (const [i, x] of request.inputs.entries()) {
        const n = typeof x === 'string' ? counts[c++] : x.length;
        if (n > limit) throw tooLong(request.single ? 'input' : `input[${i}]`, n, limit, '');
        total += n;
      }
      if (total > MAX_EMBEDDING_REQUEST_TOKENS) {
        throw new HttpError(400, `The inputs have ${total} tokens in all; at most ${MAX_EMBEDDING_REQUEST_TOKENS} are accepted in one request.`, {
          param: 'input', code: 'max_tokens_per_request',
        });
      }
      const r = await context.embedWithUsage(request.inputs, { signal: left.signal });
      const usage = { prompt_tokens: r.promptTokens, total_tokens: r.promptTokens };
      const text = JSON.stringify({
        object: 'list',
        data: r.embeddings.map((e, index) => ({
          object: 'embedding', index, embedding: request.encoding === 'base64' ? float32Base64(e) : Array.from(e),
        })),
        model: request.model,
        usage,
      });
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
        res.end(text);
      }
      return usage;
    } finally {
      this.#active--;
      res.off('close', onClose);
    }
  }

  /** Frees the embedding context (if one was made); later requests get 503. */
  async close(): Promise<void> {
    this.#closed = true;
    const context = await this.#context?.catch(() => undefined);
    await context?.dispose();
  }
}

function tooLong(at: string, tokens: number, limit: number, least: string): HttpError {
  return new HttpError(
    400,
    `This model's maximum context length for embeddings is ${limit} tokens, however '${at}' has ${least}${tokens} tokens. Shorten it.`,
    { param: at, code: 'context_length_exceeded' },
  );
}
