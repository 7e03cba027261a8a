#!/usr/bin/env node
// Fetches the pinned llama.cpp into vendor/llama.cpp and verifies it.
//
// Why not a git submodule: the pinned tree (llama.cpp, squashed as one commit) is published only inside the
// npm package node-llama-cpp@3.22.1 as llama/gitRelease.bundle, and the npm registry is the only source these
// machines (and CI) can reach. So we `npm pack` that exact version, check the tarball's sha512 against the
// integrity npm published, clone the bundle, and check HEAD. Nothing of llama.cpp is committed here.
//
// Our fixes to llama.cpp (scripts/patches/*.patch, see patch-llama.mjs) are applied on top; a tree is "clean" when
// the only edits in it are those patches.
//
// Usage: node scripts/vendor-llama.mjs [--force]
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { applyPatches, patchedPaths, patchFiles } from './patch-llama.mjs';

export const PACKAGE = 'node-llama-cpp@3.22.1';
export const INTEGRITY =
  'sha512-bltIipuWmc123H7tMIgDGKSsSrhmhlQYeVUC48XTjVW7XGJJiJJyCdlTMzQ/LiWoPkGDpcL4FviDpgw7qfTiDw==';
export const COMMIT = 'de3ff815ea7d559ee917f063901b8986f038abc6';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, 'vendor', 'llama.cpp');
const force = process.argv.includes('--force');

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...opts }).trim();
}

function headOf(dir) {
  try {
    return run('git', ['-C', dir, 'rev-parse', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return null;
  }
}

// Clean: no edits but the files our patches change (whether those are applied is checked by applyPatches).
function isClean(dir) {
  const allowed = new Set(patchFiles().flatMap(patchedPaths));
  return run('git', ['-C', dir, 'diff', '--name-only', 'HEAD'])
    .split('\n')
    .filter((line) => line !== '')
    .every((line) => allowed.has(line));
}

function patch(dir) {
  const { applied, already } = applyPatches(dir);
  if (applied.length) console.log(`vendor/llama.cpp: applied ${applied.join(', ')}`);
  return applied.length + already.length;
}

if (!force && existsSync(target)) {
  const head = headOf(target);
  if (head === COMMIT && isClean(target)) {
    let patches;
    try {
      patches = patch(target);
    } catch (error) {
      console.error(error.message);
      process.exit(1);
    }
    console.log(`vendor/llama.cpp: ${COMMIT} (verified, clean, ${patches} patch(es) of scripts/patches applied)`);
    process.exit(0);
  }
  console.error(
    `vendor/llama.cpp is at ${head ?? 'an unknown state'}${head === COMMIT ? ' with local edits' : ''}, ` +
      `expected ${COMMIT}. Run \`node scripts/vendor-llama.mjs --force\` to fetch it again.`,
  );
  process.exit(1);
}

const work = mkdtempSync(join(tmpdir(), 'huozi-vendor-'));
try {
  console.log(`fetching ${PACKAGE} from the npm registry ...`);
  const packed = JSON.parse(run('npm', ['pack', PACKAGE, '--json', '--silent', '--pack-destination', work]));
  const tarball = join(work, packed[0].filename);
  const actual = 'sha512-' + createHash('sha512').update(readFileSync(tarball)).digest('base64');
  if (actual !== INTEGRITY) {
    throw new Error(`${PACKAGE} tarball integrity mismatch:\n  expected ${INTEGRITY}\n  actual   ${actual}`);
  }
  console.log('tarball integrity ok');
  run('tar', ['-xzf', tarball, '-C', work, 'package/llama/gitRelease.bundle']);
  const bundle = join(work, 'package', 'llama', 'gitRelease.bundle');
  const staging = join(work, 'llama.cpp');
  run('git', ['clone', '--quiet', bundle, staging]);
  run('git', ['-C', staging, '-c', 'advice.detachedHead=false', 'checkout', '--quiet', COMMIT]);
  const head = headOf(staging);
  if (head !== COMMIT) throw new Error(`bundle HEAD is ${head}, expected ${COMMIT}`);
  // The clone's origin points at a temp file; drop it so nobody pulls from a dangling path.
  run('git', ['-C', staging, 'remote', 'remove', 'origin']);
  mkdirSync(dirname(target), { recursive: true });
  rmSync(target, { recursive: true, force: true });
  renameSync(staging, target);
  const patches = patch(target);
  console.log(`vendor/llama.cpp: ${COMMIT} (verified, ${patches} patch(es) of scripts/patches applied)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
