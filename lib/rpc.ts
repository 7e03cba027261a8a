// llama.cpp's RPC backend: `startRpcServer()` runs a server (llama.cpp's ggml-rpc-server) that lends this
// machine's devices to a model loaded elsewhere with `loadModel(path, { rpcServers })`.
//
// The protocol has no authentication and no encryption: anyone who can reach the port can allocate memory
// and run graphs on the server's devices and read what it holds. Loopback by default; anything else warns.
//
// ggml_backend_rpc_start_server() cannot be stopped once it runs, so startRpcServer() runs it in a child
// process (`huozi-gguf rpc-server`) that close() ends, and that exits by itself when this process does.
// On the client side ggml-rpc GGML_ABORTs when it cannot connect or the handshake fails, so every endpoint is
// checked here first with the same handshake (probeRpcServer) and a timeout.
import { spawn } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { mkdirSync } from 'node:fs';
import { availableParallelism, homedir } from 'node:os';
import { isIPv4, connect, createServer } from 'node:net';
import { join } from 'node:path';
import { binding, packageRoot } from './binding.js';
import { HuoziError, ModelLoadError } from './errors.js';
import { isLoopback } from './util/net.js';
import * as v from './validate.js';

/** llama.cpp's default port for rpc-server. */
export const RPC_DEFAULT_PORT = 50052;
/** The most RPC servers one model can use (ggml-rpc.h GGML_RPC_MAX_SERVERS). */
export const RPC_MAX_SERVERS = 16;
/** The protocol this build speaks (ggml-rpc.h RPC_PROTO_MAJOR_VERSION / MINOR): servers must match. */
const PROTO_MAJOR = 7;
const PROTO_MINOR = 0;
const HELLO_TIMEOUT_MS = 10_000;

/** llama.cpp's warning (tools/rpc/rpc-server.cpp) for a server that listens beyond loopback. */
export function rpcSecurityWarning(host: string): string {
  return [
    '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
    `WARNING: Host ('${host}') is != '127.0.0.1'`,
    '         Never expose the RPC server to an open network!',
    '         This is an experimental feature and is not secure!',
    '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
  ].join('\n');
}

/** A failure of the RPC server itself (it could not listen, or it stopped). `code` is ERR_HUOZI_RPC_SERVER. */
export class RpcServerError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_RPC_SERVER', options);
    this.name = 'RpcServerError';
  }
}

export interface RpcServerOptions {
  /**
   * IPv4 address to listen on (llama.cpp rpc-server `--host`). Default: `'127.0.0.1'`. Any other address
   * emits llama.cpp's warning: the protocol has no authentication; never expose it to untrusted networks.
   */
  host?: string;
  /** TCP port (`--port`). Default: 50052. */
  port?: number;
  /** Threads for the CPU device (`--threads`). Default: half the cores, as llama.cpp's rpc-server. */
  threads?: number;
  /**
   * Cache large tensors in this folder so a client that loads the same model again sends only their hashes
   * (`--cache`). `true`: llama.cpp's folder, `$LLAMA_CACHE` or `~/.cache/llama.cpp`, then `rpc/`. Default: none.
   */
  cacheDir?: string | boolean;
  /** Devices to serve by name (`--device`, e.g. `['CUDA0']`). Default: every GPU, or the CPU when there is none. */
  devices?: string[];
  /** Each line the server prints (startup, connections, llama.cpp's errors). Default: dropped. */
  onLog?: (line: string) => void;
}

/** A device an RPC server lends. */
export interface RpcDevice {
  name: string;
  description: string;
  totalBytes: number;
  freeBytes: number;
}

