#!/usr/bin/env node
// npm's install step. Uses a binary that already loads (a prebuilt one in prebuilds/, or an earlier build
// in build/Release); only when none does, fetches and verifies llama.cpp and builds from source.
// `npm install --ignore-scripts` skips this entirely: the loader then uses the prebuilt binaries.
// HUOZI_BUILD_FROM_SOURCE=1 forces a source build.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function loads() {
  try {
    const binding = require('node-gyp-build')(root);
    binding.systemInfo();
    return true;
  } catch {
    return false;
  }
}

if (process.env.HUOZI_BUILD_FROM_SOURCE !== '1' && loads()) {
  console.log('huozi-gguf: using the existing native addon');
  process.exit(0);
}
console.log('huozi-gguf: no native addon for this platform yet; building from source (needs cmake and a C++17 compiler)');
for (const script of ['vendor-llama.mjs', 'build.mjs']) {
  const r = spawnSync(process.execPath, [join(root, 'scripts', script)], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
