#!/usr/bin/env node
// npm's install step. Uses a binary that already loads (a prebuilt one in prebuilds/, or an earlier build
// in build/Release): then it only loads it once, a fraction of a second. Only when none loads, fetches and
// verifies llama.cpp and builds from source, which needs cmake-js and node-api-headers (devDependencies, so
// present in this repository but not in a user's install: there it says what to run instead of failing the
// install). `npm install --ignore-scripts` skips this entirely: the loader then uses the prebuilt binaries.
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
try {
  require.resolve('cmake-js/package.json');
  require.resolve('node-api-headers/package.json');
} catch {
  console.warn(
    `huozi-gguf: no prebuilt addon loads on ${process.platform}-${process.arch}, and building one needs cmake-js and ` +
      'node-api-headers. The JavaScript parts work; loading a model will fail until you build the addon ' +
      '(cmake >= 3.19 and a C++17 compiler), in your project:\n' +
      '  npm install --save-dev cmake-js node-api-headers && HUOZI_BUILD_FROM_SOURCE=1 npm rebuild huozi-gguf --foreground-scripts',
  );
  process.exit(0);
}
console.log('huozi-gguf: no native addon for this platform yet; building from source (needs cmake and a C++17 compiler)');
for (const script of ['vendor-llama.mjs', 'build.mjs']) {
  const r = spawnSync(process.execPath, [join(root, 'scripts', script)], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