/** A running RPC server (a child process). */
export interface RpcServer {
  /** `host:port`, what clients put in `rpcServers`. */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  /** The server process. */
  readonly pid: number;
  readonly devices: readonly RpcDevice[];
  /** Resolves when the server process has ended (close(), a crash, a signal). */
  readonly exited: Promise<void>;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

interface ServerParams {
  host: string;
  port: number;
  threads: number;
  cacheDir: string | undefined;
  devices: string[] | undefined;
}

const SERVER_OPTIONS = ['host', 'port', 'threads', 'cacheDir', 'devices', 'onLog'] as const;

function serverParams(options: unknown): ServerParams & { onLog?: (line: string) => void } {
  const o = v.options<RpcServerOptions>('options', options, SERVER_OPTIONS);
  const host = o.host === undefined ? '127.0.0.1' : v.string('host', o.host);
  // ggml-rpc binds with inet_addr(): IPv4 dotted quads only, no names, no IPv6.
  if (!isIPv4(host)) throw v.rangeError('IPv4 address such as "127.0.0.1"', 'host', host);
  const port = o.port === undefined ? RPC_DEFAULT_PORT : v.integer('port', o.port, 1, 65535);
  const threads = o.threads === undefined ? Math.max(1, Math.floor(availableParallelism() / 2)) : v.integer('threads', o.threads, 1, 1024);
  let cacheDir: string | undefined;
  if (o.cacheDir === true) cacheDir = defaultRpcCacheDir();
  else if (o.cacheDir !== undefined && o.cacheDir !== false) {
    if (typeof o.cacheDir !== 'string') throw v.typeError('string or boolean', 'cacheDir', o.cacheDir);
    cacheDir = v.string('cacheDir', o.cacheDir, { allowEmpty: false });
  }
  const devices = o.devices === undefined ? undefined : v.stringArray('devices', o.devices);
  const onLog = o.onLog === undefined ? undefined : v.func<(line: string) => void>('onLog', o.onLog);
  return { host, port, threads, cacheDir, devices, onLog };
}

/** llama.cpp's cache folder for rpc-server --cache (fs_get_cache_directory() + "rpc/"). */
export function defaultRpcCacheDir(): string {
  const env = process.env;
  let base: string;
  if (env.LLAMA_CACHE) base = env.LLAMA_CACHE;
  else if (process.platform === 'darwin') base = join(homedir(), 'Library', 'Caches', 'llama.cpp');
  else if (process.platform === 'win32') base = join(env.LOCALAPPDATA ?? homedir(), 'llama.cpp');
  else base = join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'llama.cpp');
  return join(base, 'rpc');
}

/**
 * Starts llama.cpp's RPC server in a child process and resolves once it accepts connections. The process
 * ends with close(), and by itself when this process exits.
 */
