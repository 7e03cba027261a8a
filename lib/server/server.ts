// `huozi-gguf serve`: an OpenAI-compatible HTTP server on Node's http module. Every request becomes one
// generation on a ParallelContext (continuous batching over N slots); requests beyond the slots wait in its
// queue, up to `maxQueue`, then get 503 with Retry-After. A client that goes away cancels its generation,
// which frees its slot at the next decode step.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { packageRoot } from '../binding.js';
import { detectTemplate, type TemplateOption } from '../chat/detect.js';
import type { ChatTemplate } from '../chat/template.js';
import { tokenizeSegments } from '../chat/tokenize.js';
import type { GenerationResult, StopReason } from '../context.js';
import { AbortError, DisposedError, HuoziError } from '../errors.js';
import type { Model } from '../model.js';
import type { ParallelContext, ParallelGenerateOptions } from '../parallel.js';
import * as v from '../validate.js';
import { HttpError, parseChatRequest, parseCompletionRequest, parseJson, type SamplingRequest } from './openai.js';
import { Metrics } from './metrics.js';

export interface ServerOptions {
  /** The model id clients name (`model` in requests, `/v1/models`). Default: the file name without `.gguf`. */
  servedModelName?: string;
  /** Other ids accepted in requests for the same model. Default: none. */
  aliases?: readonly string[];
  /** Requests to /v1/* and /metrics need `Authorization: Bearer <apiKey>`. Default: none (open). */
  apiKey?: string;
  /** Requests generated at once (slots). Default: 4. */
  parallel?: number;
  /** KV cache tokens in all, shared out among the slots (llama.cpp `-c`). Default: 4096 per slot. */
  contextSize?: number;
  /** CPU threads. Default: the cores available. */
  threads?: number;
  /** Most tokens per decode step (llama.cpp `-b`). Default: min(2048, contextSize). */
  batchSize?: number;
  /** Flash attention. Default: 'auto'. */
  flashAttention?: boolean | 'auto';
  /** Chat template: 'auto' (the GGUF's own, or Huozi's/ChatML by vocabulary), 'huozi', 'chatml', { file }, { jinja }. */
  chatTemplate?: TemplateOption;
  /** The role name in chat answers (vLLM's `--response-role`; Huozi's README uses 助手). Default: 'assistant'. */
  responseRole?: string;
  /**
   * Streaming: at most how often, in milliseconds, an answer's new text is sent as an SSE event (the text
   * generated in between goes in one event); `0` sends every token's text as an event of its own, as
   * llama-server does. A request's `stream_interval_ms` field overrides it. Integer, 0–60000. Default: 16.
   */
  streamIntervalMs?: number;
  /** Requests that may wait for a slot before new ones get 503. Default: 64. */
  maxQueue?: number;
  /** Largest request body accepted, in bytes. Default: 4 MiB. */
  maxBodyBytes?: number;
  /** Serve the web chat page at `/`. Default: true. */
  webPage?: boolean;
  /** Called with one line per request (method, path, status, duration, tokens). Default: none. */
  log?: (line: string) => void;
}

const OPTIONS = [
  'servedModelName', 'aliases', 'apiKey', 'parallel', 'contextSize', 'threads', 'batchSize', 'flashAttention', 'chatTemplate',
  'responseRole', 'streamIntervalMs', 'maxQueue', 'maxBodyBytes', 'webPage', 'log',
] as const;

