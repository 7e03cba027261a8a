import { availableParallelism } from 'node:os';
import { binding, type SystemInfo } from './binding.js';

/** Which backend the loaded addon was built for, and what llama.cpp detected on this machine. */
export function systemInfo(): SystemInfo {
  return binding().systemInfo();
}

/** The default thread count: every core this process may run on (not node-llama-cpp's fixed minimum of 4). */
export function defaultThreads(): number {
  return Math.max(1, availableParallelism());
}
