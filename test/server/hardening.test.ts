// The server against what a hostile client or web page sends (issue #14: items 5, 6, 10, 11 and the server
// parts of 2 and 13): Host, Origin and Content-Type checks (DNS rebinding, cross-site requests), the API key's
// scheme and comparison, request timeouts and connection caps (slow loris), oversized bodies, prompts that are
// costly to tokenize, a failing chat template, and request fields that were accepted and ignored.
// Raw sockets and node:http stand in for what fetch will not send (a foreign Host, a body that never ends).
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, loadModel, type HuoziServer, type Model } from '../../dist/index.js';
import { f16Path } from '../helpers.js';

let model: Model;
let server: HuoziServer;
let url: string;
let port: number;

beforeAll(async () => {
  model = await loadModel(f16Path);
  server = await createServer(model, { servedModelName: 'huozi', parallel: 2, contextSize: 2048, threads: 1 });
  ({ url, port } = await server.listen(0));
});
afterAll(async () => {
  await server?.close();
  await model?.dispose();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const JSON_TYPE = { 'Content-Type': 'application/json' };
const chat = (extra: object = {}) => ({ model: 'huozi', messages: [{ role: 'user', content: '请背诵《春晓》' }], max_tokens: 4, temperature: 0, ...extra });

interface Raw {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json: { error?: { message: string; code: string | null; param: string | null; type: string } } & Record<string, unknown>;
}

/** One request through node:http on its own connection, with exactly the headers given (Host included). */
function raw(method: string, path: string, headers: Record<string, string>, body?: string | Buffer, p = port, host = '127.0.0.1'): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host, port: p, method, path, headers, agent: false, setHost: !('Host' in headers) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = {};
        try {
          json = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode!, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function metric(name: string, base = url): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

/** A raw TCP connection: what it received, and when (and how) it closed. */
function socketTo(p: number, localAddress?: string): Promise<{ socket: Socket; received: () => string; closed: Promise<{ error?: string; ms: number }> }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const socket = connect({ host: '127.0.0.1', port: p, ...(localAddress ? { localAddress } : {}) });
    let data = '';
    let error: string | undefined;
    socket.on('data', (d) => (data += d.toString('latin1')));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    const closed = new Promise<{ error?: string; ms: number }>((r) => socket.on('close', () => r({ error, ms: performance.now() - t0 })));
    socket.once('connect', () => resolve({ socket, received: () => data, closed }));
    socket.once('error', reject);
  });
}

/** Polls /health every 50 ms while `work` runs; returns the slowest answer's time in ms. */
async function slowestHealth(base: string, work: Promise<unknown>): Promise<number> {
  let done = false;
  void work.finally(() => (done = true)).catch(() => {});
  let slowest = 0;
  let polls = 0;
  while (!done || polls < 3) {
    const t0 = performance.now();
    const res = await fetch(`${base}/health`);
    expect(res.status).toBe(200);
    await res.json();
    slowest = Math.max(slowest, performance.now() - t0);
    polls++;
    await sleep(50);
  }
  return slowest;
}

