// llama.cpp's RPC backend on loopback, as CI runs it (two CPU rpc-servers, no GPU): huozi-tiny with its layers
// on the servers generates the same greedy tokens as a local load, and every bad endpoint is a typed error.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expertPattern, loadModel, ModelLoadError, planMemory, RpcServerError, startRpcServer, type Model } from '../../dist/index.js';
import { compareGreedyWithHf, EOU, f16Path, reference, root, teacherForcedRows } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');
const typeErr = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeErr = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface CliServer {
  child: ChildProcess;
  endpoint: string;
  log: string[];
}

/** `huozi-gguf rpc-server` as a user starts it, with ggml-rpc's debug log (every buffer it allocates). */
async function spawnCliServer(): Promise<CliServer> {
  const port = await freePort();
  const child = spawn(process.execPath, [cli, 'rpc-server', '--port', String(port), '-t', '1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, GGML_RPC_DEBUG: '1', HUOZI_LOG: 'debug' },
  });
  const log: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buffered = '';
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      log.push(...lines);
      if (lines.some((l) => l.includes('rpc-server: listening on'))) resolve();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`rpc-server exited with ${code}:\n${log.join('\n')}`)));
  });
  return { child, endpoint: `127.0.0.1:${port}`, log };
}

/** Bytes of the buffers a server allocated for its client (ggml-rpc's "[alloc_buffer] ... size: N" lines). */
function allocated(server: CliServer): number {
  return server.log
    .map((l) => /\[alloc_buffer\] device: \d+, size: (\d+) -> remote_ptr/.exec(l))
    .reduce((sum, m) => sum + (m ? Number(m[1]) : 0), 0);
}

const servers: CliServer[] = [];
afterAll(() => {
  for (const s of servers) s.child.kill('SIGKILL');
});

describe('layers on two CPU rpc-servers', () => {
  let local: Model;
  let remote: Model;
  beforeAll(async () => {
    servers.push(await spawnCliServer(), await spawnCliServer());
    local = await loadModel(f16Path);
    remote = await loadModel(f16Path, { rpcServers: servers.map((s) => s.endpoint), gpuLayers: 'max' });
  });
  afterAll(async () => {
    await remote?.dispose();
    await local?.dispose();
  });

  it('puts the weights on both servers', () => {
    // huozi-tiny f16: 12.5 MiB of weights, of which the token embeddings (1 MiB) stay on the CPU; llama.cpp
    // splits the 4 layers and the output by the servers' free memory.
    const [a, b] = servers.map(allocated);
    expect(a).toBeGreaterThan(2 * 2 ** 20);
    expect(b).toBeGreaterThan(2 * 2 ** 20);
    expect(a + b).toBeGreaterThan(11 * 2 ** 20);
  });

  it('leaves a core to the devices by default when they hold weights (defaultThreads)', async () => {
    const cores = availableParallelism();
    const remoteContext = await remote.createContext({ contextSize: 256 });
    const localContext = await local.createContext({ contextSize: 256 });
    expect(remoteContext.threads).toBe(Math.max(1, cores - 1));
    expect(localContext.threads).toBe(cores);
    await remoteContext.dispose();
    await localContext.dispose();
  });

  // 32 tokens per prompt: every step is a round trip to both servers, slow on a loaded 2-core machine.
  it('generates the same greedy tokens as a local load', { timeout: 120_000 }, async () => {
    const localContext = await local.createContext({ contextSize: 512, threads: 2 });
    const remoteContext = await remote.createContext({ contextSize: 512, threads: 2 });
    for (const g of reference.greedy) {
      const options = { temperature: 0, maxTokens: 32, stopTokens: [EOU] };
      const a = await localContext.generate(g.prompt_ids, options).result;
      const b = await remoteContext.generate(g.prompt_ids, options).result;
      expect(b.tokens).toEqual(a.tokens);
      // And against HF: every step of HF's first 32 tokens, teacher-forced through the servers (near-ties may
      // go either way: compareGreedyWithHf in test/helpers.ts).
      const steps = Math.min(32, g.output_ids.length);
      const hf = { output_ids: g.output_ids.slice(0, steps), top2_margins: g.top2_margins.slice(0, steps) };
      const c = compareGreedyWithHf(hf, b.tokens, await teacherForcedRows(remoteContext, remote.vocabularySize, g, steps));
      expect(c.problems).toEqual([]);
      expect(c.steps).toBe(steps);
    }
    await remoteContext.dispose();
    await localContext.dispose();
  });
});

