// One build at a time in a CMake build folder: two ninja runs in one folder corrupt each other's outputs.
// scripts/build.mjs and scripts/native-tools.mjs take the same lock (`<folder>.lock`, a directory holding the
// holder's pid); a lock whose holder died is taken over after a few seconds.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** Waits for and takes the lock of build folder `tree`; returns the function that releases it. */
export function lockTree(tree, log = console.log) {
  const lock = `${tree}.lock`;
  mkdirSync(dirname(lock), { recursive: true });
  for (let waited = 0; ; waited++) {
    try {
      mkdirSync(lock);
      writeFileSync(`${lock}/pid`, String(process.pid));
      return () => rmSync(lock, { recursive: true, force: true });
    } catch (error) {
      if (error.code !== 'EEXIST') throw error;
      let holder = NaN;
      try { holder = Number(readFileSync(`${lock}/pid`, 'utf8')); } catch {}
      let alive = false;
      try { if (holder > 0) { process.kill(holder, 0); alive = true; } } catch {}
      if (!alive && waited > 2) { rmSync(lock, { recursive: true, force: true }); continue; }
      if (waited === 0) log(`waiting for another build of ${tree} (pid ${holder}) to finish`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
    }
  }
}