export async function startRpcServer(options?: RpcServerOptions): Promise<RpcServer> {
  const p = serverParams(options);
  if (!isLoopback(p.host)) process.emitWarning(rpcSecurityWarning(p.host), 'RpcSecurityWarning');
  const args = [join(packageRoot, 'dist', 'cli', 'main.js'), 'rpc-server', '--host', p.host, '--port', String(p.port), '--threads', String(p.threads)];
  if (p.cacheDir !== undefined) args.push('--cache', p.cacheDir);
  if (p.devices?.length) args.push('--device', p.devices.join(','));
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const tail: string[] = [];
  const onLine = (line: string) => {
    tail.push(line);
    if (tail.length > 20) tail.shift();
    try {
      p.onLog?.(line);
    } catch {
      // A throwing log callback must not take the server down with it.
    }
  };
  // Always drained: a full pipe would block the server's printf and with it the server.
  for (const stream of [child.stdout!, child.stderr!]) {
    let buffered = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffered += chunk;
      let i;
      while ((i = buffered.indexOf('\n')) >= 0) {
        onLine(buffered.slice(0, i));
        buffered = buffered.slice(i + 1);
      }
    });
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // Not waiting on the child or its pipes: a script that never calls close() still exits, and the child
  // follows it (it exits when its IPC channel closes).
  const unref = () => {
    child.unref();
    child.channel?.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stderr as unknown as { unref?: () => void }).unref?.();
  };
  const devices = await new Promise<RpcDevice[]>((resolve, reject) => {
    const onMessage = (m: { type?: string; devices?: RpcDevice[] }) => {
      if (m?.type === 'ready') {
        cleanup();
        resolve(m.devices ?? []);
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      cleanup();
      reject(new RpcServerError(
        `The RPC server on ${p.host}:${p.port} did not start (${signal ? `signal ${signal}` : `exit code ${code}`})` +
          (tail.length ? `:\n${tail.join('\n')}` : ''),
      ));
    };
    const onError = (error: Error) => {
      cleanup();
      reject(new RpcServerError(`Could not start the RPC server process: ${error.message}`, { cause: error }));
    };
    const cleanup = () => {
      child.off('message', onMessage);
      child.off('exit', onExit);
      child.off('error', onError);
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.once('error', onError);
  });
  unref();
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    })());
  return {
    endpoint: `${p.host}:${p.port}`,
    host: p.host,
    port: p.port,
    pid: child.pid!,
    devices,
    exited,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * @internal The server in this process, for `huozi-gguf rpc-server`: resolves once it accepts connections.
 * It cannot be stopped but by ending the process. `stopped` resolves with the reason if it ever gives up.
 */
export async function serveRpc(options?: RpcServerOptions): Promise<{ endpoint: string; devices: RpcDevice[]; stopped: Promise<string> }> {
  const p = serverParams(options);
  if (p.cacheDir !== undefined) mkdirSync(p.cacheDir, { recursive: true });
  // Bind once ourselves for a clear reason (port in use, address not on this machine): ggml-rpc only says
  // "Failed to create server socket".
  await new Promise<void>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (error: NodeJS.ErrnoException) => {
      const why = error.code === 'EADDRINUSE' ? `port ${p.port} is already in use`
        : error.code === 'EADDRNOTAVAIL' ? `${p.host} is not an address of this machine`
        : error.code === 'EACCES' ? `no permission to listen on port ${p.port}`
        : error.message;
      reject(new RpcServerError(`Cannot listen on ${p.host}:${p.port}: ${why}`, { cause: error }));
    });
    probe.listen({ host: p.host, port: p.port, exclusive: true }, () => probe.close(() => resolve()));
  });
  const endpoint = `${p.host}:${p.port}`;
  let stop!: (why: string) => void;
  const stopped = new Promise<string>((resolve) => (stop = resolve));
  const { devices } = binding().rpcStartServer(endpoint, p.cacheDir ?? null, p.threads, p.devices ?? null, (why) => stop(why));
  // Ready when it answers the handshake: the server prints nothing once it listens.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const outcome = await Promise.race([
      probeRpcServer(p.host, p.port, 1000).then(() => 'ready' as const, () => 'retry' as const),
      stopped.then((why) => why),
    ]);
    if (outcome === 'ready') break;
    if (outcome !== 'retry') throw new RpcServerError(outcome);
    if (Date.now() > deadline) throw new RpcServerError(`The RPC server on ${endpoint} did not answer within 30 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { endpoint, devices, stopped };
}

/**
 * Connects to a llama.cpp RPC server and does the protocol's HELLO handshake (what ggml-rpc's
 * negotiate_hello sends: command 14 with 24 zero capability bytes; the answer is 8 bytes of size, then
 * major, minor, patch, padding and 24 capability bytes), then disconnects. Rejects with why it failed.
 */
export function probeRpcServer(host: string, port: number, timeoutMs = HELLO_TIMEOUT_MS): Promise<{ version: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, family: 4 });
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (error: Error | undefined, version?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve({ version: version! });
    };
    const timer = setTimeout(
      () => finish(new Error(
        socket.connecting ? `no connection within ${timeoutMs / 1000} s`
          : `no answer to the RPC handshake within ${timeoutMs / 1000} s (not a llama.cpp RPC server, or one busy with another client: it serves one at a time)`,
      )),
      timeoutMs,
    );
    socket.setNoDelay(true);
    socket.once('connect', () => {
      const hello = Buffer.alloc(1 + 8 + 24);
      hello[0] = 14; // RPC_CMD_HELLO
      hello.writeBigUInt64LE(24n, 1);
      socket.write(hello);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 8) return;
      const size = received.readBigUInt64LE(0);
      if (size !== 28n) return finish(new Error(`its answer to the RPC handshake is not a llama.cpp RPC server's (a reply of ${size} bytes, not 28)`));
      if (received.length < 8 + 28) return;
      const [major, minor, patch] = [received[8], received[9], received[10]];
      const version = `${major}.${minor}.${patch}`;
      if (major !== PROTO_MAJOR || minor > PROTO_MINOR) {
        return finish(new Error(`it speaks RPC protocol ${version}; this build needs ${PROTO_MAJOR}.x with x <= ${PROTO_MINOR} (use the same llama.cpp version on both sides)`));
      }
      finish(undefined, version);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      const why = error.code === 'ECONNREFUSED' ? 'connection refused (is `huozi-gguf rpc-server` running there?)'
        : error.code === 'ENOTFOUND' ? 'unknown host'
        : error.message;
      finish(new Error(why));
    });
    socket.once('close', () => finish(new Error('it closed the connection during the RPC handshake: not a compatible llama.cpp RPC server')));
  });
}

