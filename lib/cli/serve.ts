import { isIP } from 'node:net';
import { createServer } from '../server/server.js';
import { loadCliModel } from './shared.js';

interface ServeOptions {
  model?: string;
  host: string;
  port: number;
  parallel: number;
  ctxSize?: number;
  threads?: number;
  gpuLayers: string;
  rpc?: string;
  servedModelName?: string;
  apiKey?: string;
  chatTemplate?: string;
  responseRole: string;
  streamIntervalMs: number;
  maxQueue: number;
  web: boolean;
  allowedHost: string[];
  corsOrigin: string[];
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerAddress?: number;
  quiet: boolean;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

export async function serveCommand(opts: ServeOptions): Promise<void> {
  const apiKey = opts.apiKey ?? process.env.HUOZI_API_KEY;
  const model = await loadCliModel({ ...opts, ctxSize: opts.ctxSize ?? 0, temp: 0, topK: 0, topP: 1, minP: 0, repeatPenalty: 1 });
  const template = opts.chatTemplate === undefined || ['auto', 'huozi', 'chatml'].includes(opts.chatTemplate)
    ? ((opts.chatTemplate ?? 'auto') as 'auto' | 'huozi' | 'chatml')
    : { file: opts.chatTemplate };
  const server = await createServer(model, {
    ...(opts.servedModelName ? { servedModelName: opts.servedModelName } : {}),
    ...(apiKey ? { apiKey } : {}),
    parallel: opts.parallel,
    ...(opts.ctxSize === undefined ? {} : { contextSize: opts.ctxSize }),
    ...(opts.threads === undefined ? {} : { threads: opts.threads }),
    chatTemplate: template,
    responseRole: opts.responseRole,
    streamIntervalMs: opts.streamIntervalMs,
    maxQueue: opts.maxQueue,
    webPage: opts.web,
    allowedHosts: opts.allowedHost,
    corsOrigins: opts.corsOrigin,
    headersTimeoutMs: opts.headersTimeoutMs,
    requestTimeoutMs: opts.requestTimeoutMs,
    keepAliveTimeoutMs: opts.keepAliveTimeoutMs,
    maxConnections: opts.maxConnections,
    ...(opts.maxConnectionsPerAddress === undefined ? {} : { maxConnectionsPerAddress: opts.maxConnectionsPerAddress }),
    ...(opts.quiet ? {} : { log: (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`) }),
  });
  const { url } = await server.listen(opts.port, opts.host);
  const c = server.context;
  process.stderr.write(
    `huozi-gguf serve: ${url}  model '${server.servedModelName}', ${c.parallel} slots of ${c.slotContextSize} tokens, ` +
      `${c.threads} threads${apiKey ? ', API key required' : ''}\n` +
      `  OpenAI API: ${url}/v1 (chat/completions, completions, models)  web chat: ${url}/  health: ${url}/health  metrics: ${url}/metrics\n`,
  );
  if (!isLoopback(opts.host)) {
    process.stderr.write(
      `warning: listening on ${opts.host}: other machines can reach this server` +
        (apiKey ? '' : ' and, without --api-key, use it freely') + '\n',
    );
    if (!server.hostCheck) {
      process.stderr.write(
        'warning: Host names are not checked (DNS rebinding: a web page could reach this server under its own name); ' +
          'give --allowed-host <name> for each name clients use' + (apiKey ? '' : ', and use --api-key') + '\n',
      );
    }
  }
  let stopping = false;
  const stop = async () => {
    if (stopping) process.exit(130);
    stopping = true;
    process.stderr.write('huozi-gguf serve: shutting down\n');
    await server.close();
    await model.dispose();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}
