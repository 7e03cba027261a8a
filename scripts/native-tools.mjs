#!/usr/bin/env node
// llama.cpp's own command-line tools (llama-quantize, llama-imatrix, llama-perplexity, llama-embedding, llama-bench, ...) from the
// same compiled libraries as the addon under test, so that a test or a benchmark that compares with native
// llama.cpp compares like with like.
//
// Which tree: the one the addon that lib/binding.ts would load was built in, recognised by its GNU build-id
// (the prebuild's copies are stripped, which keeps the build-id):
//   build/Release/huozi_gguf.node              .build/cmake       (scripts/build.mjs [--native-tools])
//   prebuilds/linux-x64/node.napi.glibc.node   .build/prebuild-cpu (scripts/prebuild.mjs [--native-tools])
//   packages/linux-x64-cuda/bin/huozi_gguf.node .build/prebuild-cuda
//   HUOZI_BINDING=<path>                       whichever of those trees built that file
// HUOZI_NATIVE_TOOLS_DIR=<dir> overrides all of it (the tools are then taken from <dir> as they are, and built
// there only if <dir>/.. is a CMake tree). A tool missing from the tree is built there with
// `cmake --build <tree> --target <tool>` (under the tree's lock, <tree>.lock, which build.mjs also takes).
//
// Fallback: when no tree built the loaded addon (an addon from npm, or one node-gyp built), or that tree was
// configured without llama.cpp's tools (no --native-tools) or lacks the target (llama-server: LLAMA_BUILD_SERVER
// is off in CMakeLists.txt), the tool is built in a separate tree, .build/native, with the same kind of flags
// (static, -march=native). Its libraries are then NOT the addon's; nativeToolsInfo() says so (sameLibraries).
//
//   node scripts/native-tools.mjs [tool ...]      default: llama-bench llama-quantize; prints where they are
import { spawnSync } from 'node:child_process';
import { lockTree } from './tree-lock.mjs';
import {
  copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The separate fallback tree. */
export const nativeDir = join(root, '.build', 'native');

/** The trees our build scripts make, with the addon each one links (relative to the tree). */
const TREES = [
  { tree: join(root, '.build', 'cmake'), addons: ['Release/huozi_gguf.node', 'Debug/huozi_gguf.node'], made: 'scripts/build.mjs --native-tools' },
  { tree: join(root, '.build', 'prebuild-cpu'), addons: ['Release/huozi_gguf.node'], made: 'scripts/prebuild.mjs --native-tools' },
  { tree: join(root, '.build', 'prebuild-cuda'), addons: ['Release/huozi_gguf.node'], made: 'scripts/prebuild.mjs --gpu cuda --native-tools' },
];

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: root });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed with status ${r.status}`);
}

/** The GNU build-id of an ELF file (hex), or undefined. Read from the note itself: no readelf needed. */
const ids = new Map();
export function buildId(path) {
  let data;
  let key;
  try {
    key = `${realpathSync(path)}:${statSync(path).mtimeMs}`;
    if (ids.has(key)) return ids.get(key);
    data = readFileSync(path);
  } catch {
    return undefined;
  }
  ids.set(key, findBuildId(data));
  return ids.get(key);
}

function findBuildId(data) {
  // Elf_Nhdr { namesz = 4, descsz = 20, type = NT_GNU_BUILD_ID (3) } "GNU\0" desc[20], little-endian.
  const header = Buffer.from([4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, 0x47, 0x4e, 0x55, 0]);
  const at = data.indexOf(header);
  return at < 0 ? undefined : data.subarray(at + 16, at + 36).toString('hex');
}

/**
 * The addon lib/binding.ts would load, found without loading it: HUOZI_BINDING, else build/Release, else
 * prebuilds/<platform>-<arch>/ (the CUDA package is left out: pass its path explicitly).
 */
export function expectedAddon() {
  if (process.env.HUOZI_BINDING) return process.env.HUOZI_BINDING;
  const source = join(root, 'build', 'Release', 'huozi_gguf.node');
  if (existsSync(source)) return source;
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  try {
    const f = readdirSync(dir).find((x) => x.endsWith('.node') && !x.includes('.musl.'));
    if (f) return join(dir, f);
  } catch {
    // no prebuilds
  }
  return undefined;
}

const isTree = (dir) => existsSync(join(dir, 'CMakeCache.txt'));

/**
 * Where the native tools come from for `addon` (default: expectedAddon()). Returns `{ bin, tree, sameLibraries,
 * why }`: `tree` is the CMake tree to build missing tools in (null: take bin as it is), `sameLibraries` whether
 * they link the same compiled llama.cpp as the addon, `why` one line saying how this was decided.
 */
export function nativeToolsInfo(addon = expectedAddon()) {
  const override = process.env.HUOZI_NATIVE_TOOLS_DIR;
  if (override) {
    const bin = resolve(override);
    return {
      bin, tree: isTree(dirname(bin)) ? dirname(bin) : null, sameLibraries: true,
      why: `HUOZI_NATIVE_TOOLS_DIR=${override} (trusted to match the addon)`,
    };
  }
  const fallback = (why) => ({ bin: join(nativeDir, 'bin'), tree: nativeDir, sameLibraries: false, why });
  if (!addon || !existsSync(addon)) return fallback('no addon found to match: using the separate tree .build/native');
  const id = buildId(addon);
  const real = realpathSync(addon);
  for (const t of TREES) {
    for (const a of t.addons) {
      const built = join(t.tree, a);
      if (!existsSync(built)) continue;
      if (realpathSync(built) === real || (id !== undefined && buildId(built) === id)) {
        if (!isTree(t.tree)) continue;
        const why = `${addon} was built in ${t.tree} (build-id ${id})`;
        // The tree may have rebuilt its libraries since it linked the addon (a changed CMakeLists.txt, say).
        const newer = librariesIn(t.tree).filter((lib) => statSync(lib).mtimeMs > statSync(built).mtimeMs);
        if (newer.length > 0) {
          return {
            bin: join(t.tree, 'bin'), tree: t.tree, sameLibraries: false,
            why: `${why}, but its libraries changed since (${newer.map((f) => f.slice(t.tree.length + 1)).join(', ')}): rebuild the addon (${t.made})`,
          };
        }
        // A prebuild: the addon's folder holds (stripped) copies of the shared libraries and CPU backends it loads;
        // the tools load the tree's. Their build-ids must agree.
        const copies = readdirSync(dirname(real)).filter((f) => /^lib[\w.-]+\.so(\.\d+)*$/.test(f));
        const differ = copies.filter((f) => existsSync(join(t.tree, 'bin', f)) && buildId(join(dirname(real), f)) !== buildId(join(t.tree, 'bin', f)));
        if (differ.length > 0) {
          return {
            bin: join(t.tree, 'bin'), tree: t.tree, sameLibraries: false,
            why: `${why}, but ${differ.join(', ')} next to it differ from the tree's: rebuild the addon (${t.made})`,
          };
        }
        return { bin: join(t.tree, 'bin'), tree: t.tree, sameLibraries: true, why: copies.length ? `${why}; its ${copies.length} shared libraries match the tree's` : why };
      }
    }
  }
  return fallback(`no build tree here built ${addon} (build-id ${id}): using the separate tree .build/native, other libraries than the addon's`);
}

