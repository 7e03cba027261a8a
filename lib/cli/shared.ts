// What the commands that load a model have in common.
import { demoModelPath } from '../demo.js';
import { loadModel, type Model } from '../model.js';
import type { SamplingOptions } from '../context.js';

export interface ModelCliOptions {
  model?: string;
  ctxSize: number;
  threads?: number;
  gpuLayers: string;
  rpc?: string;
  temp: number;
  topK: number;
  topP: number;
  minP: number;
  repeatPenalty: number;
  seed?: number;
}

export async function loadCliModel(opts: ModelCliOptions): Promise<Model> {
  const path = opts.model ?? demoModelPath;
  if (!opts.model) {
    process.stderr.write('note: no -m given; using the embedded demo model huozi-tiny (6.6M parameters, q4_0)\n');
  }
  const gpuLayers = opts.gpuLayers === 'max' ? 'max' : Number(opts.gpuLayers);
  const rpcServers = opts.rpc?.split(',').map((s) => s.trim()).filter(Boolean);
  return loadModel(path, { gpuLayers, ...(rpcServers?.length ? { rpcServers } : {}) });
}

export function cliSampling(opts: ModelCliOptions): SamplingOptions {
  return {
    temperature: opts.temp,
    topK: opts.topK,
    topP: opts.topP,
    minP: opts.minP,
    repeatPenalty: opts.repeatPenalty,
    ...(opts.seed === undefined ? {} : { seed: opts.seed }),
  };
}

export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