/** Creates the server (and its ParallelContext on `model`); call `listen()` to start serving. */
export async function createServer(model: Model, options?: ServerOptions): Promise<HuoziServer> {
  const o = v.options<ServerOptions>('options', options, OPTIONS);
  const name = o.servedModelName === undefined ? defaultName(model) : v.string('servedModelName', o.servedModelName);
  if (name.length === 0) throw v.rangeError('a non-empty string', 'servedModelName', name);
  const aliases = o.aliases === undefined ? [] : v.stringArray('aliases', o.aliases);
  const apiKey = o.apiKey === undefined ? undefined : v.string('apiKey', o.apiKey);
  if (apiKey !== undefined && apiKey.length === 0) throw v.rangeError('a non-empty string', 'apiKey', apiKey);
  const responseRole = o.responseRole === undefined ? 'assistant' : v.string('responseRole', o.responseRole);
  const streamIntervalMs = o.streamIntervalMs === undefined ? 16 : v.integer('streamIntervalMs', o.streamIntervalMs, 0, 60_000);
  const maxQueue = o.maxQueue === undefined ? 64 : v.integer('maxQueue', o.maxQueue, 0, 1 << 20);
  const maxBodyBytes = o.maxBodyBytes === undefined ? 4 << 20 : v.integer('maxBodyBytes', o.maxBodyBytes, 1024, 1 << 30);
  const webPage = o.webPage === undefined ? true : v.boolean('webPage', o.webPage);
  const log = o.log === undefined ? undefined : v.func<(line: string) => void>('log', o.log);
  const template = detectTemplate(model, o.chatTemplate ?? 'auto');
  const context = await model.createParallelContext({
    parallel: o.parallel ?? 4,
    ...(o.contextSize === undefined ? {} : { contextSize: o.contextSize }),
    ...(o.threads === undefined ? {} : { threads: o.threads }),
    ...(o.batchSize === undefined ? {} : { batchSize: o.batchSize }),
    ...(o.flashAttention === undefined ? {} : { flashAttention: o.flashAttention }),
  });
  return new HuoziServer({
    model, context, template, name, aliases, apiKey, responseRole, streamIntervalMs, maxQueue, maxBodyBytes, webPage, log,
  });
}

function defaultName(model: Model): string {
  return basename(model.path).replace(/\.gguf$/i, '');
}

interface Settings {
  model: Model;
  context: ParallelContext;
  template: ChatTemplate;
  name: string;
  aliases: string[];
  apiKey: string | undefined;
  responseRole: string;
  streamIntervalMs: number;
  maxQueue: number;
  maxBodyBytes: number;
  webPage: boolean;
  log: ((line: string) => void) | undefined;
}

/** A running (or ready) OpenAI-compatible server. */
export class HuoziServer {
  readonly model: Model;
  /** The context serving the requests (its stats() feed /metrics). */
  readonly context: ParallelContext;
  readonly servedModelName: string;
  /** Streaming requests' default text interval in ms (0: one SSE event per token). */
  readonly streamIntervalMs: number;
  readonly #s: Settings;
  readonly #http: Server;
  readonly #metrics: Metrics;
  readonly #created = Math.floor(Date.now() / 1000);
  #active = 0;
  #page: Promise<Buffer> | undefined;
  #url: string | undefined;

  /** @internal Use {@link createServer}. */
  constructor(settings: Settings) {
    this.#s = settings;
    this.model = settings.model;
    this.context = settings.context;
    this.servedModelName = settings.name;
    this.streamIntervalMs = settings.streamIntervalMs;
    this.#metrics = new Metrics();
    this.#http = createHttpServer((req, res) => void this.#handle(req, res));
    // Long generations stream for minutes: no socket timeout on requests in flight.
    this.#http.requestTimeout = 0;
    this.#http.keepAliveTimeout = 30_000;
  }

  /** The base URL once listening (http://host:port). */
  get url(): string | undefined {
    return this.#url;
  }

