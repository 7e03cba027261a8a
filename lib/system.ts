import { availableParallelism } from 'node:os';
import { binding, type SystemInfo } from './binding.js';

/** Which backend the loaded addon was built for, and what llama.cpp detected on this machine. */
export function systemInfo(): SystemInfo {
  return binding().systemInfo();
}

/**
 * The default thread count: every core this process may run on (not node-llama-cpp's fixed minimum of 4), less
 * one when a GPU or an RPC server holds weights (`offloaded`). The compute threads meet at a barrier many times a
 * token when layers or experts alternate between host and device, and then the driver's own threads need a core:
 * on a 16-core H200 host, 16 threads generated at 6.1-7.2 t/s where 15 gave 9.8-10.6, in llama-bench and in ours
 * alike (q4_0, experts of 25 layers in host memory; docs/gpu.md).
 */
export function defaultThreads(offloaded = false): number {
  const cores = Math.max(1, availableParallelism());
  return offloaded && cores > 1 ? cores - 1 : cores;
}