describe('expert placement with RPC servers standing in for GPUs (issue #17)', () => {
  const endpoints = () => servers.slice(0, 2).map((s) => s.endpoint);
  const onDevices = (rows: { name: string; model: number }[]) => rows.filter((r) => r.name !== 'host').reduce((a, r) => a + r.model, 0);

  it('estimateMemory with cpuMoe: less on the devices by the experts, more in host memory', async () => {
    const all = await planMemory(f16Path, { rpcServers: endpoints(), gpuLayers: 'max', contextSize: 512 });
    const moe = await planMemory(f16Path, { rpcServers: endpoints(), gpuLayers: 'max', contextSize: 512, cpuMoe: 'all' });
    const first = await planMemory(f16Path, { rpcServers: endpoints(), gpuLayers: 'max', contextSize: 512, cpuMoe: 2 });
    // huozi-tiny f16: 8 experts × 3 matrices per layer are most of its 12.5 MiB.
    expect(onDevices(all.devices)).toBeGreaterThan(10 * 2 ** 20);
    expect(onDevices(moe.devices)).toBeLessThan(onDevices(all.devices) / 2);
    expect(onDevices(first.devices)).toBeLessThan(onDevices(all.devices));
    expect(onDevices(first.devices)).toBeGreaterThan(onDevices(moe.devices));
    expect(moe.devices.at(-1)!.model).toBeGreaterThan(all.devices.at(-1)!.model);
    // The plan's cost: what is left in host memory, what a token reads from there (a quarter of the experts).
    expect(moe.plan!.cost.hostBytes).toBeGreaterThan(all.devices.at(-1)!.model);
    expect(moe.plan!.cost.hostBytesPerToken).toBeLessThan(moe.plan!.cost.hostBytes / 3);
    expect(moe.plan!.cost.deviceBytes).toBeGreaterThan(0);
  });

  it('a load with cpuMoe keeps the experts off the servers and answers the same', { timeout: 120_000 }, async () => {
    const before = servers.slice(0, 2).map(allocated);
    const model = await loadModel(f16Path, { rpcServers: endpoints(), gpuLayers: 'max', cpuMoe: 'all' });
    const after = servers.slice(0, 2).map(allocated);
    const sent = after[0] - before[0] + after[1] - before[1];
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(6 * 2 ** 20);
    const device = model.createContext({ contextSize: 512, threads: 2 });
    const localModel = await loadModel(f16Path);
    const hostContext = await localModel.createContext({ contextSize: 512, threads: 2 });
    const context = await device;
    const g = reference.greedy[0];
    const options = { temperature: 0, maxTokens: 24, stopTokens: [EOU] };
    expect((await context.generate(g.prompt_ids, options).result).tokens).toEqual((await hostContext.generate(g.prompt_ids, options).result).tokens);
    await context.dispose();
    await hostContext.dispose();
    await localModel.dispose();
    await model.dispose();
  });

  it('tensorOverrides name a server\'s device as estimateMemory lists it', async () => {
    const { devices } = await planMemory(f16Path, { rpcServers: endpoints(), gpuLayers: 'max', contextSize: 512 });
    const [a, b] = devices.filter((r) => r.name !== 'host').map((r) => r.name);
    // Every layer's experts on the second server, whatever the split said.
    const moved = await planMemory(f16Path, {
      rpcServers: endpoints(), gpuLayers: 'max', contextSize: 512, tensorOverrides: [{ pattern: expertPattern(), device: b }],
    });
    const on = (rows: typeof devices, name: string) => rows.find((r) => r.name === name)!.model;
    expect(on(moved.devices, b)).toBeGreaterThan(on(devices, b));
    expect(on(moved.devices, a)).toBeLessThan(on(devices, a));
    expect(moved.plan!.overrides).toEqual([{ pattern: expertPattern(), buffer: b }]);
  });
});

describe('bad endpoints are typed errors, never an abort or a hang', () => {
  let silent: Server;
  let foreign: Server;
  beforeAll(async () => {
    // Accepts and never answers; answers like an HTTP server.
    silent = createServer(() => {}).listen(0, '127.0.0.1');
    foreign = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n')).listen(0, '127.0.0.1');
  });
  afterAll(() => {
    silent.close();
    foreign.close();
  });
  const portOf = (s: Server) => (s.address() as AddressInfo).port;

  it('rejects malformed rpcServers before touching the network', async () => {
    await expect(loadModel(f16Path, { rpcServers: '127.0.0.1:50052' as never })).rejects.toMatchObject(typeErr);
    await expect(loadModel(f16Path, { rpcServers: [50052 as never] })).rejects.toMatchObject(typeErr);
    for (const bad of ['127.0.0.1', '127.0.0.1:', ':50052', '127.0.0.1:0', '127.0.0.1:65536', '[::1]:50052', 'a b:1', 'h:1:2']) {
      await expect(loadModel(f16Path, { rpcServers: [bad] })).rejects.toMatchObject({
        ...rangeErr,
        message: expect.stringContaining('"host:port"'),
      });
    }
    await expect(loadModel(f16Path, { rpcServers: Array(17).fill('127.0.0.1:1') })).rejects.toMatchObject(rangeErr);
    await expect(loadModel(f16Path, { rpcServers: ['127.0.0.1:1'], gpuLayers: 'auto' })).rejects.toMatchObject(rangeErr);
  });

  it('names an endpoint that refuses the connection', async () => {
    const port = await freePort();
    const error = await loadModel(f16Path, { rpcServers: [`127.0.0.1:${port}`] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as Error).message).toContain(`127.0.0.1:${port}: connection refused`);
  });

  it('names an endpoint that is not an RPC server', async () => {
    const error = await loadModel(f16Path, { rpcServers: [`127.0.0.1:${portOf(foreign)}`] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as Error).message).toMatch(/not a llama\.cpp RPC server/);
  });

  it('gives up on one that never answers the handshake (10 s)', async () => {
    const error = await loadModel(f16Path, { rpcServers: [`127.0.0.1:${portOf(silent)}`] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as Error).message).toMatch(/no answer to the RPC handshake within 10 s/);
  }, 20_000);

  it('names a host that does not resolve', async () => {
    const error = await loadModel(f16Path, { rpcServers: ['no-such-host.invalid:50052'] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as Error).message).toContain('no-such-host.invalid:50052');
  });

  it('refuses one server listed twice (it serves one client at a time: the load would wait forever)', async () => {
    const s = await startRpcServer({ port: await freePort(), threads: 1 });
    try {
      await expect(loadModel(f16Path, { rpcServers: [s.endpoint, `localhost:${s.port}`] })).rejects.toMatchObject(rangeErr);
    } finally {
      await s.close();
    }
  });
});

