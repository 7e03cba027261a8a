// huozi-gguf serve: the OpenAI-compatible server (lib/server/) on a model from the command line.
import type { Command } from 'commander';
import {
  addFlags, ctxSizeFlag, gpuLayersFlag, intFlag, PLACEMENT_FLAGS, loadCliModel, modelFlag, negatedFlag, repeatableFlag, rpcFlag, stringFlag, switchFlag,
  threadsFlag, loraFlag, cliLoras, type FlagValues,
} from './flags.js';

const SERVE_FLAGS = [
  modelFlag,
  loraFlag,
  stringFlag('host', '-H, --host <address>', 'address to listen on (loopback by default: other machines cannot connect)').default('127.0.0.1'),
  intFlag('port', '-p, --port <n>', 'port').default(8000),
  intFlag('parallel', '--parallel <n>', 'requests generated at once, slots (also -np)').default(4),
  ctxSizeFlag.describe('KV cache tokens in all, shared out among the slots (default: 4096 per slot)'),
  threadsFlag,
  gpuLayersFlag.default('max'),
  ...PLACEMENT_FLAGS,
  rpcFlag.describe('RPC servers for layers, comma-separated host:port'),
  stringFlag('servedModelName', '--served-model-name <name>', "the model id clients use (default: the file's name)"),
  stringFlag('apiKey', '--api-key <key>', 'require Authorization: Bearer <key> (or set HUOZI_API_KEY)'),
  stringFlag('chatTemplate', '--chat-template <file>', 'chat template: auto, huozi, chatml, or a Jinja file (default: auto)'),
  stringFlag('responseRole', '--response-role <role>', "role name in chat answers (Huozi's README: 助手)").default('assistant'),
  intFlag('maxQueue', '--max-queue <n>', 'requests that may wait for a slot; beyond it, 503').default(64),
  intFlag(
    'streamIntervalMs',
    '--stream-interval-ms <ms>',
    "streaming: send new text at most every <ms> ms; 0 = one event per token (llama-server's way)",
  ).default(16),
  negatedFlag('web', '--no-web', 'do not serve the web chat page at /'),
  repeatableFlag(
    'allowedHost',
    '--allowed-host <name>',
    'a Host name clients use besides localhost and IP addresses (repeatable; .example.com for a domain; * = no check)',
  ),
  repeatableFlag('corsOrigin', '--cors-origin <origin>', 'let web pages from this origin call the API, e.g. http://localhost:3000 (repeatable; * = any)'),
  intFlag('headersTimeoutMs', '--headers-timeout-ms <ms>', 'time a client has to send the request headers').default(20_000),
  intFlag('requestTimeoutMs', '--request-timeout-ms <ms>', 'time a client has to send a whole request (answers may stream longer)').default(60_000),
  intFlag('keepAliveTimeoutMs', '--keep-alive-timeout-ms <ms>', 'idle keep-alive connections are closed after this').default(5000),
  intFlag('maxConnections', '--max-connections <n>', 'open connections in all; more get 503').default(512),
  intFlag(
    'maxConnectionsPerAddress',
    '--max-connections-per-address <n>',
    'open connections from one address; more get 503 (default: min(128, --max-connections))',
  ),
  switchFlag('quiet', '-q, --quiet', 'no request log'),
  negatedFlag('embeddings', '--no-embeddings', 'do not serve /v1/embeddings (its context is made at the first request otherwise)'),
  stringFlag('pooling', '--pooling <type>', "/v1/embeddings' pooling: mean, cls, last or model (the GGUF's pooling_type, else mean)").default('model'),
] as const;

type ServeOptions = FlagValues<typeof SERVE_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('serve')
      .description('an OpenAI-compatible server (chat/completions, completions, embeddings, models) with parallel slots and a web chat page'),
    SERVE_FLAGS,
  ).action((opts: ServeOptions) => serveCommand(opts));
}

export async function serveCommand(opts: ServeOptions): Promise<void> {
  const apiKey = opts.apiKey ?? process.env.HUOZI_API_KEY;
  const { createServer } = await import('../server/server.js');
  const { isLoopback } = await import('../util/net.js');
  const model = await loadCliModel(opts, opts.ctxSize ?? opts.parallel * 4096);
  const template = opts.chatTemplate === undefined || ['auto', 'huozi', 'chatml'].includes(opts.chatTemplate)
    ? ((opts.chatTemplate ?? 'auto') as 'auto' | 'huozi' | 'chatml')
    : { file: opts.chatTemplate };
  const loras = await cliLoras(model, opts.lora);
  const server = await createServer(model, {
    ...(loras.length ? { loras } : {}),
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
    embeddings: opts.embeddings === false ? false : { pooling: opts.pooling as 'mean' | 'cls' | 'last' | 'model' },
  });
  const { url } = await server.listen(opts.port, opts.host);
  const c = server.context;
  process.stderr.write(
    `huozi-gguf serve: ${url}  model '${server.servedModelName}', ${c.parallel} slots of ${c.slotContextSize} tokens, ` +
      `${c.threads} threads${apiKey ? ', API key required' : ''}\n` +
      `  OpenAI API: ${url}/v1 (chat/completions, completions, ${opts.embeddings === false ? '' : 'embeddings, '}models)  web chat: ${url}/  health: ${url}/health  metrics: ${url}/metrics\n`,
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
