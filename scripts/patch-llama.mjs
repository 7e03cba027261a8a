#!/usr/bin/env node
// Applies scripts/patches/*.patch to vendor/llama.cpp, in name order, idempotently: a patch that is already
// applied (it reverse-applies cleanly) is left alone, one that applies cleanly is applied, and one that does
// neither fails the build with its name. Used by vendor-llama.mjs (after fetching, and when verifying an existing
// tree), build.mjs and prebuild.mjs (before compiling), so the source build, the prebuild and CI all compile the
// same patched tree. Each patch is a `git diff` made inside vendor/llama.cpp; `git apply` needs no repository
// (GIT_CEILING_DIRECTORIES keeps it from mistaking the enclosing checkout for the tree's own).
//
// Usage: node scripts/patch-llama.mjs [--check]   (--check: only say whether every patch is applied)
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const PATCH_DIR = join(root, 'scripts', 'patches');

/** The patch files, in the order they apply. */
export function patchFiles() {
  if (!existsSync(PATCH_DIR)) return [];
  return readdirSync(PATCH_DIR).filter((f) => f.endsWith('.patch')).sort().map((f) => join(PATCH_DIR, f));
}

/** The paths (relative to the tree) a patch changes. */
export function patchedPaths(file) {
  const paths = new Set();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^\+\+\+ b\/(.+)$/.exec(line) ?? /^--- a\/(.+)$/.exec(line);
    if (m) paths.add(m[1]);
  }
  return [...paths];
}

function gitApply(tree, args, file) {
  try {
    execFileSync('git', ['apply', ...args, file], {
      cwd: tree,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, GIT_CEILING_DIRECTORIES: dirname(tree) },
    });
    return true;
  } catch {
    return false;
  }
}

/**
 * Applies every patch that is not applied yet. Returns { applied, already } (file names); throws naming the
 * patch that neither applies nor is applied.
 */
export function applyPatches(tree = join(root, 'vendor', 'llama.cpp'), { check = false } = {}) {
  const applied = [];
  const already = [];
  for (const file of patchFiles()) {
    const name = file.slice(PATCH_DIR.length + 1);
    if (gitApply(tree, ['--reverse', '--check'], file)) {
      already.push(name);
      continue;
    }
    if (check || !gitApply(tree, ['--check'], file)) {
      throw new Error(
        `scripts/patches/${name} ${check ? 'is not applied to' : 'does not apply to'} ${tree}` +
          (check ? '' : ' (the tree has other edits, or is not the pinned commit): run `node scripts/vendor-llama.mjs --force`'),
      );
    }
    if (!gitApply(tree, [], file)) throw new Error(`git apply scripts/patches/${name} failed in ${tree}`);
    applied.push(name);
  }
  return { applied, already };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const { applied, already } = applyPatches(undefined, { check: process.argv.includes('--check') });
    for (const p of applied) console.log(`vendor/llama.cpp: applied ${p}`);
    if (already.length) console.log(`vendor/llama.cpp: ${already.length} patch(es) already applied`);
  } catch (error) {
    console.error(error.message);
    process.exit(1);
  }
}
