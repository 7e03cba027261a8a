// Preloaded with `node --import` by startup.test.ts: appends to $HUOZI_LOAD_TRACE every ES module the process
// loads from the package (not node_modules) and every native addon it opens, one line each.
import { appendFileSync } from 'node:fs';
import { register } from 'node:module';

const out = process.env.HUOZI_LOAD_TRACE;
const dlopen = process.dlopen;
process.dlopen = function (module, filename, ...rest) {
  appendFileSync(out, `dlopen ${filename}\n`);
  return dlopen.call(this, module, filename, ...rest);
};
register(
  `data:text/javascript,${encodeURIComponent(`
    import { appendFileSync } from 'node:fs';
    export async function load(url, context, next) {
      if (url.startsWith('file:') && !url.includes('/node_modules/')) appendFileSync(${JSON.stringify(out)}, 'module ' + url + '\\n');
      return next(url, context);
    }
  `)}`,
);
