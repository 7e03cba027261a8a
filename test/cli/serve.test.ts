// `huozi-gguf serve` as a user starts it: the CLI process, its start-up line, a request, the request log,
// the warning for a non-loopback host, and a clean shutdown on SIGTERM.
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const cli = join(import.meta.dirname, '../../dist/cli/main.js');
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** Starts the CLI and resolves once it prints its URL; `stderr()` returns everything printed so far. */
async function serve(args: string[]): Promise<{ child: ChildProcess; url: string; stderr: () => string }> {
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '-t', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no start-up line: ${err}`)), 30_000);
    child.stderr!.on('data', () => {
      const m = /huozi-gguf serve: (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`exited with ${code}: ${err}`)));
  });
  return { child, url, stderr: () => err };
}

/** Waits (up to 5 s) until `text()` matches: the server writes its lines a moment after what they report. */
async function eventually(text: () => string, pattern: RegExp): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!pattern.test(text()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(text()).toMatch(pattern);
}

describe('huozi-gguf serve', () => {
  it('serves the demo model with the options Huozi README uses, logs requests, stops cleanly on SIGTERM', async () => {
    const { child, url, stderr } = await serve(['-np', '2', '-c', '2048', '--served-model-name', 'huozi', '--response-role', '助手', '--chat-template', 'huozi']);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await eventually(stderr, /model 'huozi', 2 slots of 1024 tokens/);
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(['huozi']);
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'huozi', messages: [{ role: '用户', content: '请背诵《春晓》' }], temperature: 0 }),
    });
    const body = (await res.json()) as { choices: { message: { role: string; content: string } }[] };
    expect(body.choices[0].message.role).toBe('助手');
    expect(body.choices[0].message.content).toContain('春眠不觉晓，处处闻啼鸟。');
    await eventually(stderr, /POST \/v1\/chat\/completions 200 \d+ ms prompt=\d+ completion=\d+/);
    expect((await fetch(`${url}/`)).headers.get('content-type')).toContain('text/html');
    const code = await new Promise<number | null>((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    });
    expect(code).toBe(0);
    await eventually(stderr, /shutting down/);
  });

  it('warns when listening beyond loopback, and --api-key locks /v1', async () => {
    const { url, stderr } = await serve(['--host', '0.0.0.0', '--api-key', 'k1', '-q', '--no-web']);
    await eventually(stderr, /warning: listening on 0\.0\.0\.0: other machines can reach this server/);
    expect(stderr()).toContain('API key required');
    const port = new URL(url).port;
    expect((await fetch(`http://127.0.0.1:${port}/v1/models`)).status).toBe(401);
    expect((await fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { Authorization: 'Bearer k1' } })).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(404);
    // Host names are not checked on 0.0.0.0 without --allowed-host: said so.
    expect(stderr()).toMatch(/Host names are not checked .*--allowed-host/);
  });

  it('--allowed-host, --cors-origin and the connection and timeout flags reach the server', async () => {
    const { url } = await serve([
      '-q', '--allowed-host', 'llm.example', '--cors-origin', 'http://app.example:3000', '--cors-origin', 'http://other.example',
      '--headers-timeout-ms', '300', '--request-timeout-ms', '600', '--max-connections', '8', '--max-connections-per-address', '8',
    ]);
    const port = Number(new URL(url).port);
    const get = (headers: Record<string, string>) =>
      new Promise<{ status: number; allowOrigin: string | undefined }>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/v1/models', headers, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode!, allowOrigin: res.headers['access-control-allow-origin'] as string | undefined }));
        }).on('error', reject).end();
      });
    expect((await get({ Host: `llm.example:${port}` })).status).toBe(200);
    expect((await get({ Host: `evil.example:${port}` })).status).toBe(403);
    expect(await get({ Host: `localhost:${port}`, Origin: 'http://other.example' })).toEqual({ status: 200, allowOrigin: 'http://other.example' });
    expect((await get({ Host: `localhost:${port}`, Origin: 'http://evil.example' })).status).toBe(403);
    // --request-timeout-ms: a request that never finishes is answered 408 and closed.
    const socket = connect({ host: '127.0.0.1', port });
    let got = '';
    socket.on('data', (d) => (got += d));
    socket.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{`);
    await new Promise((resolve) => socket.on('close', resolve));
    expect(got).toMatch(/^HTTP\/1\.1 408/);
  });
});
