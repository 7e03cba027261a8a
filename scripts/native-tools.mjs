#!/usr/bin/env node
// Builds llama.cpp's own command-line tools (llama-bench, llama-quantize, ...) from vendor/llama.cpp into
// build/native, with the same compiler flags as the addon (static, position-independent, native CPU), so
// that benchmarks compare like with like. Used by scripts/bench.mjs and the tests that compare with native.
//
//   node scripts/native-tools.mjs [tool ...]      default: llama-bench llama-quantize
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const nativeDir = join(root, '.build', 'native');

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: root });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed with status ${r.status}`);
}

export function nativeTool(name) {
  return join(nativeDir, 'bin', name);
}

export function buildNativeTools(tools = ['llama-bench', 'llama-quantize'], { gpu = process.env.HUOZI_GPU ?? 'cpu' } = {}) {
  const missing = tools.filter((t) => !existsSync(nativeTool(t)));
  if (missing.length === 0) return;
  const defs = [
    '-DCMAKE_BUILD_TYPE=Release', '-DBUILD_SHARED_LIBS=OFF', '-DCMAKE_POSITION_INDEPENDENT_CODE=ON',
    '-DLLAMA_BUILD_TOOLS=ON', '-DLLAMA_BUILD_TESTS=OFF', '-DLLAMA_BUILD_EXAMPLES=OFF', '-DLLAMA_BUILD_SERVER=ON',
    '-DLLAMA_OPENSSL=OFF', '-DLLAMA_BUILD_APP=OFF',
  ];
  if (gpu === 'cuda') defs.push('-DGGML_CUDA=ON');
  if (process.env.HUOZI_CUDA_ARCHITECTURES) defs.push(`-DCMAKE_CUDA_ARCHITECTURES=${process.env.HUOZI_CUDA_ARCHITECTURES}`);
  if (!existsSync(join(nativeDir, 'CMakeCache.txt'))) {
    sh('cmake', ['-S', join(root, 'vendor', 'llama.cpp'), '-B', nativeDir, ...defs]);
  }
  sh('cmake', ['--build', nativeDir, '--parallel', String(availableParallelism()), '--target', ...tools]);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const tools = process.argv.slice(2);
  buildNativeTools(tools.length ? tools : undefined);
}
