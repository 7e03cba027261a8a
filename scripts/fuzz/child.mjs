// A fuzz worker: loads the target module named on its command line, then reads one case path per line on
// stdin and writes one JSON line per case: what the target's runCase returned ({ result: 'clean', class } or
// { result: 'unexpected', ... }). An error runCase lets escape is itself unexpected. If a case kills this
// process (a signal, a V8 out-of-memory abort), the parent sees which case did it.
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { unexpected } from './outcome.mjs';

const target = await import(pathToFileURL(process.argv[2]).href);
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const path of lines) {
  let outcome;
  try {
    outcome = await target.runCase(path);
    if (outcome?.result !== 'clean' && outcome?.result !== 'unexpected') {
      outcome = unexpected(new Error(`runCase returned ${JSON.stringify(outcome)?.slice(0, 100)}, not a clean or unexpected outcome`), 'target');
    } else if (outcome.result === 'clean' && typeof outcome.class !== 'string') {
      outcome = unexpected(new Error('runCase returned a clean outcome without a class'), 'target');
    }
  } catch (error) {
    outcome = unexpected(error, 'runCase');
  }
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}
