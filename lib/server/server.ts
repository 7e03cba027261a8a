// `huozi-gguf serve`: an OpenAI-compatible HTTP server on Node's http module. Every request becomes one
// generation on a ParallelContext (continuous batching over N slots); requests beyond the slots wait in its
// queue, up to `maxQueue`, then get 503 with Retry-After. A client that goes away cancels its generation,
// which frees its slot at the next decode step.
//
// This file holds the options, the HTTP server and its routes. Who may connect and ask is access.ts; bodies
// and error answers http.ts; the generation endpoints completions.ts, their answers' shapes shape.ts; the
// request bodies' parsing openai.ts; /metrics metrics.ts.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { AddressInfo, Socket } from 'node:net';
import { packageRoot } from '../binding.js';
import { detectTemplate, type TemplateOption } from '../chat/detect.js';
import type { ChatTemplate } from '../chat/template.js';
import { AbortError } from '../errors.js';
import type { EmbeddingContextOptions } from '../embedding.js';
import { checkLoras, type LoraAdapter, type LoraSetting } from '../lora.js';
import type { Model } from '../model.js';
import { PARALLEL_CONTEXT_OPTIONS, type ParallelContextOptions } from '../context-options.js';
import type { ParallelContext } from '../parallel.js';
import * as v from '../validate.js';
import { Access, allowedHostsOf, ConnectionCaps, corsOriginsOf } from './access.js';
import { Completions, type Endpoint } from './completions.js';
import { Embeddings } from './embeddings.js';
import { checkMethod, Exchange, requireJson, sendJson } from './http.js';
import { Metrics } from './metrics.js';
import { HttpError } from './http-error.js';
import { parseJson, type SamplingRequest } from './openai.js';

/**
 * Options of {@link createServer}. The ParallelContext's own (`parallel`, `contextSize`, `batchSize`, ...) go to
 * {@link Model.createParallelContext} as they are, which checks them and defaults them, except that `parallel`
 * is 4 here (a server expects requests at once).
 */
export interface ServerOptions extends ParallelContextOptions {
  /** The model id clients name (`model` in requests, `/v1/models`). Default: the file name without `.gguf`. */
  servedModelName?: string;
  /** Other ids accepted in requests for the same model. Default: none. */
  aliases?: readonly string[];
  /** Requests to /v1/* and /metrics need `Authorization: Bearer <apiKey>`. Default: none (open). */
  apiKey?: string;
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
  /** Largest request body accepted, in bytes; a larger one gets 413. Default: 4 MiB. */
  maxBodyBytes?: number;
  /**
   * Host names accepted in the `Host` header besides `localhost`, `*.localhost`, this machine's name and IP
   * literals (DNS rebinding protection). A name, or `.example.com` for the domain and its subdomains; `'*'`
   * turns the check off. Bound to a loopback address the check is always on; bound to another address it is on
   * only when names are given here (the server cannot know the names clients reach it by: use `apiKey`).
   * Default: none.
   */
  allowedHosts?: readonly string[];
  /**
   * Origins (`scheme://host[:port]`, exact) whose web pages may call the API cross-origin (CORS); `'*'` allows
   * any. Requests from other origins get 403; the server's own page is same-origin and always allowed.
   * Default: none.
   */
  corsOrigins?: readonly string[];
  /** Time a client has to send a request's headers, in ms (then 408 and the connection closes). Default: 20000. */
  headersTimeoutMs?: number;
  /**
   * Time a client has to send a whole request, headers and body, in ms (then 408 and the connection closes).
   * Only the request: an answer may stream for as long as it takes. At least `headersTimeoutMs`. Default: 60000.
   */
  requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this many ms. Default: 5000. */
  keepAliveTimeoutMs?: number;
  /** Open connections in all; more get 503 and are closed. Default: 512. */
  maxConnections?: number;
  /**
   * Open connections from one client address; more get 503 and are closed. Behind a reverse proxy every
   * client has the proxy's address: raise it to `maxConnections` there. Default: min(128, maxConnections).
   */
  maxConnectionsPerAddress?: number;
  /** Serve the web chat page at `/`. Default: true. */
  webPage?: boolean;
  /** Called with one line per request (method, path, status, duration, tokens). Default: none. */
  log?: (line: string) => void;
  /**
   * `POST /v1/embeddings`: `true` serves it with an {@link EmbeddingContext} made at the first request (default
   * options, with this server's `threads` and `flashAttention`); options ({@link EmbeddingContextOptions}, checked at
   * once; pooling 'none' is refused: the endpoint answers one vector per input) to choose its pooling, size or
   * normalization; `false` turns the endpoint off (501, as llama-server without `--embeddings`). Default: `true`.
   */
  embeddings?: boolean | EmbeddingContextOptions;
  /**
   * LoRA adapters of the model ({@link Model.loadLora}) that requests may use, with their default scales (llama-server
   * `--lora FILE` / `--lora-scaled FILE SCALE`): a request without `lora` is answered with these; one with
   * `lora: [{ id, scale }]` (id: the position here) with the adapters it lists at its scales and the others off,
   * as llama-server does. `GET /lora-adapters` lists them. Default: none.
   */
  loras?: readonly LoraSetting[];
}