describe('Host, Origin and Content-Type (a web page must not drive the server)', () => {
  it('a text/plain POST from another site, under its own Host name (DNS rebinding): 403, nothing generated', async () => {
    const before = await metric('huozi_generated_tokens_total');
    const r = await raw('POST', '/v1/chat/completions', {
      Host: `evil.example:${port}`, Origin: 'http://evil.example', 'Content-Type': 'text/plain;charset=UTF-8',
    }, JSON.stringify(chat()));
    expect(r.status).toBe(403);
    expect(r.json.error?.code).toBe('host_not_allowed');
    expect(r.json.error?.message).toMatch(/evil\.example/);
    expect(r.json.error?.message).toMatch(/allowed-host/);
    // Reading is refused too (what rebinding is for), /health and the page included.
    expect((await raw('GET', '/v1/models', { Host: `evil.example:${port}` })).status).toBe(403);
    expect((await raw('GET', '/', { Host: `evil.example:${port}` })).status).toBe(403);
    expect((await raw('GET', '/health', { Host: `evil.example:${port}` })).status).toBe(403);
    expect(await metric('huozi_generated_tokens_total')).toBe(before);
  });

  it('loopback names and IP literals are accepted as Host', async () => {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `chat.localhost:${port}`, `[::1]:${port}`, 'localhost', `127.0.0.2:${port}`]) {
      const r = await raw('GET', '/v1/models', { Host: host });
      expect([host, r.status]).toEqual([host, 200]);
    }
  });

  it('a cross-origin request with a loopback Host: 403 naming the origin and --cors-origin; the preflight too', async () => {
    const r = await raw('POST', '/v1/chat/completions', { Host: `localhost:${port}`, Origin: 'http://evil.example', ...JSON_TYPE }, JSON.stringify(chat()));
    expect(r.status).toBe(403);
    expect(r.json.error?.code).toBe('origin_not_allowed');
    expect(r.json.error?.message).toMatch(/http:\/\/evil\.example.*--cors-origin/);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    expect(r.headers.vary).toMatch(/Origin/);
    const pre = await raw('OPTIONS', '/v1/chat/completions', {
      Host: `localhost:${port}`, Origin: 'http://evil.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type',
    });
    expect(pre.status).toBe(403);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    // A GET from another origin (fetch sends Origin) is refused as well.
    expect((await raw('GET', '/v1/models', { Host: `localhost:${port}`, Origin: 'https://evil.example' })).status).toBe(403);
  });

  it('the page\'s own origin is same-origin: accepted, without CORS headers', async () => {
    const r = await raw('POST', '/v1/chat/completions', { Host: `127.0.0.1:${port}`, Origin: `http://127.0.0.1:${port}`, ...JSON_TYPE }, JSON.stringify(chat()));
    expect(r.status).toBe(200);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    const l = await raw('POST', '/v1/chat/completions', { Host: `localhost:${port}`, Origin: `http://localhost:${port}`, ...JSON_TYPE }, JSON.stringify(chat()));
    expect(l.status).toBe(200);
    // The same host on another port is another origin.
    const other = await raw('POST', '/v1/chat/completions', { Host: `localhost:${port}`, Origin: `http://localhost:${port + 1}`, ...JSON_TYPE }, JSON.stringify(chat()));
    expect(other.status).toBe(403);
  });

  it.each([
    ['text/plain', 'text/plain;charset=UTF-8'],
    ['a form', 'application/x-www-form-urlencoded'],
    ['multipart', 'multipart/form-data; boundary=x'],
    ['no Content-Type', undefined],
    ['JSON in another charset', 'application/json; charset=iso-8859-1'],
  ])('a POST body sent as %s: 415 naming application/json', async (_, type) => {
    const r = await raw('POST', '/v1/chat/completions', type === undefined ? {} : { 'Content-Type': type }, JSON.stringify(chat()));
    expect(r.status).toBe(415);
    expect(r.json.error?.code).toBe('unsupported_media_type');
    expect(r.json.error?.message).toMatch(/application\/json/);
  });

  it('application/json with charset=utf-8 (any case) is accepted', async () => {
    for (const type of ['application/json; charset=utf-8', 'Application/JSON;charset="UTF-8"', 'application/json']) {
      expect((await raw('POST', '/v1/chat/completions', { 'Content-Type': type }, JSON.stringify(chat()))).status).toBe(200);
    }
  });

  it('corsOrigins allows exactly the origins named: preflight, the request, Vary: Origin', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, corsOrigins: ['http://app.example:3000'] });
    const { port: p } = await s.listen(0);
    try {
      const pre = await raw('OPTIONS', '/v1/chat/completions', {
        Host: `127.0.0.1:${p}`, Origin: 'http://app.example:3000', 'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'authorization,content-type,x-stainless-os',
      }, undefined, p);
      expect(pre.status).toBe(204);
      expect(pre.headers['access-control-allow-origin']).toBe('http://app.example:3000');
      expect(pre.headers['access-control-allow-methods']).toMatch(/POST/);
      expect(pre.headers['access-control-allow-headers']?.toLowerCase()).toMatch(/authorization.*content-type.*x-stainless-os/);
      expect(pre.headers.vary).toMatch(/Origin/);
      const r = await raw('POST', '/v1/chat/completions', { Host: `127.0.0.1:${p}`, Origin: 'http://app.example:3000', ...JSON_TYPE }, JSON.stringify(chat()), p);
      expect(r.status).toBe(200);
      expect(r.headers['access-control-allow-origin']).toBe('http://app.example:3000');
      expect(r.headers.vary).toMatch(/Origin/);
      // Exact: another port, scheme or host is another origin.
      for (const origin of ['http://app.example', 'https://app.example:3000', 'http://evil.app.example:3000', 'null']) {
        expect([origin, (await raw('GET', '/v1/models', { Host: `127.0.0.1:${p}`, Origin: origin }, undefined, p)).status]).toEqual([origin, 403]);
      }
    } finally {
      await s.close();
    }
    const any = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, corsOrigins: ['*'] });
    const { port: q } = await any.listen(0);
    try {
      const r = await raw('GET', '/v1/models', { Host: `127.0.0.1:${q}`, Origin: 'http://anything.example' }, undefined, q);
      expect(r.status).toBe(200);
      expect(r.headers['access-control-allow-origin']).toBe('*');
      // The Host check still holds: CORS is about origins, not about DNS rebinding.
      expect((await raw('GET', '/v1/models', { Host: `anything.example:${q}` }, undefined, q)).status).toBe(403);
    } finally {
      await any.close();
    }
    await expect(createServer(model, { corsOrigins: ['app.example'] })).rejects.toThrow(/corsOrigins/);
    await expect(createServer(model, { corsOrigins: ['http://app.example/path'] })).rejects.toThrow(/corsOrigins/);
  });

  it('allowedHosts adds names (and .domain suffixes); a non-loopback bind checks Host only when given names', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, allowedHosts: ['llm.example', '.corp.example'] });
    const { port: p } = await s.listen(0);
    try {
      for (const [host, status] of [['llm.example', 200], [`LLM.example:${p}`, 200], [`a.corp.example:${p}`, 200], ['corp.example', 200], ['evil.example', 403], ['llm.example.evil.example', 403]] as const) {
        expect([host, (await raw('GET', '/v1/models', { Host: host }, undefined, p)).status]).toEqual([host, status]);
      }
    } finally {
      await s.close();
    }
    const open = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1 });
    const { port: q } = await open.listen(0, '0.0.0.0');
    try {
      expect(open.hostCheck).toBe(false);
      expect((await raw('GET', '/v1/models', { Host: `server.lan:${q}` }, undefined, q)).status).toBe(200);
      // Cross-origin requests are still refused.
      expect((await raw('GET', '/v1/models', { Host: `server.lan:${q}`, Origin: 'http://evil.example' }, undefined, q)).status).toBe(403);
    } finally {
      await open.close();
    }
    const named = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, allowedHosts: ['server.lan'] });
    const { port: n } = await named.listen(0, '0.0.0.0');
    try {
      expect(named.hostCheck).toBe(true);
      expect((await raw('GET', '/v1/models', { Host: `server.lan:${n}` }, undefined, n)).status).toBe(200);
      expect((await raw('GET', '/v1/models', { Host: `evil.example:${n}` }, undefined, n)).status).toBe(403);
    } finally {
      await named.close();
    }
    await expect(createServer(model, { allowedHosts: ['llm.example:8000'] })).rejects.toThrow(/allowedHosts/);
  });
});