/** llama.cpp's libraries in a tree: static archives (the source build) or shared objects (the prebuild). */
function librariesIn(tree) {
  const found = [];
  const walk = (dir, depth) => {
    let entries;
    try { entries = readdirSync(dir, { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      const p = join(dir, e.name);
      // tools/: the tools' own code (libllama-quantize-impl.a), not part of the addon.
      if (e.isDirectory() && depth < 4 && e.name !== 'CMakeFiles' && e.name !== 'tools') walk(p, depth + 1);
      else if (e.isFile() && /^lib(llama|ggml)[\w.-]*\.(a|so(\.\d+)*)$/.test(e.name) && !e.name.includes('-impl')) found.push(p);
    }
  };
  walk(join(tree, 'llama.cpp'), 0);
  walk(join(tree, 'bin'), 0);
  return found;
}

/**
 * Whether a tool was linked after every static library of its tree (else it may hold older code than the
 * libraries, and than an addon linked from them).
 */
export function toolIsCurrent(tool, tree) {
  if (!existsSync(tool)) return false;
  const t = statSync(tool).mtimeMs;
  // Shared libraries are loaded at run time (the prebuild): only static archives are linked into the tool.
  return librariesIn(tree).filter((lib) => lib.endsWith('.a')).every((lib) => statSync(lib).mtimeMs <= t);
}

/** Whether `tree` can build `target` (llama.cpp's tools are only there when configured with HUOZI_NATIVE_TOOLS). */
function hasTarget(tree, target) {
  const r = spawnSync('cmake', ['--build', tree, '--target', 'help'], { encoding: 'utf8', cwd: root });
  if (r.status !== 0) return false;
  return new RegExp(`(^|\\s|\\.\\.\\. )${target.replace(/[-.]/g, '\\$&')}(:|\\s|$)`, 'm').test(r.stdout);
}

function sameLibrariesTree(info) {
  return info.sameLibraries && TREES.some((t) => t.tree === info.tree);
}

/** Reconfigures one of our trees with HUOZI_NATIVE_TOOLS=ON, refusing if that changed any of its libraries. */
function enableTools(tree) {
  withTreeLock(tree, () => {
    const before = new Map(librariesIn(tree).map((lib) => [lib, statSync(lib).mtimeMs]));
    sh('cmake', ['-B', tree, '-DHUOZI_NATIVE_TOOLS=ON']);
    const changed = [...before].filter(([lib, t]) => !existsSync(lib) || statSync(lib).mtimeMs !== t);
    if (changed.length > 0) throw new Error(`native-tools: configuring ${tree} with its tools changed ${changed.map(([l]) => l).join(', ')}`);
  });
}

/** One build at a time in a tree (scripts/tree-lock.mjs; build.mjs takes the same lock for .build/cmake). */
function withTreeLock(tree, fn) {
  const unlock = lockTree(tree, (line) => console.error(`native-tools: ${line}`));
  try {
    return fn();
  } finally {
    unlock();
  }
}

// Where each tool was put by buildNativeTools in this process (the fallback tree for a target the addon's
// tree lacks).
const placed = new Map();

/**
 * The path of a native tool: in the addon's tree, or where buildNativeTools had to put it. Under
 * HUOZI_CPU_VARIANT (the addon then runs that one prebuilt CPU kernel set), a tool of a prebuild tree runs the
 * same set: see withCpuVariant.
 */
export function nativeTool(name) {
  if (placed.has(name)) return withCpuVariant(placed.get(name));
  const info = nativeToolsInfo();
  const own = join(info.bin, name);
  if (!existsSync(own) && existsSync(join(nativeDir, 'bin', name))) return join(nativeDir, 'bin', name);
  return withCpuVariant(own);
}

/**
 * A prebuild tree's tools load the CPU backend that ggml rates best for this CPU from their own folder, while
 * HUOZI_CPU_VARIANT=<level> makes the addon load libggml-cpu-<level>.so. For the tools to compute with the same
 * kernels, the tool runs from <tree>/bin-cpu-<level>/: copies of it and of the tree's shared libraries with that
 * one CPU backend. A static tree (no backend modules) is returned as it is: the variant does not apply there.
 */
function withCpuVariant(tool) {
  const variant = process.env.HUOZI_CPU_VARIANT;
  if (!variant || !existsSync(tool)) return tool;
  const bin = dirname(tool);
  const backend = `libggml-cpu-${variant}.so`;
  if (!readdirSync(bin).some((f) => f.startsWith('libggml-cpu-'))) return tool;
  if (!existsSync(join(bin, backend))) throw new Error(`HUOZI_CPU_VARIANT=${variant}: no ${backend} in ${bin}`);
  const dir = join(dirname(bin), `bin-cpu-${variant}`);
  mkdirSync(dir, { recursive: true });
  const name = tool.slice(bin.length + 1);
  for (const f of readdirSync(bin)) {
    const wanted = f === name || (/^lib[\w.-]+\.so(\.\d+)*$/.test(f) && (!f.startsWith('libggml-cpu-') || f === backend));
    if (!wanted) continue;
    const from = join(bin, f);
    const to = join(dir, f);
    if (!existsSync(to) || statSync(to).mtimeMs < statSync(from).mtimeMs || statSync(to).size !== statSync(from).size) {
      copyFileSync(from, `${to}.tmp`);
      renameSync(`${to}.tmp`, to);
    }
  }
  return join(dir, name);
}

function buildInFallback(tools, gpu) {
  const defs = [
    '-DCMAKE_BUILD_TYPE=Release', '-DBUILD_SHARED_LIBS=OFF', '-DCMAKE_POSITION_INDEPENDENT_CODE=ON',
    '-DLLAMA_BUILD_TOOLS=ON', '-DLLAMA_BUILD_TESTS=OFF', '-DLLAMA_BUILD_EXAMPLES=ON', '-DLLAMA_BUILD_SERVER=ON', // examples: llama-embedding
    '-DLLAMA_OPENSSL=OFF', '-DLLAMA_BUILD_APP=OFF',
  ];
  // As CMakeLists.txt does for the source build: no half-precision accumulation on AVX512-FP16 CPUs (see
  // docs/cpu-builds.md), so that even these tools compute as the addon's kind of build does.
  const takesFlag = () => spawnSync(process.env.CXX || 'c++', ['-mno-avx512fp16', '-E', '-x', 'c++', '/dev/null'], { stdio: 'ignore' }).status === 0;
  if (process.arch === 'x64' && !process.env.HUOZI_FP16_ARITH && takesFlag()) defs.push('-DCMAKE_C_FLAGS=-mno-avx512fp16', '-DCMAKE_CXX_FLAGS=-mno-avx512fp16');
  if (gpu === 'cuda') defs.push('-DGGML_CUDA=ON');
  if (process.env.HUOZI_CUDA_ARCHITECTURES) defs.push(`-DCMAKE_CUDA_ARCHITECTURES=${process.env.HUOZI_CUDA_ARCHITECTURES}`);
  withTreeLock(nativeDir, () => {
    if (!isTree(nativeDir)) sh('cmake', ['-S', join(root, 'vendor', 'llama.cpp'), '-B', nativeDir, ...defs]);
    sh('cmake', ['--build', nativeDir, '--parallel', String(availableParallelism()), '--target', ...tools]);
  });
  for (const t of tools) placed.set(t, join(nativeDir, 'bin', t));
}

/**
 * Makes sure `tools` exist for the addon under test (see the top of this file) and returns nativeToolsInfo()
 * with `fallback`: the tools that had to come from .build/native instead.
 */
export function buildNativeTools(tools = ['llama-bench', 'llama-quantize'], { gpu = process.env.HUOZI_GPU ?? 'cpu' } = {}) {
  const info = nativeToolsInfo();
  // Missing, or linked before the tree's libraries last changed (then it may not hold the addon's code).
  const missing = tools.filter((t) => !existsSync(join(info.bin, t)) || (info.tree && !toolIsCurrent(join(info.bin, t), info.tree)));
  for (const t of tools) if (!missing.includes(t)) placed.set(t, join(info.bin, t));
  const fallback = [];
  if (missing.length > 0 && info.tree && info.tree !== nativeDir) {
    // A tree of ours configured without llama.cpp's tools (the README's `npm install` builds the addon alone):
    // switch them on there rather than fall back to .build/native, whose libraries are compiled with other flags
    // (llama.cpp's defaults: with AVX512-FP16 on a Sapphire Rapids, llama-imatrix then differed from ours by 0.29
    // where the addon's own tree agrees to 1.2e-5). Only targets are added: the addon's libraries stay as they
    // are, which is checked below.
    if (sameLibrariesTree(info) && !missing.every((t) => hasTarget(info.tree, t))) enableTools(info.tree);
    const buildable = missing.filter((t) => hasTarget(info.tree, t));
    if (buildable.length > 0) {
      withTreeLock(info.tree, () => sh('cmake', ['--build', info.tree, '--parallel', String(availableParallelism()), '--target', ...buildable]));
      for (const t of buildable) placed.set(t, join(info.bin, t));
    }
    fallback.push(...missing.filter((t) => !buildable.includes(t)));
  } else if (missing.length > 0 && info.tree === nativeDir) {
    fallback.push(...missing);
  } else if (missing.length > 0) {
    throw new Error(`native tools ${missing.join(', ')} are not in ${info.bin} (${info.why}), which is not a CMake tree to build them in`);
  }
  if (!info.sameLibraries) console.error(`native-tools: ${info.why}`);
  if (fallback.length > 0) {
    if (info.sameLibraries) {
      console.error(`native-tools: ${info.tree} has no target ${fallback.join(', ')} (configured without llama.cpp's tools?); ` +
        'building them in .build/native, with other libraries than the addon\'s');
    }
    buildInFallback(fallback, gpu);
  }
  return { ...info, fallback };
}

/**
 * llama.cpp's own perplexity of `textFile` under `model` (llama-perplexity -c contextSize [--chunks N] from the
 * addon's tree; buildNativeTools(['llama-perplexity']) first): `{ perplexity, chunks }`, parsed from its log.
 */
export function nativePerplexity(model, textFile, { contextSize = 256, threads = 2, chunks = undefined } = {}) {
  const args = ['-m', model, '-f', textFile, '-c', String(contextSize), '-t', String(threads)];
  if (chunks !== undefined) args.push('--chunks', String(chunks));
  let r;
  let log;
  let ppl;
  let over;
  // Once (of ~20 runs here, under load) a run exited 0 with the last chunk and the "Final estimate" line missing
  // from its log (llama.cpp's log thread not flushed at exit?): such a run is repeated, up to three times.
  for (let attempt = 0; attempt < 3; attempt++) {
    r = spawnSync(nativeTool('llama-perplexity'), args, { encoding: 'utf8', maxBuffer: 64 << 20 });
    log = `${r.stdout}\n${r.stderr}`;
    ppl = /Final estimate: PPL = ([\d.]+)/.exec(log);
    over = /calculating perplexity over (\d+) chunks/.exec(log);
    if (r.status !== 0 || (ppl && over)) break;
    console.error(`native-tools: llama-perplexity ${args.join(' ')} exited 0 without its final estimate; running it again`);
  }
  if (r.status !== 0 || !ppl || !over) {
    throw new Error(`llama-perplexity ${args.join(' ')} failed (status ${r.status}):\n${log.slice(-2000)}`);
  }
  return { perplexity: Number(ppl[1]), chunks: Number(over[1]) };
}

/**
 * llama.cpp's own embeddings of `texts` (one per line: no newlines in them) under `model`: llama-embedding from
 * the addon's tree (buildNativeTools(['llama-embedding']) first), `-c B -b B -ub B` with B = `batchSize` (so
 * that it packs inputs into batches exactly as EmbeddingContext does), `--pooling`, `--embd-normalize 2|-1`,
 * `--embd-output-format array`. Returns `{ embeddings }` (number[][]: one per input, or one per token of each
 * input in order with pooling none) and `decodeMs`: llama.cpp's own prompt-eval time (`--perf`), the decode calls
 * alone (no model load, no tokenization, no output).
 */
export function nativeEmbeddings(model, texts, { pooling = 'mean', normalize = true, batchSize = 2048, threads = 2 } = {}) {
  if (texts.some((t) => t.includes('\n'))) throw new Error('nativeEmbeddings: texts must not contain newlines');
  const dir = mkdtempSync(join(tmpdir(), 'huozi-embd-'));
  try {
    const file = join(dir, 'texts.txt');
    writeFileSync(file, texts.join('\n'));
    const args = [
      '-m', model, '-f', file, '-c', String(batchSize), '-b', String(batchSize), '-ub', String(batchSize), '-t', String(threads),
      '-tb', String(threads), '--pooling', pooling, '--embd-normalize', normalize ? '2' : '-1', '--embd-output-format', 'array', '--perf', '-lv', '4',
    ];
    const r = spawnSync(nativeTool('llama-embedding'), args, { encoding: 'utf8', maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`llama-embedding ${args.join(' ')} failed (status ${r.status}):\n${`${r.stdout}\n${r.stderr}`.slice(-2000)}`);
    const start = r.stdout.indexOf('[[');
    const end = r.stdout.lastIndexOf(']]');
    if (start < 0 || end < 0) throw new Error(`llama-embedding printed no embeddings:\n${r.stdout.slice(0, 500)}\n${r.stderr.slice(-1500)}`);
    const embeddings = JSON.parse(r.stdout.slice(start, end + 2));
    const perf = /prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(`${r.stderr}\n${r.stdout}`);
    return { embeddings, decodeMs: perf ? Number(perf[1]) : undefined, tokens: perf ? Number(perf[2]) : undefined, log: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const tools = process.argv.slice(2);
  const info = buildNativeTools(tools.length ? tools : undefined);
  console.log(info.why);
  for (const t of tools.length ? tools : ['llama-bench', 'llama-quantize']) console.log(nativeTool(t));
}
