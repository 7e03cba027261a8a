// What a user gets from `npm install huozi-gguf`: the tarball holds exactly the runtime, the prebuilt addon, the
// sources to build from source and the demo model; installed with --ignore-scripts in a fresh folder outside
// the repository, with every compiler and build tool on PATH replaced by a trap, the CLI, an ESM program and a
// CommonJS require work without compiling anything.
//
// Needs the CPU prebuild (npm run prebuilds); CI makes it first (.ci/run). Without it the suite is skipped
// locally and fails in CI.
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { root } from '../helpers.js';

const prebuild = join(root, 'prebuilds', 'linux-x64', 'node.napi.glibc.node');
const havePrebuild = existsSync(prebuild);
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string };

interface PackResult {
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string; size: number }[];
}

// Every file in the tarball must match one of these; each `required` entry must be there.
const allowed: RegExp[] = [
  /^package\.json$/, /^README\.md$/, /^LICENSE$/, /^CMakeLists\.txt$/, /^binding\.gyp$/,
  /^dist\/.+\.(js|d\.ts)$/,
  /^prebuilds\/linux-x64\/(node\.napi\.glibc\.node|lib[\w-]+\.so(\.\d+)?)$/,
  /^src\/[\w/]+\.(cc|h)$/,
  /^scripts\/(build|install|vendor-llama|tree-lock|patch-llama)\.mjs$/,
  /^scripts\/patches\/[\w.-]+\.patch$/,   // the llama.cpp patches every build applies
  /^models\/huozi-tiny-q4_0\.gguf$/,
  /^web\/[\w-]+\.(html|css|js)$/,   // the page `huozi-gguf serve` serves
];
const required = [
  'package.json', 'README.md', 'LICENSE', 'CMakeLists.txt', 'binding.gyp', 'dist/index.js', 'dist/index.d.ts',
  'dist/cli/main.js', 'prebuilds/linux-x64/node.napi.glibc.node', 'prebuilds/linux-x64/libllama.so.0',
  'prebuilds/linux-x64/libggml-base.so.0', 'src/addon.cc', 'scripts/build.mjs', 'scripts/tree-lock.mjs', 'scripts/install.mjs',
  'scripts/vendor-llama.mjs', 'scripts/patch-llama.mjs', 'models/huozi-tiny-q4_0.gguf',
  ...readdirSync(join(root, 'scripts', 'patches')).filter((f) => f.endsWith('.patch')).map((f) => `scripts/patches/${f}`),
];

// npm's own JavaScript, run by this node: PATH below holds nothing else of the machine's.
const npmCli = join(dirname(realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim())), 'npm-cli.js');
const npxCli = join(dirname(npmCli), 'npx-cli.js');

