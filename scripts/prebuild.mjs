#!/usr/bin/env node
// Builds the prebuilt binaries that `npm install huozi-gguf` uses without compiling anything.
//
//   npm run prebuilds                                  CPU: prebuilds/linux-x64/ in this package
//   npm run prebuilds -- --gpu cuda --cuda-arch 90     CUDA: packages/linux-x64-cuda/ (@huozi-gguf/linux-x64-cuda)
//
// (The npm script is "prebuilds", not "prebuild": npm would run a "prebuild" script before every `npm run build`.)
//
// Options: --gpu cpu|cuda, --cuda-arch "90;89" (env HUOZI_CUDA_ARCHITECTURES), --jobs N (env HUOZI_BUILD_JOBS,
// default: all cores), --cpu-variants all|baseline (default all), --native-tools (also llama-quantize,
// llama-bench, llama-imatrix, llama-perplexity and llama-embedding from the same libraries, into .build/prebuild-<gpu>/bin),
// --configure-only, --check (only check
// that prebuilds/linux-x64 is complete and loadable elsewhere: npm's prepack).
//
// Unlike `npm run build` (one static addon, -march=native, for this machine only), this builds with
// CMakeLists.txt's HUOZI_BACKEND_DL: llama.cpp as shared libraries and ggml's backends as modules loaded at run
// time from the addon's folder (RPATH $ORIGIN). With --cpu-variants all (GGML_CPU_ALL_VARIANTS) there is one CPU
// backend per x86 feature level, from SSE4.2 to AVX-512/AMX, and ggml loads the best one this CPU runs; with
// baseline, one CPU backend for x86-64 with AVX2/FMA/F16C (ggml's defaults when GGML_NATIVE is off).
// The build lives in .build/prebuild-<gpu>, never in the developer build (.build/cmake, build/Release).
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import {
  copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    gpu: { type: 'string', default: 'cpu' },
    'cuda-arch': { type: 'string' },
    jobs: { type: 'string' },
    'cpu-variants': { type: 'string', default: 'all' },
    'native-tools': { type: 'boolean', default: false },
    'configure-only': { type: 'boolean', default: false },
    check: { type: 'boolean', default: false },
  },
});

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(2);
}

// --check (npm's prepack): a tarball without the CPU prebuild would install and then fail at the first model.
if (values.check) {
  const dir = join(root, 'prebuilds', 'linux-x64');
  if (!existsSync(join(dir, 'node.napi.glibc.node'))) {
    fail('prebuilds/linux-x64 has no addon: run `npm run prebuilds` before npm pack or npm publish');
  }
  checkNeeded(dir);
  process.exit(0);
}

