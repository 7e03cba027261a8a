// Who may use the server: connection caps (in all and per client address), the Host check against DNS
// rebinding, CORS for other origins' pages, and the API key. Each check refuses with the answer and the
// option that would let the request through.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { isLoopback } from '../util/net.js';
import * as v from '../validate.js';
import { HttpError } from './http-error.js';

/** Open connections in all and per client address; a connection over either cap is answered 503 and closed. */
export class ConnectionCaps {
  readonly #max: number;
  readonly #maxPerAddress: number;
  readonly #onRefused: () => void;
  #open = 0;
  readonly #perAddress = new Map<string, number>();
  /** Connections answered 503 at once (over a cap): their requests, if any arrive, are not served. */
  readonly #refused = new WeakSet<Socket>();

  constructor(max: number, maxPerAddress: number, onRefused: () => void) {
    this.#max = max;
    this.#maxPerAddress = maxPerAddress;
    this.#onRefused = onRefused;
  }

  /** Connections open now (not counting refused ones). */
  get open(): number {
    return this.#open;
  }

  /** Whether `socket` was refused on connection (and already answered). */
  refused(socket: Socket): boolean {
    return this.#refused.has(socket);
  }

  /** Counts a new connection, or answers it 503 and closes it when over a cap. */
  admit(socket: Socket): void {
    const address = (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const fromAddress = this.#perAddress.get(address) ?? 0;
    let reason: string | undefined;
    if (this.#open >= this.#max) {
      reason = `The server has ${this.#open} connections open, its limit (maxConnections). Try again shortly.`;
    } else if (fromAddress >= this.#maxPerAddress) {
      reason = `Your address has ${fromAddress} connections open, the limit per address (maxConnectionsPerAddress). ` +
        'Close some or reuse them.';
    }
    if (reason !== undefined) {
      this.#onRefused();
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
    this.#open++;
    this.#perAddress.set(address, fromAddress + 1);
    socket.once('close', () => {
      this.#open--;
      const left = (this.#perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.#perAddress.set(address, left);
      else this.#perAddress.delete(address);
    });
  }
}

export interface AccessSettings {
  /** Lowercased, without a trailing dot; `.example.com` for a domain; `'*'`: no Host check. */
  allowedHosts: string[];
  /** Normalized origins (`URL.origin`), or `'*'`. */
  corsOrigins: string[];
  apiKey: string | undefined;
}

/** `allowedHosts` as the Host check compares them: lowercased, without a trailing dot; a port is refused. */
export function allowedHostsOf(value: unknown): string[] {
  return (value === undefined ? [] : v.stringArray('allowedHosts', value)).map((h) => {
    const name = h.toLowerCase().replace(/\.$/, '');
    if (name !== '*' && !/^\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(name)) {
      throw v.rangeError("host names without a port ('llm.example', '.example.com' for a domain) or '*'", 'allowedHosts', h);
    }
    return name;
  });
}

/** `corsOrigins` as browsers send them in `Origin` (scheme, host and port only); a path is refused. */
export function corsOriginsOf(value: unknown): string[] {
  return (value === undefined ? [] : v.stringArray('corsOrigins', value)).map((origin) => {
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
}

/** The request-level checks: Host name, origin (and CORS preflights), API key. */
export class Access {
  readonly #s: AccessSettings;
  readonly #keyHash: Buffer | undefined;
  readonly #hostNames: Set<string>;
  #hostCheck = true;

  constructor(settings: AccessSettings) {
    this.#s = settings;
    this.#keyHash = settings.apiKey === undefined ? undefined : sha256(settings.apiKey);
    this.#hostNames = new Set(['localhost', osHostname().toLowerCase()]);
  }

  /** Whether Host headers are checked (set by {@link Access.listening}). */
  get hostCheck(): boolean {
    return this.#hostCheck;
  }

  /**
   * Bound to `address`: the Host check is on there when it is a loopback address (only this machine's pages
   * reach it, under names it knows), or when allowedHosts names hosts; `'*'` turns it off.
   */
  listening(address: string): void {
    const names = this.#s.allowedHosts;
    this.#hostCheck = !names.includes('*') && (isLoopback(address) || names.length > 0);
  }

  checkHost(req: IncomingMessage): void {
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
  checkOrigin(req: IncomingMessage, res: ServerResponse): boolean {
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

  preflight(req: IncomingMessage, res: ServerResponse, crossOrigin: boolean): void {
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

  authorize(req: IncomingMessage): void {
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
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
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