  /** Starts listening. Default: 127.0.0.1:8000 (loopback: other machines cannot reach it unless you say so). */
  listen(port = 8000, host = '127.0.0.1'): Promise<{ url: string; port: number; host: string }> {
    v.integer('port', port, 0, 65535);
    v.string('host', host);
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.#http.once('error', onError);
      this.#http.listen(port, host, () => {
        this.#http.off('error', onError);
        const address = this.#http.address() as AddressInfo;
        const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
        this.#url = `http://${shown}:${address.port}`;
        resolve({ url: this.#url, port: address.port, host: address.address });
      });
    });
  }

  /** Stops accepting connections, cancels what runs, and frees the context (not the model). */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#http.close(() => resolve()));
    this.#http.closeAllConnections();
    await this.context.dispose();
    await closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    const path = (req.url ?? '/').split('?')[0];
    const endpoint = ROUTES.has(path) ? path : 'other';
    let tokens = '';
    res.on('finish', () => {
      this.#metrics.request(endpoint, res.statusCode, Number(process.hrtime.bigint() - started) / 1e9);
      this.#s.log?.(
        `${req.method} ${path} ${res.statusCode} ${(Number(process.hrtime.bigint() - started) / 1e6).toFixed(0)} ms${tokens}`,
      );
    });
    try {
      if (req.method === 'OPTIONS') {
        res.writeHead(204, { Allow: 'GET, POST, OPTIONS' }).end();
        return;
      }
      if (path === '/' || path === '/index.html') {
        this.#method(req, 'GET');
        if (!this.#s.webPage) throw new HttpError(404, `Not found: ${path}`, { code: 'not_found' });
        this.#page ??= readFile(join(packageRoot, 'web', 'chat.html'));
        const page = await this.#page;
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' });
        res.end(page);
        return;
      }
      if (path === '/health') {
        this.#method(req, 'GET');
        const stats = this.context.disposed ? undefined : this.context.stats();
        sendJson(res, stats ? 200 : 503, {
          status: stats ? 'ok' : 'closing',
          slots_total: this.context.parallel,
          slots_busy: stats?.busySlots ?? 0,
          requests_waiting: stats?.waiting ?? 0,
        });
        return;
      }
      this.#authorize(req);
      switch (path) {
        case '/metrics':
          this.#method(req, 'GET');
          res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
          res.end(this.#metrics.render(this.context, this.#active));
          return;
        case '/v1/models':
          this.#method(req, 'GET');
          sendJson(res, 200, {
            object: 'list',
            data: [this.#s.name, ...this.#s.aliases].map((id) => ({
              id, object: 'model', created: this.#created, owned_by: 'huozi-gguf',
              meta: { context_length: this.context.slotContextSize, parameters: this.model.info.parameters },
            })),
          });
          return;
        case '/v1/chat/completions':
        case '/v1/completions': {
          this.#method(req, 'POST');
          const body = parseJson(await readBody(req, this.#s.maxBodyBytes));
          const chat = path === '/v1/chat/completions';
          const request = chat ? parseChatRequest(body) : parseCompletionRequest(body);
          this.#checkModel(request.model);
          const prompt = chat
            ? this.#chatPrompt((request as ReturnType<typeof parseChatRequest>).messages)
            : this.#completionPrompt((request as ReturnType<typeof parseCompletionRequest>).prompt);
          const limit = this.context.slotContextSize;
          if (prompt.length >= limit) {
            throw new HttpError(
              400,
              `This model's maximum context length is ${limit} tokens. However, your ${chat ? 'messages' : 'prompt'} ` +
                `resulted in ${prompt.length} tokens, which leaves no room for a completion. Please shorten it.`,
              { param: chat ? 'messages' : 'prompt', code: 'context_length_exceeded' },
            );
          }
          if (this.#active >= this.context.parallel + this.#s.maxQueue) {
            this.#metrics.rejected++;
            throw new HttpError(503, `The server is busy: ${this.#active} requests are running or waiting. Try again shortly.`, {
              type: 'server_error', code: 'server_busy', headers: { 'Retry-After': '1' },
            });
          }
          const options = this.#generateOptions(request, chat);
          this.#active++;
          try {
            const usage = await this.#generate(req, res, request, chat, prompt, options);
            if (usage) tokens = ` prompt=${usage.prompt_tokens} completion=${usage.completion_tokens}`;
          } finally {
            this.#active--;
          }
          return;
        }
        default:
          throw new HttpError(404, `Not found: ${req.method} ${path}`, { code: 'not_found' });
      }
    } catch (error) {
      sendError(res, error);
    }
  }

  #method(req: IncomingMessage, method: string): void {
    if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
      throw new HttpError(405, `Method ${req.method} is not allowed here; use ${method}.`, {
        code: 'method_not_allowed', headers: { Allow: method },
      });
    }
  }

  #authorize(req: IncomingMessage): void {
    const key = this.#s.apiKey;
    if (key === undefined) return;
    const header = req.headers.authorization ?? '';
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7).trim() : '');
    const wanted = Buffer.from(key);
    if (given.length !== wanted.length || !timingSafeEqual(given, wanted)) {
      throw new HttpError(401, header ? 'Incorrect API key provided.' : 'Missing API key: send Authorization: Bearer <key>.', {
        code: 'invalid_api_key', headers: { 'WWW-Authenticate': 'Bearer' },
      });
    }
  }

  #checkModel(name: string): void {
    if (name !== this.#s.name && !this.#s.aliases.includes(name)) {
      throw new HttpError(404, `The model '${name}' does not exist; this server serves '${this.#s.name}'.`, {
        param: 'model', code: 'model_not_found',
      });
    }
  }

  #chatPrompt(messages: ReturnType<typeof parseChatRequest>['messages']): number[] {
    const segments = this.#s.template.render(messages, true);
    return tokenizeSegments(this.model, segments, this.model.tokens.addBos);
  }

  #completionPrompt(prompt: string | number[]): number[] {
    if (typeof prompt === 'string') return Array.from(this.model.tokenizeToArray(prompt));
    const bad = prompt.findIndex((t) => t >= this.model.vocabularySize);
    if (bad >= 0) {
      throw new HttpError(400, `prompt[${bad}] = ${prompt[bad]} is not a token id of this model (0..${this.model.vocabularySize - 1}).`, {
        param: 'prompt', code: 'invalid_value',
      });
    }
    return prompt;
  }

  #generateOptions(r: SamplingRequest, chat: boolean): ParallelGenerateOptions {
    const vocab = this.model.vocabularySize;
    const badId = r.stopTokenIds.find((t) => t >= vocab);
    if (badId !== undefined) {
      throw new HttpError(400, `stop_token_ids contains ${badId}, not a token id of this model (0..${vocab - 1}).`, {
        param: 'stop_token_ids', code: 'invalid_value',
      });
    }
    const o: ParallelGenerateOptions = {
      stopStrings: chat ? [...r.stop, ...this.#s.template.stopTexts] : r.stop,
      stopTokens: r.stopTokenIds,
      stopAtEog: !r.ignoreEos,
      reuseCache: r.cachePrompt,
      // A non-streaming answer is sent whole: its text need not wake the JS thread before the end.
      streamIntervalMs: r.stream ? (r.streamIntervalMs ?? this.#s.streamIntervalMs) : 60_000,
    };
    if (r.maxTokens !== undefined) o.maxTokens = r.maxTokens;
    if (r.temperature !== undefined) o.temperature = r.temperature;
    if (r.topP !== undefined) o.topP = r.topP;
    if (r.topK !== undefined) o.topK = Math.max(0, r.topK);
    if (r.minP !== undefined) o.minP = r.minP;
    // Any integer, folded into the library's 0 .. 2^32-2 (2^32-1 would mean "random" to llama.cpp).
    if (r.seed !== undefined) o.seed = ((r.seed % (2 ** 32 - 1)) + (2 ** 32 - 1)) % (2 ** 32 - 1);
    if (r.presencePenalty !== undefined) o.presencePenalty = r.presencePenalty;
    if (r.frequencyPenalty !== undefined) o.frequencyPenalty = r.frequencyPenalty;
    if (r.repetitionPenalty !== undefined) o.repeatPenalty = r.repetitionPenalty;
    return o;
  }

  async #generate(
    req: IncomingMessage,
    res: ServerResponse,
    request: SamplingRequest & { echo?: boolean },
    chat: boolean,
    prompt: number[],
    options: ParallelGenerateOptions,
  ): Promise<Usage | undefined> {
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const model = request.model;
    const generation = this.context.generate(prompt, options);
    // The client going away (closed socket, aborted fetch) stops the generation at the next step.
    const onClose = () => {
      if (!res.writableFinished) generation.stop();
    };
    res.on('close', onClose);
    const echo = !chat && request.echo && typeof (request as { prompt?: unknown }).prompt === 'string'
      ? ((request as unknown as { prompt: string }).prompt)
      : '';
    try {
      if (!request.stream) {
        const result = await generation.result;
        const usage = usageOf(result);
        const finish = finishReason(result.stopReason);
        sendJson(res, 200, chat
          ? {
              id, object: 'chat.completion', created, model,
              choices: [{ index: 0, message: { role: this.#s.responseRole, content: result.text }, logprobs: null, finish_reason: finish }],
              usage,
            }
          : {
              id, object: 'text_completion', created, model,
              choices: [{ index: 0, text: echo + result.text, logprobs: null, finish_reason: finish }],
              usage,
            });
        return usage;
      }
      res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
        'X-Accel-Buffering': 'no',
      });
      res.flushHeaders();
      const send = (data: unknown) => {
        if (!res.writableEnded && !res.destroyed) res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
      };
      const chunk = (delta: Record<string, unknown> | string, finish: string | null) =>
        chat
          ? { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] }
          : { id, object: 'text_completion', created, model, choices: [{ index: 0, text: delta, logprobs: null, finish_reason: finish }] };
      if (chat) send(chunk({ role: this.#s.responseRole, content: '' }, null));
      else if (echo) send(chunk(echo, null));
      for await (const text of generation) send(chunk(chat ? { content: text } : text, null));
      const result = await generation.result;
      const usage = usageOf(result);
      send(chunk(chat ? {} : '', finishReason(result.stopReason)));
      if (request.includeUsage) {
        send(chat
          ? { id, object: 'chat.completion.chunk', created, model, choices: [], usage }
          : { id, object: 'text_completion', created, model, choices: [], usage });
      }
      send('[DONE]');
      res.end();
      return usage;
    } catch (error) {
      if (error instanceof AbortError) {
        // The client left: nobody to answer.
        if (!res.headersSent) res.destroy();
        else res.end();
        return undefined;
      }
      if (res.headersSent) {
        // Mid-stream: report the failure in the stream itself, as OpenAI does, then end it.
        const e = toHttpError(error);
        if (!res.writableEnded) {
          res.write(`data: ${JSON.stringify(e.body())}\n\n`);
          res.end();
        }
        return undefined;
      }
      throw error;
    } finally {
      res.off('close', onClose);
    }
  }
}

const ROUTES = new Set(['/', '/index.html', '/health', '/metrics', '/v1/models', '/v1/chat/completions', '/v1/completions']);

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

function usageOf(result: GenerationResult): Usage {
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: result.tokens.length,
    total_tokens: result.promptTokens + result.tokens.length,
    prompt_tokens_details: { cached_tokens: result.reusedTokens },
  };
}

function finishReason(reason: StopReason): 'stop' | 'length' {
  return reason === 'maxTokens' || reason === 'contextFull' ? 'length' : 'stop';
}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (declared > limit) {
      reject(new HttpError(413, `The request body is larger than ${limit} bytes.`, { code: 'request_too_large' }));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new HttpError(413, `The request body is larger than ${limit} bytes.`, { code: 'request_too_large' }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof DisposedError) return new HttpError(503, 'The server is shutting down.', { type: 'server_error', code: 'shutting_down' });
  if (error instanceof RangeError || error instanceof TypeError) {
    return new HttpError(400, error.message, { code: 'invalid_value' });
  }
  if (error instanceof HuoziError) return new HttpError(500, error.message, { type: 'server_error', code: error.code });
  return new HttpError(500, `Internal error: ${(error as Error)?.message ?? String(error)}`, { type: 'server_error' });
}

function sendError(res: ServerResponse, error: unknown): void {
  const e = toHttpError(error);
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  sendJson(res, e.status, e.body(), e.headers);
}
