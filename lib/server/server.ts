// `huozi-gguf serve`: an OpenAI-compatible HTTP server on Node's http module. Every request becomes one
// generation on a ParallelContext (continuous batching over N slots); requests beyond the slots wait in its
// queue, up to `maxQueue`, then get 503 with Retry-After. A client that goes away cancels its generation,
// which frees its slot at the next decode step.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { basename, join } from 'node:path';
import { isIP, type AddressInfo, type Socket } from 'node:net';
import { packageRoot } from '../binding.js';
import { detectTemplate, type TemplateOption } from '../chat/detect.js';
import type { ChatMessage, ChatTemplate, Segment } from '../chat/template.js';
import { endOfTurn, type EndOfTurn } from '../chat/end-of-turn.js';
import { segmentsToPieces } from '../chat/tokenize.js';
import type { GenerationResult, StopReason } from '../context.js';
import { AbortError, DisposedError, HuoziError } from '../errors.js';
import type { Model } from '../model.js';
import type { ParallelContext, ParallelGenerateOptions } from '../parallel.js';
import * as v from '../validate.js';
import {
  HttpError, parseChatRequest, parseCompletionRequest, parseJson, type ChatRequest, type CompletionRequest, type SamplingRequest,
} from './openai.js';
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
}

const OPTIONS = [
  'servedModelName', 'aliases', 'apiKey', 'parallel', 'contextSize', 'threads', 'batchSize', 'flashAttention', 'chatTemplate',
  'responseRole', 'streamIntervalMs', 'maxQueue', 'maxBodyBytes', 'webPage', 'log', 'allowedHosts', 'corsOrigins',
  'headersTimeoutMs', 'requestTimeoutMs', 'keepAliveTimeoutMs', 'maxConnections', 'maxConnectionsPerAddress',
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
  const allowedHosts = (o.allowedHosts === undefined ? [] : v.stringArray('allowedHosts', o.allowedHosts)).map((h) => {
    const name = h.toLowerCase().replace(/\.$/, '');
    if (name !== '*' && !/^\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(name)) {
      throw v.rangeError("host names without a port ('llm.example', '.example.com' for a domain) or '*'", 'allowedHosts', h);
    }
    return name;
  });
  const corsOrigins = (o.corsOrigins === undefined ? [] : v.stringArray('corsOrigins', o.corsOrigins)).map((origin) => {
    if (origin === '*') return origin;
    let normal: string | undefined;
    try {
      const u = new URL(origin);
      if ((u.protocol === 'http:' || u.protocol === 'https:') && u.origin === origin.toLowerCase().replace(/\/$/, '')) normal = u.origin;
    } catch {
      // not a URL
    }
    if (normal === undefined) throw v.rangeError("origins such as 'http://app.example:3000' (scheme, host and port only) or '*'", 'corsOrigins', origin);
    return normal;
  });
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
  const context = await model.createParallelContext({
    parallel: o.parallel ?? 4,
    ...(o.contextSize === undefined ? {} : { contextSize: o.contextSize }),
    ...(o.threads === undefined ? {} : { threads: o.threads }),
    ...(o.batchSize === undefined ? {} : { batchSize: o.batchSize }),
    ...(o.flashAttention === undefined ? {} : { flashAttention: o.flashAttention }),
  });
  return new HuoziServer({
    model, context, template, name, aliases, apiKey, responseRole, streamIntervalMs, maxQueue, maxBodyBytes, webPage, log,
    allowedHosts, corsOrigins, headersTimeoutMs, requestTimeoutMs, keepAliveTimeoutMs, maxConnections, maxConnectionsPerAddress,
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
  allowedHosts: string[];
  corsOrigins: string[];
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerAddress: number;
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
  readonly #endOfTurn: EndOfTurn;
  readonly #http: Server;
  readonly #metrics: Metrics;
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #keyHash: Buffer | undefined;
  readonly #hostNames: Set<string>;
  #hostCheck = true;
  #active = 0;
  #connections = 0;
  readonly #perAddress = new Map<string, number>();
  /** Connections answered 503 at once (over a cap): their requests, if any arrive, are not served. */
  readonly #refused = new WeakSet<Socket>();
  /** Requests that were sent `100 Continue` (the client then sends the body). */
  readonly #continued = new WeakSet<IncomingMessage>();
  #page: Promise<Buffer> | undefined;
  #url: string | undefined;

  /** @internal Use {@link createServer}. */
  constructor(settings: Settings) {
    this.#s = settings;
    this.#endOfTurn = endOfTurn(settings.model, settings.template);
    this.model = settings.model;
    this.context = settings.context;
    this.servedModelName = settings.name;
    this.streamIntervalMs = settings.streamIntervalMs;
    this.#metrics = new Metrics();
    this.#keyHash = settings.apiKey === undefined ? undefined : sha256(settings.apiKey);
    this.#hostNames = new Set(['localhost', osHostname().toLowerCase()]);
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
    this.#http.prependListener('connection', (socket: Socket) => this.#admit(socket));
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
    return this.#hostCheck;
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
        const names = this.#s.allowedHosts;
        this.#hostCheck = !names.includes('*') && (isLoopbackAddress(address.address) || names.length > 0);
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

  #admit(socket: Socket): void {
    const address = (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const fromAddress = this.#perAddress.get(address) ?? 0;
    let reason: string | undefined;
    if (this.#connections >= this.#s.maxConnections) {
      reason = `The server has ${this.#connections} connections open, its limit (maxConnections). Try again shortly.`;
    } else if (fromAddress >= this.#s.maxConnectionsPerAddress) {
      reason = `Your address has ${fromAddress} connections open, the limit per address (maxConnectionsPerAddress). ` +
        'Close some or reuse them.';
    }
    if (reason !== undefined) {
      this.#metrics.refusedConnections++;
      this.#refused.add(socket);
      const body = JSON.stringify(new HttpError(503, reason, { type: 'server_error', code: 'too_many_connections' }).body());
      socket.on('error', () => {});
      socket.end(
        'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n' +
          `Content-Length: ${Buffer.byteLength(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n${body}`,
      );
      // Whatever the client sends meanwhile is read (and dropped) so that closing does not reset the connection
      // before it has read the answer; a client that neither sends nor closes is cut after a second.
      const timer = setTimeout(() => socket.destroy(), 1000);
      timer.unref();
      socket.once('close', () => clearTimeout(timer));
      return;
    }
    this.#connections++;
    this.#perAddress.set(address, fromAddress + 1);
    socket.once('close', () => {
      this.#connections--;
      const left = (this.#perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.#perAddress.set(address, left);
      else this.#perAddress.delete(address);
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#refused.has(req.socket)) return; // answered 503 on connection
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
      this.#checkHost(req);
      const crossOrigin = this.#checkOrigin(req, res);
      if (req.method === 'OPTIONS') {
        this.#preflight(req, res, crossOrigin);
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
          res.end(this.#metrics.render(this.context, this.#active, this.#connections));
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
          requireJson(req);
          const body = parseJson(await this.#readBody(req, res));
          const chat = path === '/v1/chat/completions';
          const request = chat ? parseChatRequest(body) : parseCompletionRequest(body);
          this.#checkModel(request.model);
          // Checked before the prompt is rendered or tokenized: a refused request costs nothing more.
          const options = this.#generateOptions(request, chat);
          if (this.#active >= this.context.parallel + this.#s.maxQueue) {
            this.#metrics.rejected++;
            throw new HttpError(503, `The server is busy: ${this.#active} requests are running or waiting. Try again shortly.`, {
              type: 'server_error', code: 'server_busy', headers: { 'Retry-After': '1' },
            });
          }
          this.#active++;
          try {
            // A client that leaves while its prompt is rendered or tokenized stops that work.
            const left = new AbortController();
            const onClose = () => {
              if (!res.writableFinished) left.abort();
            };
            res.on('close', onClose);
            let prompt: number[];
            let echo = '';
            try {
              if (chat) {
                prompt = await this.#chatPrompt((request as ChatRequest).messages, left.signal);
              } else {
                const completion = request as CompletionRequest;
                prompt = await this.#completionPrompt(completion.prompt, left.signal);
                if (completion.echo) {
                  echo = typeof completion.prompt === 'string' ? completion.prompt : this.model.detokenize(completion.prompt);
                }
              }
            } finally {
              res.off('close', onClose);
            }
            this.#checkLength(prompt.length, chat, 'resulted in');
            const usage = await this.#generate(req, res, request, chat, prompt, options, echo);
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
      if (error instanceof AbortError && res.destroyed) return; // the client left
      this.#sendError(req, res, error);
    }
  }

  #checkHost(req: IncomingMessage): void {
    if (!this.#hostCheck) return;
    const header = req.headers.host;
    if (header === undefined) return; // HTTP/1.0 without Host: not a browser
    const name = hostName(header);
    if (name !== undefined && (isIP(name) !== 0 || name.endsWith('.localhost') || this.#hostNames.has(name) || this.#allowedName(name))) {
      return;
    }
    throw new HttpError(
      403,
      `The Host name '${header}' is not one this server answers to (a page using DNS rebinding sends its own name). ` +
        'Use localhost or an IP address, or start the server with --allowed-host <name> (allowedHosts) for the names clients use.',
      { code: 'host_not_allowed' },
    );
  }

  #allowedName(name: string): boolean {
    return this.#s.allowedHosts.some((allowed) =>
      allowed.startsWith('.') ? name === allowed.slice(1) || name.endsWith(allowed) : name === allowed);
  }

  /** Refuses requests from other origins than the server's own and the allowed ones; true for an allowed cross-origin one. */
  #checkOrigin(req: IncomingMessage, res: ServerResponse): boolean {
    const origin = req.headers.origin;
    if (origin === undefined) return false; // not sent by a browser's cross-origin machinery
    if (sameOrigin(origin, req.headers.host)) return false;
    const allowed = this.#s.corsOrigins;
    if (allowed.includes('*')) {
      res.setHeader('Access-Control-Allow-Origin', '*');
    } else if (allowed.includes(origin.toLowerCase())) {
      res.setHeader('Access-Control-Allow-Origin', origin);
    } else {
      throw new HttpError(
        403,
        `Cross-origin requests from ${JSON.stringify(origin)} are not allowed. To let pages from that origin use this API, ` +
          `start the server with --cors-origin ${origin} (corsOrigins).`,
        { code: 'origin_not_allowed' },
      );
    }
    res.setHeader('Access-Control-Expose-Headers', 'Retry-After');
    return true;
  }

  #preflight(req: IncomingMessage, res: ServerResponse, crossOrigin: boolean): void {
    const headers: Record<string, string> = { Allow: 'GET, POST, OPTIONS' };
    if (crossOrigin && req.headers['access-control-request-method'] !== undefined) {
      res.setHeader('Vary', 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers');
      headers['Access-Control-Allow-Methods'] = 'GET, POST, OPTIONS';
      const asked = req.headers['access-control-request-headers'];
      // The headers a client library adds (x-stainless-*, ...) are as harmless as Authorization: echo a list of
      // well-formed header names.
      headers['Access-Control-Allow-Headers'] = asked !== undefined && /^[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$/.test(asked.trim())
        ? asked.trim()
        : 'Authorization, Content-Type';
      headers['Access-Control-Max-Age'] = '600';
      // Chrome's Private Network Access: a public page calling a loopback server asks for this as well.
      if (req.headers['access-control-request-private-network'] === 'true') headers['Access-Control-Allow-Private-Network'] = 'true';
    }
    res.writeHead(204, headers).end();
  }

  #method(req: IncomingMessage, method: string): void {
    if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
      throw new HttpError(405, `Method ${req.method} is not allowed here; use ${method}.`, {
        code: 'method_not_allowed', headers: { Allow: method },
      });
    }
  }

  #authorize(req: IncomingMessage): void {
    const wanted = this.#keyHash;
    if (wanted === undefined) return;
    const header = req.headers.authorization ?? '';
    // The scheme is case-insensitive (RFC 9110); the key is compared through its SHA-256, so that the time
    // taken tells nothing about it, its length included.
    const match = /^\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)\s+(.*)$/.exec(header);
    const bearer = match !== null && match[1].toLowerCase() === 'bearer';
    const given = sha256(bearer ? match![2].trim() : '');
    const ok = timingSafeEqual(given, wanted) && bearer;
    if (!ok) {
      throw new HttpError(
        401,
        header === '' ? 'Missing API key: send Authorization: Bearer <key>.'
          : bearer ? 'Incorrect API key provided.' : 'The API key goes in Authorization: Bearer <key>.',
        { code: 'invalid_api_key', headers: { 'WWW-Authenticate': 'Bearer' } },
      );
    }
  }

  #checkModel(name: string): void {
    if (name !== this.#s.name && !this.#s.aliases.includes(name)) {
      throw new HttpError(404, `The model '${name}' does not exist; this server serves '${this.#s.name}'.`, {
        param: 'model', code: 'model_not_found',
      });
    }
  }

  /** 400 when `tokens` (a count, or the fewest the prompt can be) leaves no room in a slot. */
  #checkLength(tokens: number, chat: boolean, how: string): void {
    const limit = this.context.slotContextSize;
    if (tokens >= limit) {
      throw new HttpError(
        400,
        `This model's maximum context length is ${limit} tokens. However, your ${chat ? 'messages' : 'prompt'} ` +
          `${how} ${tokens} tokens, which leaves no room for a completion. Please shorten it.`,
        { param: chat ? 'messages' : 'prompt', code: 'context_length_exceeded' },
      );
    }
  }

  async #chatPrompt(messages: ChatMessage[], signal: AbortSignal): Promise<number[]> {
    let segments: Segment[];
    try {
      // Off the event loop where the template has renderAsync (Jinja templates: a separate renderer under limits).
      const template = this.#s.template as ChatTemplate & { renderAsync?: (m: readonly ChatMessage[], g: boolean) => Promise<Segment[]> };
      segments = template.renderAsync ? await template.renderAsync(messages, true) : template.render(messages, true);
    } catch (error) {
      if (isChatTemplateError(error)) {
        throw new HttpError(400, error.message, { param: 'messages', code: 'chat_template_error' });
      }
      if (error instanceof HuoziError) throw error;
      // A template object of the caller's own that threw.
      throw new HttpError(400, `The chat template '${this.#s.template.name}' failed: ${(error as Error)?.message ?? String(error)}`, {
        param: 'messages', code: 'chat_template_error',
      });
    }
    const pieces = segmentsToPieces(this.model, segments);
    // The fewest tokens this can be, from its length alone: one that cannot fit is refused before tokenizing.
    let least = 0;
    for (const piece of pieces) least += 'special' in piece ? 1 : this.model.minTokens(piece.text);
    this.#checkLength(least, true, 'would be at least');
    const out: number[] = [];
    for (const piece of pieces) {
      if ('special' in piece) out.push(piece.special);
      else for (const id of await this.model.tokenizeToArrayAsync(piece.text, { addBos: false, parseSpecial: false, signal })) out.push(id);
    }
    const bos = this.model.tokens.bos;
    if (this.model.tokens.addBos && bos !== null && out[0] !== bos) out.unshift(bos);
    return out;
  }

  async #completionPrompt(prompt: string | number[], signal: AbortSignal): Promise<number[]> {
    if (typeof prompt === 'string') {
      this.#checkLength(this.model.minTokens(prompt), false, 'would be at least');
      return Array.from(await this.model.tokenizeToArrayAsync(prompt, { signal }));
    }
    const bad = prompt.findIndex((t) => t >= this.model.vocabularySize);
    if (bad >= 0) {
      throw new HttpError(400, `prompt[${bad}] = ${prompt[bad]} is not a token id of this model (0..${this.model.vocabularySize - 1}).`, {
        param: 'prompt', code: 'invalid_value',
      });
    }
    return prompt;
  }

  /** Reads the body up to `maxBodyBytes` (413 beyond: see #sendError for how the rest is dealt with). */
  #readBody(req: IncomingMessage, res: ServerResponse): Promise<string> {
    const limit = this.#s.maxBodyBytes;
    const tooLarge = () => new HttpError(413, `The request body is larger than ${limit} bytes (maxBodyBytes).`, { code: 'request_too_large' });
    const declared = Number(req.headers['content-length']);
    if (declared > limit) return Promise.reject(tooLarge());
    if (/^\s*100-continue\s*$/i.test(req.headers.expect ?? '')) {
      res.writeContinue();
      this.#continued.add(req);
    }
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let over = false;
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          over = true;
          chunks.length = 0;
          req.off('data', onData);
          reject(tooLarge());
          return;
        }
        chunks.push(chunk);
      };
      req.on('data', onData);
      req.once('end', () => {
        if (!over) resolve(Buffer.concat(chunks).toString('utf8'));
      });
      req.once('error', reject);
      req.once('close', () => {
        if (!req.complete) reject(new AbortError('The client closed the connection before sending the whole request'));
      });
    });
  }

  #sendError(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    const e = toHttpError(error);
    if (res.headersSent) {
      if (!res.writableEnded) res.end();
      return;
    }
    if (res.destroyed) return;
    const text = JSON.stringify(e.body());
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...e.headers,
    };
    const expectsContinue = /^\s*100-continue\s*$/i.test(req.headers.expect ?? '') && !this.#continued.has(req);
    if (req.complete || req.readableEnded || expectsContinue) {
      // The whole request was read, or its body was never asked for (the client must not send it: closed after
      // the answer, so that a body sent anyway is not read as the next request).
      if (expectsContinue) headers.Connection = 'close';
      res.writeHead(e.status, headers);
      res.end(text);
      return;
    }
    // Answered before the body was read (413, or a refusal before reading): the answer goes out whole at once,
    // then the rest of the body is read and dropped before the connection closes, so that the client reads the
    // answer instead of a reset. A body far beyond the limit is cut (and the request timeout bounds the time).
    headers.Connection = 'close';
    res.writeHead(e.status, headers);
    res.write(text);
    const cap = 4 * this.#s.maxBodyBytes;
    let drained = 0;
    const onData = (chunk: Buffer) => {
      drained += chunk.length;
      if (drained > cap) {
        req.off('data', onData);
        res.destroy();
      }
    };
    req.on('data', onData);
    const finish = () => {
      req.off('data', onData);
      if (!res.writableEnded && !res.destroyed) res.end();
    };
    req.once('end', finish);
    req.once('close', finish);
    req.resume();
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
      stopStrings: chat ? [...r.stop, ...this.#endOfTurn.stopStrings] : r.stop,
      stopTokens: chat ? [...r.stopTokenIds, ...this.#endOfTurn.stopTokens] : r.stopTokenIds,
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
    request: SamplingRequest,
    chat: boolean,
    prompt: number[],
    options: ParallelGenerateOptions,
    echo: string,
  ): Promise<Usage | undefined> {
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const model = request.model;
    if (res.destroyed) throw new AbortError('The client left before its generation started');
    const generation = this.context.generate(prompt, options);
    // The client going away (closed socket, aborted fetch) stops the generation at the next step.
    const onClose = () => {
      if (!res.writableFinished) generation.stop();
    };
    res.on('close', onClose);
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
      void req;
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

/** A ChatTemplateError (lib/errors.ts): the template raised, went past a limit or failed; its message names it. */
function isChatTemplateError(error: unknown): error is HuoziError {
  return error instanceof HuoziError && error.code === 'ERR_HUOZI_CHAT_TEMPLATE';
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
function isLoopbackAddress(address: string): boolean {
  const a = address.replace(/^::ffff:/i, '');
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}

/** The host name of a Host header, lowercased, without port or brackets; undefined when malformed. */
function hostName(header: string): string | undefined {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0 || !/^(:\d+)?$/.test(h.slice(end + 1))) return undefined;
    return h.slice(1, end);
  }
  const m = /^([^:]+)(:\d+)?$/.exec(h);
  return m ? m[1].replace(/\.$/, '') : undefined;
}

/** Whether `origin` is the server's own as the client reached it (the Host header), over http or https (a TLS proxy). */
function sameOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    const o = new URL(origin);
    if (o.protocol !== 'http:' && o.protocol !== 'https:') return false;
    return new URL(`${o.protocol}//${host}`).host === o.host;
  } catch {
    return false;
  }
}