describe.skipIf(!havePrebuild && !process.env.CI)('npm pack, then npm install --ignore-scripts elsewhere', () => {
  let work: string;
  let app: string;
  let pack: PackResult;
  let trapLog: string;
  let env: NodeJS.ProcessEnv;

  const run = (cmd: string, args: string[], input?: string): SpawnSyncReturns<string> =>
    spawnSync(cmd, args, { cwd: app, env, input, encoding: 'utf8', timeout: 120_000 });

  beforeAll(() => {
    expect(havePrebuild, `${prebuild} is missing: run npm run prebuilds first`).toBe(true);
    work = mkdtempSync(join(tmpdir(), 'huozi-pack-'));
    const out = execFileSync(process.execPath, [npmCli, 'pack', '--ignore-scripts', '--json', '--pack-destination', work], {
      cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 2 ** 20,
    });
    pack = (JSON.parse(out) as PackResult[])[0]!;

    // A PATH where node, npm and npx are this machine's and every compiler or build tool is a trap that
    // records its call and fails.
    const bin = join(work, 'bin');
    mkdirSync(bin);
    trapLog = join(work, 'trap.log');
    symlinkSync(process.execPath, join(bin, 'node'));
    writeFileSync(join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`);
    writeFileSync(join(bin, 'npx'), `#!/bin/sh\nexec "${process.execPath}" "${npxCli}" "$@"\n`);
    for (const tool of ['cc', 'c++', 'gcc', 'g++', 'clang', 'clang++', 'cmake', 'make', 'ninja', 'node-gyp', 'nvcc', 'ld']) {
      writeFileSync(join(bin, tool), `#!/bin/sh\necho "${tool} $*" >> "${trapLog}"\nexit 1\n`);
    }
    for (const f of ['npm', 'npx', 'cc', 'c++', 'gcc', 'g++', 'clang', 'clang++', 'cmake', 'make', 'ninja', 'node-gyp', 'nvcc', 'ld']) {
      chmodSync(join(bin, f), 0o755);
    }
    app = join(work, 'app');
    mkdirSync(app);
    env = {
      PATH: `${bin}:/usr/bin:/bin`,
      HOME: process.env.HOME,
      npm_config_cache: process.env.npm_config_cache ?? join(process.env.HOME ?? work, '.npm'),
      npm_config_update_notifier: 'false',
      npm_config_fund: 'false',
      npm_config_audit: 'false',
      LANG: 'C.UTF-8',
    };
    const init = run('npm', ['init', '-y']);
    expect(init.status, init.stderr).toBe(0);
    const install = run('npm', ['install', '--ignore-scripts', '--prefer-offline', join(work, pack.filename)]);
    expect(install.status, install.stderr).toBe(0);
  }, 300_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('holds exactly the runtime, the prebuild, the build sources, the demo model, README and LICENSE', () => {
    const paths = pack.files.map((f) => f.path).sort();
    expect(paths.filter((p) => !allowed.some((re) => re.test(p)))).toEqual([]);
    expect(required.filter((p) => !paths.includes(p))).toEqual([]);
    // dist/ only from lib/'s current sources (no leftovers of renamed files), and no source maps.
    const stale = paths.filter((p) => p.startsWith('dist/') && !existsSync(join(root, p.replace(/^dist\//, 'lib/').replace(/\.(d\.ts|js)$/, '.ts'))));
    expect(stale).toEqual([]);
    const list = pack.files.map((f) => `${String(f.size).padStart(10)}  ${f.path}`).join('\n');
    console.log(`${pack.filename}: ${(pack.size / 2 ** 20).toFixed(2)} MiB packed, ${(pack.unpackedSize / 2 ** 20).toFixed(2)} MiB unpacked, ${pack.files.length} files\n${list}`);
  });

  it('installs without running a compiler or any install script', () => {
    expect(existsSync(trapLog) ? readFileSync(trapLog, 'utf8') : '').toBe('');
    expect(existsSync(join(app, 'node_modules', 'huozi-gguf', 'build'))).toBe(false);
    expect(existsSync(join(app, 'node_modules', 'huozi-gguf', 'prebuilds', 'linux-x64', 'node.napi.glibc.node'))).toBe(true);
  });

  it('with install scripts allowed, the install script only checks that the prebuild loads', () => {
    const other = join(work, 'with-scripts');
    mkdirSync(other);
    const opts = { cwd: other, env, encoding: 'utf8' as const, timeout: 120_000 };
    expect(spawnSync('npm', ['init', '-y'], opts).status).toBe(0);
    const t0 = performance.now();
    const r = spawnSync('npm', ['install', '--foreground-scripts', '--prefer-offline', join(work, pack.filename)], opts);
    const ms = performance.now() - t0;
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('huozi-gguf: using the existing native addon');
    expect(existsSync(trapLog) ? readFileSync(trapLog, 'utf8') : '').toBe('');
    expect(existsSync(join(other, 'node_modules', 'huozi-gguf', 'build'))).toBe(false);
    console.log(`npm install with scripts: ${ms.toFixed(0)} ms`);
  });

  it('npx huozi-gguf chat answers through a pipe with the embedded demo model', () => {
    const r = run('npx', ['--no-install', 'huozi-gguf', 'chat', '--temp', '0'], '请背诵《春晓》\n');
    expect(r.stderr).toBe('note: no -m given; using the embedded demo model huozi-tiny (6.6M parameters, q4_0)\n');
    expect(r.stdout).toContain('春眠不觉晓，处处闻啼鸟。');
    expect(r.status).toBe(0);
  });

  it('a five-line ESM program loads the demo model from the prebuild and generates', () => {
    writeFileSync(join(app, 'chat.mjs'), [
      "import { ChatSession, demoModelPath, loadModel, systemInfo } from 'huozi-gguf';",
      'const model = await loadModel(demoModelPath);',
      'const chat = new ChatSession(await model.createContext({ contextSize: 512 }));',
      "console.log(JSON.stringify({ text: (await chat.prompt('请背诵《春晓》', { temperature: 0 })).text, info: systemInfo() }));",
      'await model.dispose();',
    ].join('\n'));
    const r = run(process.execPath, ['chat.mjs']);
    expect(r.stderr).toBe('');
    const { text, info } = JSON.parse(r.stdout) as { text: string; info: { backend: string; backendsDir?: string; addon?: { path: string; variant: string } } };
    expect(text).toContain('春眠不觉晓');
    expect(info.backend).toBe('cpu');
    expect(info.addon?.variant).toBe('prebuild');
    expect(info.addon?.path).toBe(join(realpathSync(app), 'node_modules', 'huozi-gguf', 'prebuilds', 'linux-x64', 'node.napi.glibc.node'));
    expect(info.backendsDir).toBe(dirname(info.addon!.path));
  });

  it('CommonJS require works (require(esm), Node >= 20.19)', () => {
    writeFileSync(join(app, 'count.cjs'), [
      "const { loadModel, demoModelPath } = require('huozi-gguf');",
      'loadModel(demoModelPath).then(async (model) => {',
      "  console.log(model.tokenize('春眠不觉晓').length > 0 ? 'ok' : 'empty');",
      '  await model.dispose();',
      '});',
    ].join('\n'));
    const r = run(process.execPath, ['count.cjs']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('ok\n');
  });

  it('--help and quantize --list start without the addon, in well under a second', () => {
    const cli = join(app, 'node_modules', 'huozi-gguf', 'dist', 'cli', 'main.js');
    // An addon path that cannot load: if either command touched the addon, it would fail.
    const lazyEnv = { ...env, HUOZI_BINDING: join(work, 'no-such-addon.node') };
    for (const args of [['--help'], ['quantize', '--list']]) {
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const r = spawnSync(process.execPath, [cli, ...args], { cwd: app, env: lazyEnv, encoding: 'utf8' });
        times.push(performance.now() - t0);
        expect(r.status, r.stderr).toBe(0);
      }
      times.sort((a, b) => a - b);
      console.log(`huozi-gguf ${args.join(' ')}: median ${times[2]!.toFixed(0)} ms over 5 runs`);
      expect(times[2]).toBeLessThan(1000);
    }
  });

  it('says what it tried and how to build from source when no addon loads', () => {
    const r = run(process.execPath, ['-e', "import('huozi-gguf').then((h) => h.systemInfo())"]);
    expect(r.status).toBe(0);
    const broken = spawnSync(process.execPath, ['-e', "import('huozi-gguf').then((h) => h.systemInfo())"], {
      cwd: app, env: { ...env, HUOZI_BACKEND: 'cuda' }, encoding: 'utf8',
    });
    expect(broken.status).not.toBe(0);
    expect(broken.stderr).toContain('HUOZI_BACKEND=cuda, but @huozi-gguf/linux-x64-cuda is not installed');
    expect(broken.stderr).toContain('Tried:');
    expect(broken.stderr).toContain('npm rebuild huozi-gguf');
  });
});