const OPTIONS = [
  'servedModelName', 'aliases', 'apiKey', 'chatTemplate', 'responseRole', 'streamIntervalMs', 'maxQueue', 'maxBodyBytes', 'webPage',
  'log', 'embeddings', 'allowedHosts', 'corsOrigins', 'headersTimeoutMs', 'requestTimeoutMs', 'keepAliveTimeoutMs', 'maxConnections',
  'maxConnectionsPerAddress', 'loras',
] as const;

/** Creates the server (and its ParallelContext on `model`); call `listen()` to start serving. */
export async function createServer(model: Model, options?: ServerOptions): Promise<HuoziServer> {
  const o = v.options<ServerOptions>('options', options, [...OPTIONS, ...PARALLEL_CONTEXT_OPTIONS]);
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
  const allowedHosts = allowedHostsOf(o.allowedHosts);
  const corsOrigins = corsOriginsOf(o.corsOrigins);
  const headersTimeoutMs = o.headersTimeoutMs === undefined ? 20_000 : v.integer('headersTimeoutMs', o.headersTimeoutMs, 1, 3_600_000);
  const requestTimeoutMs = o.requestTimeoutMs === undefined
    ? Math.max(60_000, headersTimeoutMs)
    : v.integer('requestTimeoutMs', o.requestTimeoutMs, 1, 3_600_000);
  if (requestTimeoutMs < headersTimeoutMs) {
    throw v.rangeError(`at most requestTimeoutMs (${requestTimeoutMs}): the headers are part of the request`, 'headersTimeoutMs', headersTimeoutMs);
  }
  const keepAliveTimeoutMs = o.keepAliveTimeoutMs === undefined ? 5000 : v.integer('keepAliveTimeoutMs', o.keepAliveTimeoutMs, 1, 3_600_000);
  const maxConnections = o.maxConnections === undefined ? 512 : v.integer('maxConnections', o.maxConnections, 1, 1 << 20);
  const maxConnectionsPerAddress = o.maxConnectionsPerAddress === undefined
    ? Math.min(128, maxConnections)
    : v.integer('maxConnectionsPerAddress', o.maxConnectionsPerAddress, 1, 1 << 20);
  if (maxConnectionsPerAddress > maxConnections) {
    throw v.rangeError(`at most maxConnections (${maxConnections})`, 'maxConnectionsPerAddress', maxConnectionsPerAddress);
  }
  const template = detectTemplate(model, o.chatTemplate ?? 'auto');
  // Checked now; the context itself comes with the first request (lib/server/embeddings.ts).
  const embeddings = new Embeddings({ model, name, aliases, maxQueue, options: embeddingOptions(o) });
  if (o.loras !== undefined) checkLoras(model, 'loras', o.loras);
  const loras = (o.loras ?? []).map((l) => ({ adapter: l.adapter, scale: l.scale ?? 1 }));
  // The context's options as given (it checks them, with messages naming the field); only `parallel` has the server's default.
  const given = PARALLEL_CONTEXT_OPTIONS.filter((key) => o[key] !== undefined).map((key) => [key, o[key]]);
  const context = await model.createParallelContext({ ...Object.fromEntries(given), parallel: o.parallel ?? 4 });
  return new HuoziServer({
    model, context, embeddings, template, name, aliases, apiKey, responseRole, streamIntervalMs, maxQueue, maxBodyBytes, webPage, log,
    allowedHosts, corsOrigins, headersTimeoutMs, requestTimeoutMs, keepAliveTimeoutMs, maxConnections, maxConnectionsPerAddress, loras,
  });
}