/** 415 unless the body is declared as JSON (UTF-8): the types a page can send without a CORS preflight never pass. */
function requireJson(req: IncomingMessage): void {
  const type = req.headers['content-type'];
  const [mime, ...params] = (type ?? '').split(';');
  const charset = params.map((p) => p.split('=')).find(([k]) => k.trim().toLowerCase() === 'charset')?.[1]?.trim().replace(/^"(.*)"$/, '$1');
  if (mime.trim().toLowerCase() !== 'application/json' || (charset !== undefined && charset.toLowerCase() !== 'utf-8')) {
    throw new HttpError(
      415,
      type === undefined
        ? 'The request has no Content-Type: send the body as JSON with Content-Type: application/json.'
        : `Content-Type ${JSON.stringify(type)} is not accepted: send the body as JSON (UTF-8) with Content-Type: application/json.`,
      { code: 'unsupported_media_type' },
    );
  }
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
  if (isChatTemplateError(error)) return new HttpError(400, error.message, { param: 'messages', code: 'chat_template_error' });
  if (error instanceof RangeError || error instanceof TypeError) {
    return new HttpError(400, error.message, { code: 'invalid_value' });
  }
  if (error instanceof HuoziError) return new HttpError(500, error.message, { type: 'server_error', code: error.code });
  return new HttpError(500, `Internal error: ${(error as Error)?.message ?? String(error)}`, { type: 'server_error' });
}