describe('startRpcServer and the rpc-server command', () => {
  it('starts a server in a child process, lists its devices and stops it with close()', async () => {
    const port = await freePort();
    const lines: string[] = [];
    const server = await startRpcServer({ port, threads: 1, onLog: (l) => lines.push(l) });
    expect(server.endpoint).toBe(`127.0.0.1:${port}`);
    expect(server.devices.map((d) => d.name)).toEqual(['CPU']);
    expect(lines.join('\n')).toContain(`endpoint       : 127.0.0.1:${port}`);
    // The port is taken: a second server says so.
    await expect(startRpcServer({ port, threads: 1 })).rejects.toThrow(RpcServerError);
    await expect(startRpcServer({ port, threads: 1 })).rejects.toThrow(/port \d+ is already in use/);
    await server.close();
    await server.exited;
    const model = loadModel(f16Path, { rpcServers: [server.endpoint] });
    await expect(model).rejects.toThrow(/connection refused/);
  });

  it('throws on invalid arguments', async () => {
    await expect(startRpcServer({ host: 'localhost' })).rejects.toMatchObject(rangeErr);
    await expect(startRpcServer({ host: '::1' })).rejects.toMatchObject(rangeErr);
    await expect(startRpcServer({ port: 0 })).rejects.toMatchObject(rangeErr);
    await expect(startRpcServer({ threads: 0 })).rejects.toMatchObject(rangeErr);
    await expect(startRpcServer({ devices: 'CPU' as never })).rejects.toMatchObject(typeErr);
    await expect(startRpcServer({ prot: 1 } as never)).rejects.toThrow('Did you mean "port"?');
    await expect(startRpcServer({ port: await freePort(), devices: ['CUDA7'] })).rejects.toThrow(/no device named "CUDA7"/);
  });

  it("prints llama.cpp's warning for a host beyond loopback", async () => {
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning, then a clean failure, nothing exposed.
    const child = spawn(process.execPath, [cli, 'rpc-server', '--host', '192.0.2.1', '--port', String(await freePort())], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const code = await new Promise((resolve) => child.once('exit', resolve));
    expect(code).toBe(1);
    expect(stderr).toContain("WARNING: Host ('192.0.2.1') is != '127.0.0.1'");
    expect(stderr).toContain('Never expose the RPC server to an open network!');
    expect(stderr).toContain('192.0.2.1 is not an address of this machine');
  });
});

describe('a server that dies mid-generation', () => {
  it("ends the client process with llama.cpp's abort (ggml-rpc cannot recover; docs/gpu.md)", async () => {
    // In a child process: this is the documented limitation, not something a test worker survives.
    const script = `
      import { loadModel, startRpcServer } from ${JSON.stringify(join(root, 'dist', 'index.js'))};
      const s = await startRpcServer({ port: ${await freePort()}, threads: 1 });
      const m = await loadModel(${JSON.stringify(f16Path)}, { rpcServers: [s.endpoint] });
      const c = await m.createContext({ contextSize: 4096, threads: 1 });
      const g = c.generate([1, 100, 200], { temperature: 0, maxTokens: 4000, stopAtEog: false });
      let n = 0;
      for await (const _ of g) if (++n === 5) process.kill(s.pid, 'SIGKILL');
      console.log('survived');
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (c: Buffer) => (output += c.toString('utf8')));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString('utf8')));
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
      child.once('exit', (c, s) => resolve([c, s])),
    );
    expect(output).toContain('Remote RPC server crashed or returned malformed response');
    expect(output).not.toContain('survived');
    expect({ code, signal }).toEqual({ code: null, signal: 'SIGABRT' });
  });
});
