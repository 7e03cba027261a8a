#!/usr/bin/env node
// Builds the addon (and llama.cpp's libraries with it) from source with cmake-js.
//
//   npm run build                       CPU (default)
//   npm run build -- --gpu cuda         CUDA; architectures from --cuda-arch or CMAKE_CUDA_ARCHITECTURES
//   HUOZI_GPU=cuda npm run build        the same through the environment
//   npm run build -- --gpu metal        Metal (macOS; untested here: no Mac in this project's CI)
//
// Options: --gpu cpu|cuda|metal (env HUOZI_GPU), --cuda-arch "90;89" (env HUOZI_CUDA_ARCHITECTURES),
// --jobs N (env HUOZI_BUILD_JOBS, default: all cores), --portable (no -march=native: for prebuilt binaries),
// --fp16-arith (let ggml sum f16 products in half precision on AVX512-FP16 CPUs: lossy, off by default),
// --native-tools (llama-bench, llama-quantize, llama-imatrix, llama-perplexity and llama-embedding from the same libraries, into
// .build/cmake/bin), --debug.
// The result is build/Release/huozi_gguf.node, which node-gyp-build finds.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { lockTree } from './tree-lock.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    gpu: { type: 'string' },
    'cuda-arch': { type: 'string' },
    jobs: { type: 'string' },
    portable: { type: 'boolean', default: false },
    'native-tools': { type: 'boolean', default: false },
    'fp16-arith': { type: 'boolean', default: false },
    debug: { type: 'boolean', default: false },
  },
});

const gpu = (values.gpu ?? process.env.HUOZI_GPU ?? 'cpu').toLowerCase();
if (!['cpu', 'cuda', 'metal'].includes(gpu)) {
  console.error(`Expected --gpu to be one of cpu, cuda, metal but received "${gpu}"`);
  process.exit(2);
}
const jobs = Number(values.jobs ?? process.env.HUOZI_BUILD_JOBS ?? availableParallelism());
if (!Number.isInteger(jobs) || jobs < 1) {
  console.error(`Expected --jobs to be a positive integer but received "${values.jobs}"`);
  process.exit(2);
}
if (!existsSync(join(root, 'vendor/llama.cpp/include/llama.h'))) {
  const r = spawnSync(process.execPath, [join(root, 'scripts/vendor-llama.mjs')], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
// Our fixes to llama.cpp (scripts/patches/), applied once; a tree that has them already is left alone.
{
  const r = spawnSync(process.execPath, [join(root, 'scripts/patch-llama.mjs')], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const config = values.debug ? 'Debug' : 'Release';
const defines = { HUOZI_GPU: gpu, CMAKE_BUILD_TYPE: config };
if (values.portable) defines.GGML_NATIVE = 'OFF';
if (values['native-tools']) defines.HUOZI_NATIVE_TOOLS = 'ON';
// Passed every time, ON or OFF, so that a cached ON from an earlier build does not stick (see CMakeLists.txt).
defines.HUOZI_FP16_ARITH = values['fp16-arith'] ? 'ON' : 'OFF';
const cudaArch = values['cuda-arch'] ?? process.env.HUOZI_CUDA_ARCHITECTURES ?? process.env.CMAKE_CUDA_ARCHITECTURES;
if (gpu === 'cuda' && cudaArch) defines.CMAKE_CUDA_ARCHITECTURES = cudaArch;

// cmake-js works in .build/cmake so that node-gyp (see binding.gyp), which wipes build/, never shares a tree
// with it; the finished addon is copied to build/Release where node-gyp-build looks.
const out = join(root, '.build', 'cmake');
const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const cmakeArgs = (command) => {
  const args = [cmakeJs, command, '--out', out, '--config', config, '--log-level', 'warn'];
  if (command !== 'configure') args.push('--parallel', String(jobs));
  for (const [k, v] of Object.entries(defines)) args.push(`--CD${k}=${v}`);
  return args;
};
console.log(`building huozi-gguf: backend=${gpu} config=${config} jobs=${jobs}${values.portable ? ' portable' : ''}`);
// One build at a time in this tree (scripts/tree-lock.mjs).
const unlock = lockTree(out);
process.on('exit', unlock);
// Configure every time (a few seconds): `cmake-js compile` configures only a fresh folder, so a second build with
// other options (--fp16-arith, --gpu) silently rebuilt nothing with the first one's cache (as prebuild.mjs found).
const env = { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: String(jobs) };
for (const command of ['configure', 'build']) {
  const r = spawnSync(process.execPath, cmakeArgs(command), { stdio: 'inherit', cwd: root, env });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const built = join(out, config, 'huozi_gguf.node');
const dest = join(root, 'build', 'Release', 'huozi_gguf.node');
mkdirSync(dirname(dest), { recursive: true });
// Copy then rename: processes that have the old addon loaded keep their (unlinked) file intact; overwriting
// it in place would change the pages under them.
copyFileSync(built, `${dest}.tmp`);
renameSync(`${dest}.tmp`, dest);
console.log(`built ${dest}`);
if (values['native-tools']) {
  // llama.cpp's tools that the tests and benchmarks compare with, from the same compiled libraries
  // (.build/cmake/bin; scripts/native-tools.mjs finds them there).
  const tools = ['llama-bench', 'llama-quantize', 'llama-imatrix', 'llama-perplexity', 'llama-embedding'];
  const t = spawnSync('cmake', ['--build', out, '--config', config, '--parallel', String(jobs), '--target', ...tools], { stdio: 'inherit', cwd: root });
  if (t.status !== 0) process.exit(t.status ?? 1);
  console.log(`built ${tools.join(', ')} in ${join(out, 'bin')}`);
}
