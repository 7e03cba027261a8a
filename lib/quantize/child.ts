// The child process that runs llama_model_quantize for lib/quantize/quantize.ts. Reads one JSON job from
// argv[2], writes progress lines ({"tensor":i,"of":n}) and a final {"done":...} or {"error":...} line to fd 3.
import { writeSync } from 'node:fs';
import { binding } from '../binding.js';

const job = JSON.parse(process.argv[2]) as {
  input: string;
  output: string;
  params: Record<string, unknown>;
  imatrixFile?: string;
};
const RESULT_FD = 3;

function send(message: object): void {
  writeSync(RESULT_FD, `${JSON.stringify(message)}\n`);
}

async function main(): Promise<void> {
  const params: Record<string, unknown> = { ...job.params, progressFd: RESULT_FD };
  if (job.imatrixFile) {
    const { readImatrix } = await import('./imatrix.js');
    const imatrix = await readImatrix(job.imatrixFile);
    params.imatrix = imatrix.entries.map((e) => ({ name: e.name, data: e.importance }));
    params.metadata = imatrix.provenance;
  }
  const native = binding() as unknown as { quantize(i: string, o: string, p: object): { quantMiB: number; requiresImatrix: boolean } };
  const result = native.quantize(job.input, job.output, params);
  send({ done: result });
}

main().catch((error: Error & { code?: string }) => {
  send({ error: { message: error.message, code: error.code ?? 'ERR_HUOZI_QUANTIZE' } });
  process.exitCode = 1;
});
