// The renderer process of ChatTemplate.renderAsync (started by template-process.ts with a heap cap): renders one
// request at a time under the limits of template-limits.ts. Whatever a template does here (run out of memory,
// hit a V8 fatal error, spin in a builtin), only this process dies; the parent kills it after the deadline.
import { parseTemplate, renderBounded, TemplateFailure, type TemplateLimits } from './template-limits.js';

interface Request {
  id: number;
  source: string;
  variables: Record<string, unknown>;
  limits: TemplateLimits;
  messages: number;
}

const parsed = new Map<string, ReturnType<typeof parseTemplate>>();

function handle(r: Request): unknown {
  try {
    let program = parsed.get(r.source);
    if (!program) {
      program = parseTemplate(r.source);
      if (parsed.size >= 16) parsed.delete(parsed.keys().next().value!);
      parsed.set(r.source, program);
    }
    return { id: r.id, text: renderBounded(program, r.variables, r.limits, r.messages) };
  } catch (error) {
    const info = error instanceof TemplateFailure ? error.info : { reason: 'error', message: `failed: ${String(error)}` };
    return { id: r.id, failure: info };
  }
}

process.on('message', (message) => {
  process.send!(handle(message as Request));
});
process.on('disconnect', () => process.exit(0));
process.send!({ ready: true });