/** The `embeddings` option: false, or the embedding context's options (the server's threads and flash attention by default). */
function embeddingOptions(o: ServerOptions): EmbeddingContextOptions | false {
  const e = o.embeddings;
  if (e === false) return false;
  if (e !== undefined && e !== true && (typeof e !== 'object' || e === null || Array.isArray(e))) {
    throw v.typeError('a boolean or embedding context options', 'embeddings', e);
  }
  const inherited = {
    ...(o.threads === undefined ? {} : { threads: o.threads }),
    ...(o.flashAttention === undefined ? {} : { flashAttention: o.flashAttention }),
  };
  return { ...inherited, ...(e === undefined || e === true ? {} : e) };
}

function defaultName(model: Model): string {
  return basename(model.path).replace(/\.gguf$/i, '');
}

interface Settings {
  model: Model;
  context: ParallelContext;
  embeddings: Embeddings;
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
  allowedHosts: string[];
  corsOrigins: string[];
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerAddress: number;
  loras: { adapter: LoraAdapter; scale: number }[];
}

const ROUTES = new Set(['/', '/index.html', '/health', '/metrics', '/v1/models', '/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/lora-adapters']);

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
  readonly #metrics = new Metrics();
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #connections: ConnectionCaps;
  readonly #access: Access;
  readonly #exchange: Exchange;
  readonly #completions: Completions;
  #page: Promise<Buffer> | undefined;
  #url: string | undefined;

  /** @internal Use {@link createServer}. */
  constructor(settings: Settings) {
    this.#s = settings;
    this.model = settings.model;
    this.context = settings.context;
    this.servedModelName = settings.name;
    this.streamIntervalMs = settings.streamIntervalMs;
    this.#connections = new ConnectionCaps(settings.maxConnections, settings.maxConnectionsPerAddress, () => this.#metrics.refusedConnections++);
    this.#access = new Access(settings);
    this.#exchange = new Exchange(settings.maxBodyBytes);
    this.#completions = new Completions({ ...settings, metrics: this.#metrics });
    // Only the request side is bounded: once a request is complete, Node stops timing it, so an answer may
    // stream for as long as it takes. The check runs often enough to hold short configured bounds.
    this.#http = createHttpServer({
      headersTimeout: settings.headersTimeoutMs,
      requestTimeout: settings.requestTimeoutMs,
      keepAliveTimeout: settings.keepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, Math.max(25, Math.floor(settings.headersTimeoutMs / 4))),
    }, (req, res) => void this.#handle(req, res));
    // Expect: 100-continue is answered when the body is wanted (after the checks), so a refused request's body
    // is never sent.
    this.#http.on('checkContinue', (req, res) => void this.#handle(req, res));
    // Over the caps, a connection is answered 503 and closed before any request is read. Past that, Node drops
    // new connections outright (refusals that are still closing count there).
    this.#http.maxConnections = settings.maxConnections + 64;
    this.#http.prependListener('connection', (socket: Socket) => this.#connections.admit(socket));
  }

  /** The base URL once listening (http://host:port). */
  get url(): string | undefined {
    return this.#url;
  }

  /**
   * Whether `Host` headers are checked (DNS rebinding protection): always when listening on a loopback address,
   * elsewhere only when `allowedHosts` names hosts; never with `allowedHosts: ['*']`.
   */
  get hostCheck(): boolean {
    return this.#access.hostCheck;
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
        this.#access.listening(address.address);
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
    await this.#s.embeddings.close();
    await closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#connections.refused(req.socket)) return; // answered 503 on connection
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
      // Who may ask at all: the Host name (DNS rebinding), then the page's origin (CORS).
      res.setHeader('Vary', 'Origin');
      this.#access.checkHost(req);
      const crossOrigin = this.#access.checkOrigin(req, res);
      if (req.method === 'OPTIONS') {
        this.#access.preflight(req, res, crossOrigin);
        return;
      }
      if (path === '/' || path === '/index.html') {
        checkMethod(req, 'GET');
        if (!this.#s.webPage) throw new HttpError(404, `Not found: ${path}`, { code: 'not_found' });
        this.#page ??= readFile(join(packageRoot, 'web', 'chat.html'));
        const page = await this.#page;
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' });
        res.end(page);
        return;
      }
      if (path === '/health') {
        checkMethod(req, 'GET');
        const stats = this.context.disposed ? undefined : this.context.stats();
        sendJson(res, stats ? 200 : 503, {
          status: stats ? 'ok' : 'closing',
          slots_total: this.context.parallel,
          slots_busy: stats?.busySlots ?? 0,
          requests_waiting: stats?.waiting ?? 0,
        });
        return;
      }
      this.#access.authorize(req);
      switch (path) {
        case '/metrics':
          checkMethod(req, 'GET');
          res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
          res.end(this.#metrics.render(this.context, this.#completions.active, this.#connections.open));
          return;
        case '/v1/models':
          checkMethod(req, 'GET');
          sendJson(res, 200, {
            object: 'list',
            data: [this.#s.name, ...this.#s.aliases].map((id) => ({
              id, object: 'model', created: this.#created, owned_by: 'huozi-gguf',
              meta: { context_length: this.context.slotContextSize, parameters: this.model.info.parameters },
            })),
          });
          return;
        case '/lora-adapters':
          // llama-server's listing (its POST, which changes the adapters of every later request, is not served).
          checkMethod(req, 'GET');
          sendJson(res, 200, this.#s.loras.map((l, id) => ({ id, path: l.adapter.path, scale: l.scale })));
          return;
        case '/v1/chat/completions':
          tokens = await this.#complete(req, res, this.#completions.chat);
          return;
        case '/v1/completions':
          tokens = await this.#complete(req, res, this.#completions.text);
          return;
        case '/v1/embeddings': {
          checkMethod(req, 'POST');
          requireJson(req);
          const usage = await this.#s.embeddings.serve(res, parseJson(await this.#exchange.readBody(req, res)));
          tokens = usage ? ` prompt=${usage.prompt_tokens}` : '';
          return;
        }
        default:
          throw new HttpError(404, `Not found: ${req.method} ${path}`, { code: 'not_found' });
      }
    } catch (error) {
      if (error instanceof AbortError && res.destroyed) return; // the client left
      this.#exchange.sendError(req, res, error);
    }
  }

  /** A generation request: a JSON body, answered by `endpoint`; the token counts for the request log. */
  async #complete<R extends SamplingRequest>(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint<R>): Promise<string> {
    checkMethod(req, 'POST');
    requireJson(req);
    const body = parseJson(await this.#exchange.readBody(req, res));
    const usage = await this.#completions.serve(res, body, endpoint);
    return usage ? ` prompt=${usage.prompt_tokens} completion=${usage.completion_tokens}` : '';
  }
}
