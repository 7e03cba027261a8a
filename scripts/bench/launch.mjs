// Starting a server process for a benchmark (scripts/bench/server.mjs, constrained.mjs): a free loopback port,
// then the process, waited for until its /health answers.
import { spawn } from 'node:child_process';
import { createServer as netServer } from 'node:net';

/** A port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((res) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * Starts `name` (`[cmd, args]` from `command(port)`) on a free port and resolves to `{ url, child }` once
 * GET /health answers 200 (at most 60 s). `onStderr` sees the process's stderr as it comes (its last 10-20 kB).
 */
export async function launch(name, command, onStderr = () => {}) {
  const port = await freePort();
  const [cmd, args] = command(port);
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    onStderr(stderr);
    if (stderr.length > 20000) stderr = stderr.slice(-10000);
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${name} exited: ${stderr}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) return { url, child };
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill();
  throw new Error(`${name} did not become healthy: ${stderr}`);
}
