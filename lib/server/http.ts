// The HTTP exchange under the OpenAI API: reading request bodies within a size limit, and turning any error
// into an answer in OpenAI's error shape without the client seeing a reset connection.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AbortError, DisposedError, HuoziError } from '../errors.js';
import { HttpError } from './http-error.js';

/**
 * Request bodies and error answers of one server. They share what was said to each request: a body is asked
 * for (`100 Continue`) only when it is read, and an error answer to a request whose body was never asked for
 * must close the connection, so that a body sent anyway is not read as the next request.
 */
export class Exchange {
  readonly #maxBodyBytes: number;
  /** Requests that were sent `100 Continue` (the client then sends the body). */
  readonly #continued = new WeakSet<IncomingMessage>();

  constructor(maxBodyBytes: number) {
    this.#maxBodyBytes = maxBodyBytes;
  }

  /** Reads the body up to `maxBodyBytes` (413 beyond: see sendError for how the rest is dealt with). */
  readBody(req: IncomingMessage, res: ServerResponse): Promise<string> {
    const limit = this.#maxBodyBytes;
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

  sendError(req: IncomingMessage, res: ServerResponse, error: unknown): void {
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
    const cap = 4 * this.#maxBodyBytes;
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
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** 405 unless the request uses `method` (HEAD passes for GET). */
export function checkMethod(req: IncomingMessage, method: string): void {
  if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
    throw new HttpError(405, `Method ${req.method} is not allowed here; use ${method}.`, {
      code: 'method_not_allowed', headers: { Allow: method },
    });
  }
}

/** 415 unless the body is declared as JSON (UTF-8): the types a page can send without a CORS preflight never pass. */
export function requireJson(req: IncomingMessage): void {
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

/** A ChatTemplateError (lib/errors.ts): the template raised, went past a limit or failed; its message names it. */
export function isChatTemplateError(error: unknown): error is HuoziError {
  return error instanceof HuoziError && error.code === 'ERR_HUOZI_CHAT_TEMPLATE';
}

/** The answer for any error: a bad value is the client's (400), a disposed context a shutdown (503), the rest ours (500). */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof DisposedError) return new HttpError(503, 'The server is shutting down.', { type: 'server_error', code: 'shutting_down' });
  if (isChatTemplateError(error)) return new HttpError(400, error.message, { param: 'messages', code: 'chat_template_error' });
  if (error instanceof RangeError || error instanceof TypeError) {
    return new HttpError(400, error.message, { code: 'invalid_value' });
  }
  if (error instanceof HuoziError) return new HttpError(500, error.message, { type: 'server_error', code: error.code });
  return new HttpError(500, `Internal error: ${(error as Error)?.message ?? String(error)}`, { type: 'server_error' });
}