const gpu = values.gpu.toLowerCase();
if (!['cpu', 'cuda'].includes(gpu)) fail(`Expected --gpu to be cpu or cuda but received "${values.gpu}"`);
if (!['all', 'baseline'].includes(values['cpu-variants'])) {
  fail(`Expected --cpu-variants to be all or baseline but received "${values['cpu-variants']}"`);
}
const jobs = Number(values.jobs ?? process.env.HUOZI_BUILD_JOBS ?? availableParallelism());
if (!Number.isInteger(jobs) || jobs < 1) fail(`Expected --jobs to be a positive integer but received "${values.jobs}"`);
if (process.platform !== 'linux' || process.arch !== 'x64') {
  fail(`prebuilds are made for linux-x64 only (this is ${process.platform}-${process.arch}); use npm run build`);
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

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const out = join(root, '.build', `prebuild-${gpu}`);
const defines = {
  CMAKE_BUILD_TYPE: 'Release',
  HUOZI_GPU: gpu,
  HUOZI_BACKEND_DL: 'ON',
  HUOZI_CPU_ALL_VARIANTS: values['cpu-variants'] === 'all' ? 'ON' : 'OFF',
  HUOZI_NATIVE_TOOLS: values['native-tools'] ? 'ON' : 'OFF',
};
const cudaArch = values['cuda-arch'] ?? process.env.HUOZI_CUDA_ARCHITECTURES;
if (gpu === 'cuda') {
  if (!cudaArch) fail('--gpu cuda needs --cuda-arch (e.g. 90 for H100/H200, "80;86;89;90" for several)');
  defines.CMAKE_CUDA_ARCHITECTURES = cudaArch;
}

const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const env = { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: String(jobs) };
const cmakeArgs = (command) => {
  const args = [cmakeJs, command, '--out', out, '--config', 'Release', '--log-level', 'warn'];
  if (command !== 'configure') args.push('--parallel', String(jobs));
  for (const [k, v] of Object.entries(defines)) args.push(`--CD${k}=${v}`);
  return args;
};
// ggml's backend modules from an earlier build with other options (say all CPU variants, then baseline) would
// be copied along: remove them, the build relinks what this configuration has.
if (existsSync(join(out, 'bin'))) {
  for (const f of readdirSync(join(out, 'bin'))) {
    if (/^libggml-[\w-]+\.so$/.test(f) && lstatSync(join(out, 'bin', f)).isFile()) rmSync(join(out, 'bin', f));
  }
}
const started = Date.now();
console.log(`prebuild: backend=${gpu} cpu-variants=${values['cpu-variants']} jobs=${jobs}${cudaArch ? ` cuda-arch=${cudaArch}` : ''} in ${out}`);
// Configure every time (a few seconds): cmake-js compile configures only a fresh folder, so a second build there
// with another --cuda-arch or --cpu-variants kept the first one's cache and silently built the old options.
const c = spawnSync(process.execPath, cmakeArgs('configure'), { stdio: 'inherit', cwd: root, env });
if (c.status !== 0) process.exit(c.status ?? 1);
if (values['configure-only']) process.exit(0);
const r = spawnSync(process.execPath, cmakeArgs('build'), { stdio: 'inherit', cwd: root, env });
if (r.status !== 0) process.exit(r.status ?? 1);
if (values['native-tools']) {
  // The tools the tests and benchmarks compare with (scripts/native-tools.mjs finds them in .build/prebuild-<gpu>/bin).
  const t = spawnSync('cmake', ['--build', out, '--parallel', String(jobs), '--target', 'llama-quantize', 'llama-bench', 'llama-imatrix', 'llama-perplexity', 'llama-embedding'], { stdio: 'inherit', env });
  if (t.status !== 0) process.exit(t.status ?? 1);
}

// The addon and every shared object it needs, under the names the dynamic linker asks for (the SONAMEs, e.g.
// libllama.so.0), as plain files: npm pack drops symbolic links.
const dest = gpu === 'cpu' ? join(root, 'prebuilds', 'linux-x64') : join(root, 'packages', 'linux-x64-cuda', 'bin');
rmSync(dest, { recursive: true, force: true });
mkdirSync(dest, { recursive: true });
const addonName = gpu === 'cpu' ? 'node.napi.glibc.node' : 'huozi_gguf.node';
copyFileSync(join(out, 'Release', 'huozi_gguf.node'), join(dest, addonName));
const bin = join(out, 'bin');
for (const name of readdirSync(bin).sort()) {
  const path = join(bin, name);
  // libfoo.so.0 (a SONAME, usually a link to libfoo.so.0.1.2) and modules without a version (libggml-cpu-haswell.so).
  const soname = /^lib[\w.-]+\.so\.\d+$/.test(name);
  const module = /^libggml-[\w-]+\.so$/.test(name) && lstatSync(path).isFile();
  if (soname || module) copyFileSync(realpathSync(path), join(dest, name));
}
strip(dest);
checkNeeded(dest);

if (gpu === 'cuda') {
  // The CUDA package carries the same version as this one; the main package lists it in optionalDependencies.
  const file = join(root, 'packages', 'linux-x64-cuda', 'package.json');
  const cudaPkg = JSON.parse(readFileSync(file, 'utf8'));
  if (cudaPkg.version !== pkg.version) {
    cudaPkg.version = pkg.version;
    writeFileSync(file, `${JSON.stringify(cudaPkg, null, 2)}\n`);
  }
  copyFileSync(join(root, 'LICENSE'), join(root, 'packages', 'linux-x64-cuda', 'LICENSE'));
  writeFileSync(join(dest, 'BUILD.json'), `${JSON.stringify({ cudaArchitectures: cudaArch, built: new Date().toISOString() }, null, 2)}\n`);
}

let bytes = 0;
const files = readdirSync(dest);
for (const f of files) bytes += statSync(join(dest, f)).size;
console.log(`prebuild: ${files.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB in ${dest} (${((Date.now() - started) / 60000).toFixed(1)} min)`);

// Release builds have no debug information, but the symbol tables are still large; keep the dynamic ones.
function strip(dir) {
  if (spawnSync('strip', ['--version'], { stdio: 'ignore' }).status !== 0) return;
  for (const f of readdirSync(dir)) {
    if (/\.(node|so(\.\d+)?)$/.test(f)) spawnSync('strip', ['--strip-unneeded', join(dir, f)], { stdio: 'inherit' });
  }
}

// Every library the addon and its libraries need is either in the folder or a system library; a missing one
// would only show on a user's machine.
function checkNeeded(dir) {
  if (spawnSync('readelf', ['--version'], { stdio: 'ignore' }).status !== 0) return;
  const present = new Set(readdirSync(dir));
  const system = /^(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libgomp|ld-linux-x86-64|libcuda|libcudart|libcublas|libcublasLt)\.so/;
  const problems = [];
  for (const f of present) {
    if (!/\.(node|so(\.\d+)?)$/.test(f)) continue;
    const dyn = spawnSync('readelf', ['-d', join(dir, f)], { encoding: 'utf8' }).stdout;
    for (const [, lib] of dyn.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)) {
      if (!present.has(lib) && !system.test(lib)) problems.push(`${f} needs ${lib}`);
    }
    if (/\.node$/.test(f) && !/\$ORIGIN/.test(dyn)) problems.push(`${f} has no RUNPATH $ORIGIN`);
  }
  if (problems.length) fail(`the prebuild would not load on another machine:\n  ${problems.join('\n  ')}`);
}