/** Endpoints in use by this process's live models: their connection is held open, so they are not probed. */
const inUse = new Map<string, number>();

/** @internal For loadModel: checks the shape of `rpcServers` ("host:port" each). */
export function validateRpcServers(value: unknown): { host: string; port: number }[] {
  if (!Array.isArray(value)) throw v.typeError('array of "host:port" strings', 'rpcServers', value);
  if (value.length > RPC_MAX_SERVERS) throw v.rangeError(`at most ${RPC_MAX_SERVERS} servers`, 'rpcServers', value);
  return value.map((entry, i) => {
    const name = `rpcServers[${i}]`;
    v.string(name, entry);
    // ggml-rpc's parse_endpoint splits at the first ':': no IPv6 literals.
    const m = /^([A-Za-z0-9._-]+):(\d{1,5})$/.exec(entry as string);
    const port = m ? Number(m[2]) : 0;
    if (!m || port < 1 || port > 65535) throw v.rangeError('"host:port" with an IPv4 address or host name and a port from 1 to 65535', name, entry);
    return { host: m[1], port };
  });
}

/**
 * @internal For loadModel: resolves the host names (IPv4, as ggml-rpc's gethostbyname does) and makes sure
 * each server answers the handshake. Returns "address:port" strings for the addon.
 */
export async function prepareRpcServers(servers: { host: string; port: number }[]): Promise<string[]> {
  const endpoints = await Promise.all(
    servers.map(async ({ host, port }) => {
      try {
        return `${isIPv4(host) ? host : (await lookup(host, { family: 4 })).address}:${port}`;
      } catch (error) {
        throw new ModelLoadError(`Cannot use the RPC server ${host}:${port}: cannot resolve ${host}`, { cause: error });
      }
    }),
  );
  const seen = new Set<string>();
  for (const [i, e] of endpoints.entries()) {
    // Two connections to one server would wait on each other: it serves one client at a time.
    if (seen.has(e)) throw v.rangeError(`each server once (${e} is listed twice)`, `rpcServers[${i}]`, `${servers[i].host}:${servers[i].port}`);
    seen.add(e);
  }
  await Promise.all(
    endpoints.map(async (endpoint, i) => {
      if (inUse.has(endpoint)) return;
      const { host, port } = servers[i];
      try {
        await probeRpcServer(endpoint.slice(0, endpoint.lastIndexOf(':')), port);
      } catch (error) {
        const shown = endpoint === `${host}:${port}` ? endpoint : `${host}:${port} (${endpoint})`;
        throw new ModelLoadError(`Cannot use the RPC server ${shown}: ${(error as Error).message}`, { cause: error });
      }
    }),
  );
  return endpoints;
}

/** @internal A model holds connections to these endpoints until it is disposed. */
export function retainRpcServers(endpoints: string[]): () => void {
  for (const e of endpoints) inUse.set(e, (inUse.get(e) ?? 0) + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    for (const e of endpoints) {
      const n = (inUse.get(e) ?? 1) - 1;
      if (n > 0) inUse.set(e, n);
      else inUse.delete(e);
    }
  };
}
