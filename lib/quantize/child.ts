// The child process that runs llama_model_quantize for lib/quantize/quantize.ts. Reads one JSON job from
// argv[2], writes progress lines ({"tensor":i,"of":n}) and a final {"done":...} or {"error":...} line to fd 3.
import { writeSync } from 'node:fs';
import { binding, type NativeQuantizeParams } from '../binding.js';

const job = JSON.parse(process.argv[2]) as {
  input: string;
  output: string;
  params: NativeQuantizeParams;
  imatrixFile?: string;
};
const RESULT_FD = 3;

function send(message: object): void {
  writeSync(RESULT_FD, `${JSON.stringify(message)}\n`);
}

async function main(): Promise<void> {
  const params: NativeQuantizeParams = { ...job.params, progressFd: RESULT_FD };
  if (job.imatrixFile) {
    const { readImatrix } = await import('./imatrix.js');
    const imatrix = await readImatrix(job.imatrixFile);
    params.imatrix = imatrix.entries.map((e) => ({ name: e.name, data: e.importance }));
    params.metadata = imatrix.provenance;
  }
  const result = binding().quantize(job.input, job.output, params);
  send({ done: result });
}

main().catch((error: Error & { code?: string }) => {
  send({ error: { message: error.message, code: error.code ?? 'ERR_HUOZI_QUANTIZE' } });
  process.exitCode = 1;
});
