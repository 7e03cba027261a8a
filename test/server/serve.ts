// One server on the tiny Huozi model for a test file: `serveTinyModel()` at the top of the file loads the model and
// starts the server before the file's tests and closes both after them; its fields are set from then on.
import OpenAI from 'openai';
import { afterAll, beforeAll } from 'vitest';
import { createServer, loadModel, type HuoziServer, type Model, type ServerOptions } from '../../dist/index.js';
import { f16Path } from '../helpers.js';

export interface Served {
  readonly model: Model;
  readonly server: HuoziServer;
  /** The server's base URL (`http://127.0.0.1:port`). */
  readonly url: string;
  /** The official `openai` client on the server, without retries. */
  readonly client: OpenAI;
  /** POSTs `body` as JSON: the status and the parsed answer. */
  post(body: Record<string, unknown>, path?: string): Promise<{ status: number; json: Record<string, any> }>;
  /** POSTs `body` with `stream: true`: the stream's data events, parsed (without `[DONE]`). */
  events(body: Record<string, unknown>, path?: string): Promise<Record<string, any>[]>;
}

/** A server with `servedModelName: 'huozi'`, one thread and `options`, on a free port of 127.0.0.1. */
export function serveTinyModel(options: ServerOptions = {}): Served {
  const s = {} as { -readonly [K in keyof Served]: Served[K] };
  beforeAll(async () => {
    s.model = await loadModel(f16Path);
    s.server = await createServer(s.model, { servedModelName: 'huozi', threads: 1, ...options });
    ({ url: s.url } = await s.server.listen(0, '127.0.0.1'));
    s.client = new OpenAI({ apiKey: 'EMPTY', baseURL: `${s.url}/v1`, maxRetries: 0 });
  });
  afterAll(async () => {
    await s.server?.close();
    await s.model?.dispose();
  });
  s.post = async (body, path = '/v1/chat/completions') => {
    const res = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as Record<string, any> };
  };
  s.events = async (body, path = '/v1/chat/completions') => {
    const res = await fetch(`${s.url}${path}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }),
    });
    const text = await res.text();
    return text.split('\n\n').filter((b) => b.startsWith('data: {')).map((b) => JSON.parse(b.slice(6)) as Record<string, any>);
  };
  return s;
}
