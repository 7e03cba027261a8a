// huozi-gguf rpc-server: llama.cpp's ggml-rpc-server (tools/rpc) from the addon. This process is the server:
// ggml-rpc has no way to stop it, so it runs until SIGINT/SIGTERM (or, started by startRpcServer(), until
// its parent goes away).
import type { Command } from 'commander';
import { addFlags, intFlag, optionalValueFlag, stringFlag, threadsFlag, type FlagValues } from './flags.js';

const RPC_SERVER_FLAGS = [
  stringFlag('host', '-H, --host <address>', 'IPv4 address to listen on; anything but loopback is reachable by anyone on the network').default('127.0.0.1'),
  intFlag('port', '-p, --port <n>', 'port').default(50052),
  threadsFlag.describe('threads for the CPU device (default: half the cores)'),
  // --cache alone: true (llama.cpp's folder); --cache <dir>: that folder.
  optionalValueFlag('cache', '-c, --cache [dir]', 'cache large tensors on disk (default folder: $LLAMA_CACHE or ~/.cache/llama.cpp, then rpc/)'),
  stringFlag('device', '-d, --device <names>', 'devices to serve, comma-separated (default: every GPU, else the CPU)'),
] as const;

export type RpcServerCliOptions = FlagValues<typeof RPC_SERVER_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('rpc-server')
      .description("llama.cpp's RPC server: lend this machine's devices to loadModel({ rpcServers }) or llama.cpp's --rpc (no authentication: trusted networks only)"),
    RPC_SERVER_FLAGS,
  ).action((opts: RpcServerCliOptions) => rpcServerCommand(opts));
}

export async function rpcServerCommand(opts: RpcServerCliOptions): Promise<void> {
  const { rpcSecurityWarning, serveRpc } = await import('../rpc.js');
  const { isLoopback } = await import('../util/net.js');
  if (!isLoopback(opts.host)) process.stderr.write(`\n${rpcSecurityWarning(opts.host)}\n\n`);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(0));
  // Started by startRpcServer(): the parent's end of the IPC channel closes when it exits, however it exits.
  process.once('disconnect', () => process.exit(0));
  const devices = opts.device?.split(/[,/]+/).filter(Boolean);
  let server: Awaited<ReturnType<typeof serveRpc>>;
  try {
    server = await serveRpc({
      host: opts.host,
      port: opts.port,
      ...(opts.threads === undefined ? {} : { threads: opts.threads }),
      ...(opts.cache === undefined ? {} : { cacheDir: opts.cache }),
      ...(devices?.length ? { devices } : {}),
    });
  } catch (error) {
    // Exit here: under startRpcServer() the IPC channel would keep this process alive.
    process.stderr.write(`huozi-gguf: ${(error as Error).message}\n`);
    process.exit(1);
  }
  const list = server.devices.map((d) => `${d.name} (${d.description})`).join(', ');
  process.stderr.write(`huozi-gguf rpc-server: listening on ${server.endpoint}, serving ${list}; stop with Ctrl-C\n`);
  process.send?.({ type: 'ready', endpoint: server.endpoint, devices: server.devices });
  const why = await server.stopped;
  process.stderr.write(`huozi-gguf rpc-server: ${why}\n`);
  process.exit(1);
}