describe('API key', () => {
  it('the scheme is case-insensitive; a key of another length or another scheme is refused', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, apiKey: 'sk-test' });
    const { port: p } = await s.listen(0);
    try {
      const status = async (authorization: string) => (await raw('GET', '/v1/models', { Authorization: authorization }, undefined, p)).status;
      expect(await status('Bearer sk-test')).toBe(200);
      expect(await status('bearer sk-test')).toBe(200);
      expect(await status('BEARER   sk-test')).toBe(200);
      expect(await status('Bearer sk-tes')).toBe(401);
      expect(await status('Bearer sk-test-and-more')).toBe(401);
      expect(await status('Bearer ')).toBe(401);
      expect(await status('Basic sk-test')).toBe(401);
      expect(await status('sk-test')).toBe(401);
      const r = await raw('GET', '/v1/models', { Authorization: 'Basic c2stdGVzdA==' }, undefined, p);
      expect(r.json.error?.code).toBe('invalid_api_key');
      expect(r.json.error?.message).toMatch(/Bearer/);
    } finally {
      await s.close();
    }
  });
});

describe('request timeouts and connection caps', () => {
  it('slow loris: headers and one body byte, then nothing: closed (408) within the request timeout', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const { port: p } = await s.listen(0);
    try {
      const body = await socketTo(p);
      body.socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`);
      const headers = await socketTo(p);
      headers.socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\nContent-Le`);
      const idle = await socketTo(p);
      // Generous bounds: closed at all, well before the 10 s a hang would take; the server's check runs every
      // 150 ms or so, so 600 ms plus scheduling on a busy machine.
      const outcome = await Promise.race([Promise.all([body.closed, headers.closed, idle.closed]), sleep(10_000).then(() => 'still open')]);
      expect(outcome).not.toBe('still open');
      expect(body.received()).toMatch(/^HTTP\/1\.1 408/);
      expect(headers.received()).toMatch(/^HTTP\/1\.1 408/);
      // The server still serves.
      expect((await fetch(`http://127.0.0.1:${p}/health`)).status).toBe(200);
    } finally {
      await s.close();
    }
    await expect(createServer(model, { headersTimeoutMs: 2000, requestTimeoutMs: 1000 })).rejects.toThrow(/headersTimeoutMs/);
  });

  it('a streaming answer may last longer than the request timeout: only the request side is bounded', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, headersTimeoutMs: 200, requestTimeoutMs: 400 });
    const { url: u } = await s.listen(0);
    try {
      const res = await fetch(`${u}/v1/completions`, {
        method: 'POST', headers: JSON_TYPE,
        body: JSON.stringify({ model: 'huozi', prompt: '春', max_tokens: 64, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } }),
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      await reader.read();
      // The client reads nothing for three request timeouts: the answer must still arrive whole.
      await sleep(1500);
      let text = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      expect(text).toContain('"completion_tokens":64');
      expect(text).toContain('data: [DONE]');
    } finally {
      await s.close();
    }
  });

  it('connections beyond the per-address and total caps get 503 and are closed; freed places are reused', async () => {
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, maxConnections: 3, maxConnectionsPerAddress: 2 });
    const { port: p } = await s.listen(0);
    const open: Socket[] = [];
    try {
      const a = await socketTo(p, '127.0.0.1');
      const b = await socketTo(p, '127.0.0.1');
      open.push(a.socket, b.socket);
      // A third from the same address: over the per-address cap.
      const c = await socketTo(p, '127.0.0.1');
      c.socket.write(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      const cClosed = await Promise.race([c.closed, sleep(10_000).then(() => undefined)]);
      expect(cClosed).toBeDefined();
      expect(c.received()).toMatch(/^HTTP\/1\.1 503/);
      expect(c.received()).toMatch(/too_many_connections/);
      // One from another address fits (3 in all); a fourth from a third address is over the total.
      const d = await socketTo(p, '127.0.0.2');
      open.push(d.socket);
      const e = await socketTo(p, '127.0.0.3');
      const eClosed = await Promise.race([e.closed, sleep(10_000).then(() => undefined)]);
      expect(eClosed).toBeDefined();
      expect(e.received()).toMatch(/^HTTP\/1\.1 503/);
      // Closing one frees its place.
      a.socket.destroy();
      await a.closed;
      let ok = false;
      const deadline = Date.now() + 10_000;
      while (!ok && Date.now() < deadline) {
        try {
          ok = (await raw('GET', '/health', {}, undefined, p)).status === 200;
        } catch {
          await sleep(50);
        }
        if (!ok) await sleep(50);
      }
      expect(ok).toBe(true);
    } finally {
      for (const socket of open) socket.destroy();
      await s.close();
    }
    await expect(createServer(model, { maxConnections: 2, maxConnectionsPerAddress: 3 })).rejects.toThrow(/maxConnectionsPerAddress/);
  });

  it('a chunked body over the limit: 413, and the connection then closes cleanly (no reset)', async () => {
    const c = await socketTo(port);
    c.socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`);
    const chunk = Buffer.alloc(256 * 1024, 'a');
    for (let i = 0; i < 20; i++) c.socket.write(Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]));
    c.socket.write('0\r\n\r\n');
    const closed = await Promise.race([c.closed, sleep(20_000).then(() => undefined)]);
    expect(closed).toBeDefined();
    expect(closed!.error).toBeUndefined();
    expect(c.received()).toMatch(/^HTTP\/1\.1 413/);
    expect(c.received()).toMatch(/request_too_large/);
  });

  it('a declared Content-Length over the limit: 413 before the body; with Expect: 100-continue no body is asked for', async () => {
    const big = 5 << 20;
    const c = await socketTo(port);
    c.socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${big}\r\nExpect: 100-continue\r\n\r\n`);
    const deadline = Date.now() + 10_000;
    while (!/\r\n\r\n[\s\S]*\}/.test(c.received()) && Date.now() < deadline) await sleep(20);
    expect(c.received()).toMatch(/^HTTP\/1\.1 413/);
    expect(c.received()).not.toMatch(/100 Continue/);
    c.socket.destroy();
    // Without Expect, the client sends the body anyway: it gets the 413 and a clean close.
    const d = await socketTo(port);
    d.socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${big}\r\n\r\n`);
    d.socket.write(Buffer.alloc(big, 'a'));
    const closed = await Promise.race([d.closed, sleep(20_000).then(() => undefined)]);
    expect(closed).toBeDefined();
    expect(closed!.error).toBeUndefined();
    expect(d.received()).toMatch(/^HTTP\/1\.1 413/);
  });
});

describe('the event loop stays free while a prompt is tokenized', () => {
  it('/health answers within 1 s while a 1.6 MB body of emoji is handled (refused by its length before tokenizing)', async () => {
    const prompt = '😀'.repeat(400_000);
    const work = raw('POST', '/v1/completions', JSON_TYPE, JSON.stringify({ model: 'huozi', prompt, max_tokens: 4 }));
    expect(await slowestHealth(url, work)).toBeLessThan(1000);
    const r = await work;
    expect(r.status).toBe(400);
    expect(r.json.error?.code).toBe('context_length_exceeded');
    expect(r.json.error?.message).toMatch(/maximum context length is 1024 tokens/);
    // The same in a chat message.
    const chatWork = raw('POST', '/v1/chat/completions', JSON_TYPE, JSON.stringify(chat({ messages: [{ role: 'user', content: prompt }] })));
    expect(await slowestHealth(url, chatWork)).toBeLessThan(1000);
    expect((await chatWork).json.error?.code).toBe('context_length_exceeded');
  });

  it('/health answers within 1 s while a long emoji prompt within the length bound is tokenized', async () => {
    // 120k emoji (480 KB) could be as few as 480000 / (longest token) tokens, under this slot's 32768: the
    // server has to tokenize it to know (480k tokens: too long).
    const s = await createServer(model, { servedModelName: 'huozi', parallel: 1, contextSize: 32768, threads: 1 });
    const { url: u } = await s.listen(0);
    try {
      const work = raw('POST', '/v1/completions', JSON_TYPE, JSON.stringify({ model: 'huozi', prompt: '😀'.repeat(120_000), max_tokens: 4 }), Number(new URL(u).port));
      expect(await slowestHealth(u, work)).toBeLessThan(1000);
      const r = await work;
      expect(r.status).toBe(400);
      // BOS, the space prefix (▁) and four byte tokens per emoji: the count comes from tokenizing it all.
      expect(r.json.error?.message).toMatch(/resulted in 480002 tokens/);
    } finally {
      await s.close();
    }
  });
});

describe('chat template failures', () => {
  it('a template that raises: 400 naming the template and carrying its message, never a 500', async () => {
    const s = await createServer(model, {
      servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1,
      chatTemplate: { jinja: "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}" },
    });
    const { port: p } = await s.listen(0);
    try {
      const r = await raw('POST', '/v1/chat/completions', JSON_TYPE, JSON.stringify(chat({ messages: [{ role: 'system', content: 'x' }, { role: 'user', content: 'y' }] })), p);
      expect(r.status).toBe(400);
      expect(r.json.error?.code).toBe('chat_template_error');
      expect(r.json.error?.message).toMatch(/chat template \(template given as \{ jinja \}\)/i);
      expect(r.json.error?.message).toMatch(/System role not supported/);
      // The same template without the system message renders.
      expect((await raw('POST', '/v1/chat/completions', JSON_TYPE, JSON.stringify(chat()), p)).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it('/health answers within 1 s while a slow template renders', async () => {
    const s = await createServer(model, {
      servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1,
      chatTemplate: { jinja: '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}' },
    });
    const { url: u, port: p } = await s.listen(0);
    try {
      const work = raw('POST', '/v1/chat/completions', JSON_TYPE, JSON.stringify(chat()), p);
      expect(await slowestHealth(u, work)).toBeLessThan(1000);
      const r = await work;
      expect(r.status).toBe(400);
      expect(r.json.error?.code).toBe('chat_template_error');
    } finally {
      await s.close();
    }
  });
});

describe('request fields are implemented or refused, never ignored', () => {
  const post = (body: unknown, path = '/v1/chat/completions') => raw('POST', path, JSON_TYPE, JSON.stringify(body));

  it.each([
    ['max_tokens: 0', { max_tokens: 0 }, 'max_tokens'],
    ['max_completion_tokens: 0', { max_completion_tokens: 0 }, 'max_completion_tokens'],
    ['max_tokens: -1', { max_tokens: -1 }, 'max_tokens'],
  ])('%s: 400 as OpenAI answers (integer_below_min_value)', async (_, extra, param) => {
    const r = await post(chat({ max_tokens: undefined, ...extra }));
    expect(r.status).toBe(400);
    expect(r.json.error?.code).toBe('integer_below_min_value');
    expect(r.json.error?.param).toBe(param);
    expect(r.json.error?.message).toMatch(/Expected a value >= 1/);
  });

  it('max_tokens and max_completion_tokens that disagree: 400; equal: accepted', async () => {
    const r = await post(chat({ max_tokens: 4, max_completion_tokens: 5 }));
    expect(r.status).toBe(400);
    expect(r.json.error?.param).toBe('max_tokens');
    const ok = await post(chat({ max_tokens: 3, max_completion_tokens: 3 }));
    expect(ok.status).toBe(200);
    expect((ok.json.usage as { completion_tokens: number }).completion_tokens).toBeLessThanOrEqual(3);
  });

  it.each([
    ['an unknown key in a message', { messages: [{ role: 'user', content: 'x', nmae: 'bob' }] }, 'messages[0].nmae'],
    ['a participant name', { messages: [{ role: 'user', content: 'x', name: 'bob' }] }, 'messages[0].name'],
    ['an unknown key in a content part', { messages: [{ role: 'user', content: [{ type: 'text', text: 'x', cache_control: {} }] }] }, 'messages[0].content[0].cache_control'],
    ['an unknown key in stream_options', { stream: true, stream_options: { include_usag: true } }, 'stream_options.include_usag'],
    ['stream_options without stream', { stream_options: { include_usage: true } }, 'stream_options'],
    // Implemented since issue #16: a value they cannot take is still a 400 naming them.
    ['tools with a name the server cannot take', { tools: [{ type: 'function', function: { name: '1f', parameters: {} } }] }, 'tools[0].function.name'],
    ['response_format of an unknown type', { response_format: { type: 'yaml' } }, 'response_format.type'],
    ['logprobs not a boolean', { logprobs: 'yes' }, 'logprobs'],
    ['logit_bias outside -100..100', { logit_bias: { 5: 1000 } }, 'logit_bias.5'],
  ])('%s: 400 naming it', async (_, extra, param) => {
    const r = await post(chat(extra));
    expect(r.status).toBe(400);
    expect(r.json.error?.param).toBe(param);
    expect(r.json.error?.message).toContain(param.replace(/^.*\./, ''));
  });

  it('fields that say "nothing" are accepted: refusal/tool_calls null on a history message, tools [], logprobs false, user', async () => {
    const r = await post(chat({
      messages: [
        { role: 'user', content: '请背诵《春晓》' },
        { role: 'assistant', content: '好', refusal: null, tool_calls: null },
        { role: 'user', content: '谢谢' },
      ],
      tools: [], logprobs: false, user: 'u-1', response_format: { type: 'text' }, logit_bias: {},
    }));
    expect(r.status).toBe(200);
  });

  it('echo with a token-id prompt echoes the prompt\'s text, streaming and not', async () => {
    const ids = model.tokenize('春眠不觉晓，', { addBos: false });
    const text = model.detokenize(ids);
    const body = { model: 'huozi', prompt: ids, max_tokens: 4, temperature: 0, echo: true };
    const r = await post(body, '/v1/completions');
    expect(r.status).toBe(200);
    const out = (r.json.choices as { text: string }[])[0].text;
    expect(out.startsWith(text)).toBe(true);
    expect(out.length).toBeGreaterThan(text.length);
    const stream = await post({ ...body, stream: true }, '/v1/completions');
    const texts = stream.text.split('\n\n').filter((b) => b.startsWith('data: {')).map((b) => (JSON.parse(b.slice(6)) as { choices: { text: string }[] }).choices[0]?.text ?? '');
    expect(texts[0]).toBe(text);
    expect(texts.join('')).toBe(out);
  });
});
