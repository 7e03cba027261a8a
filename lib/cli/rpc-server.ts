// huozi-gguf rpc-server: llama.cpp's ggml-rpc-server (tools/rpc) from the addon. This process is the server:
// ggml-rpc has no way to stop it, so it runs until SIGINT/SIGTERM (or, started by startRpcServer(), until
// its parent goes away).
import { isLoopback, rpcSecurityWarning, serveRpc } from '../rpc.js';

export interface RpcServerCliOptions {
  host: string;
  port: number;
  threads?: number;
  cache?: string | boolean;
  device?: string;
}

export async function rpcServerCommand(opts: RpcServerCliOptions): Promise<void> {
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
