// The parent side of the renderer process (template-host.ts): one process per heap cap, started on first use,
// one render at a time (a queue), killed and replaced when a render outlives its deadline or the process dies.
// It holds the event loop open only while a render is in flight.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TemplateFailure, type TemplateLimits } from './template-limits.js';

/** Time past limits.timeoutMs before the parent kills a renderer that did not stop itself. */
const KILL_GRACE_MS = 1000;
/** Time a fresh renderer process may take to start. */
const START_TIMEOUT_MS = 60_000;

interface Job {
  source: string;
  variables: Record<string, unknown>;
  limits: TemplateLimits;
  messages: number;
  /** Sent once already to a process that died before it got it. */
  resent?: boolean;
  resolve(text: string): void;
  reject(error: Error): void;
}

const HOST = fileURLToPath(new URL('./template-host.js', import.meta.url));

class Renderer {
  readonly #memoryMiB: number;
  #child: ChildProcess | undefined;
  #ready = false;
  #queue: Job[] = [];
  #active: { job: Job; id: number; timer: NodeJS.Timeout } | undefined;
  #nextId = 1;
  #stderr = '';
  #startTimer: NodeJS.Timeout | undefined;

  constructor(memoryMiB: number) {
    this.#memoryMiB = memoryMiB;
  }

  render(job: Job): void {
    this.#queue.push(job);
    this.#pump();
  }

  #spawn(): ChildProcess {
    const child = fork(HOST, [], {
      execArgv: [`--max-old-space-size=${this.#memoryMiB}`],
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    this.#child = child;
    this.#ready = false;
    this.#stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.#stderr = (this.#stderr + chunk).slice(-4096);
    });
    child.on('message', (m: { ready?: boolean; id?: number; text?: string; failure?: TemplateFailure['info'] }) => {
      if (child !== this.#child) return;
      if (m.ready) {
        this.#ready = true;
        clearTimeout(this.#startTimer);
        this.#pump();
        return;
      }
      const active = this.#active;
      if (!active || m.id !== active.id) return;
      clearTimeout(active.timer);
      this.#active = undefined;
      if (m.failure) active.job.reject(new TemplateFailure(m.failure));
      else active.job.resolve(String(m.text));
      this.#pump();
    });
    child.on('error', (error) => {
      // Could not start (or signal) the process: fail what waits, start afresh next time.
      if (child !== this.#child) return;
      this.#fail(child, `the template renderer process failed: ${error.message}`);
    });
    child.on('exit', (code, signal) => {
      if (child !== this.#child) return;
      if (/heap out of memory|heap limit/i.test(this.#stderr)) {
        this.#fail(child, '', { reason: 'limit', limit: 'memoryMiB', message: `ran out of its ${this.#memoryMiB} MiB of memory (limits.memoryMiB)` });
      } else {
        this.#fail(child, `the template renderer process exited (${signal ?? `code ${code}`}) while rendering it`);
      }
    });
    this.#startTimer = setTimeout(() => {
      if (child === this.#child && !this.#ready) {
        child.kill('SIGKILL');
        this.#fail(child, `the template renderer process did not start within ${START_TIMEOUT_MS} ms`, undefined, true);
      }
    }, START_TIMEOUT_MS);
    return child;
  }

  // The process is gone (or useless): the render in flight fails with `info`; with `all`, the queue fails too
  // (the process could not even start), else the queue goes on in a fresh process.
  #fail(child: ChildProcess, message: string, info?: TemplateFailure['info'], all = false): void {
    clearTimeout(this.#startTimer);
    const wasReady = this.#ready;
    if (this.#child === child) {
      this.#child = undefined;
      this.#ready = false;
    }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    const failure = new TemplateFailure(info ?? { reason: 'error', message });
    const active = this.#active;
    this.#active = undefined;
    if (active) {
      clearTimeout(active.timer);
      active.job.reject(failure);
    }
    if (all || (!wasReady && !active)) {
      const queued = this.#queue;
      this.#queue = [];
      for (const job of queued) job.reject(failure);
    }
    this.#pump();
  }

  #pump(): void {
    if (this.#active || this.#queue.length === 0) {
      if (!this.#active && this.#child) setRef(this.#child, false);
      return;
    }
    const child = this.#child ?? this.#spawn();
    setRef(child, true);
    if (!this.#ready) return;
    const job = this.#queue.shift()!;
    const id = this.#nextId++;
    const timer = setTimeout(() => {
      if (this.#active?.id !== id) return;
      // The render fails now and the process is dropped at once (#fail kills it): a result it may still have in
      // the pipe is then ignored, and the next render goes to a fresh process. Waiting for the exit instead let a
      // late result settle this render and hand the next one to the dying process ("could not be reached").
      this.#fail(child, '', { reason: 'limit', limit: 'timeoutMs', message: `took longer than ${job.limits.timeoutMs} ms` });
    }, job.limits.timeoutMs + KILL_GRACE_MS);
    this.#active = { job, id, timer };
    child.send({ id, source: job.source, variables: job.variables, limits: job.limits, messages: job.messages }, (error) => {
      if (!error || this.#active?.id !== id) return;
      // The process died before it got the render (after answering the previous one): the render never ran, so
      // it goes once more, to a fresh process.
      if (!job.resent) {
        clearTimeout(timer);
        this.#active = undefined;
        job.resent = true;
        this.#queue.unshift(job);
        this.#fail(child, `the template renderer process could not be reached: ${error.message}`);
        return;
      }
      this.#fail(child, `the template renderer process could not be reached: ${error.message}`);
    });
  }
}

function setRef(child: ChildProcess, ref: boolean): void {
  // The process, its IPC channel and its stderr pipe each hold the event loop open.
  for (const handle of [child, child.channel, child.stderr] as ({ ref?(): void; unref?(): void } | null | undefined)[]) {
    if (ref) handle?.ref?.();
    else handle?.unref?.();
  }
}

const renderers = new Map<number, Renderer>();

/** Renders in the renderer process for `limits.memoryMiB`. Rejects with a {@link TemplateFailure}. */
export function renderIsolated(
  source: string, variables: Record<string, unknown>, limits: TemplateLimits, messages: number,
): Promise<string> {
  let renderer = renderers.get(limits.memoryMiB);
  if (!renderer) renderers.set(limits.memoryMiB, (renderer = new Renderer(limits.memoryMiB)));
  return new Promise((resolve, reject) => renderer.render({ source, variables, limits, messages, resolve, reject }));
}
