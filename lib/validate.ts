// Validation at the public boundary. One message shape everywhere:
//   Expected positive integer for contextSize but received 1.5 of type number
// TypeError (code ERR_INVALID_ARG_TYPE) for a wrong type, RangeError (ERR_OUT_OF_RANGE) for a bad value.

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  const type = typeof value;
  if (type === 'string') {
    const s = value as string;
    return `"${s.length > 40 ? s.slice(0, 37) + '...' : s}" of type string`;
  }
  if (type === 'object' || type === 'function') return `a value of type ${type}`;
  return `${String(value)} of type ${type}`;
}

export function typeError(expected: string, name: string, value: unknown): TypeError {
  return Object.assign(new TypeError(`Expected ${expected} for ${name} but received ${describe(value)}`), {
    code: 'ERR_INVALID_ARG_TYPE',
  });
}

export function rangeError(expected: string, name: string, value: unknown): RangeError {
  return Object.assign(new RangeError(`Expected ${expected} for ${name} but received ${describe(value)}`), {
    code: 'ERR_OUT_OF_RANGE',
  });
}

export function integer(name: string, value: unknown, min = -Infinity, max = Infinity): number {
  const what =
    min === 1 && max === Infinity ? 'positive integer'
    : min === 0 && max === Infinity ? 'non-negative integer'
    : `integer between ${min} and ${max}`;
  if (typeof value !== 'number') throw typeError(what, name, value);
  if (!Number.isInteger(value) || value < min || value > max) throw rangeError(what, name, value);
  return value;
}

export function number(name: string, value: unknown, min = -Infinity, max = Infinity, what?: string): number {
  const expected =
    what ?? (min === -Infinity && max === Infinity ? 'finite number' : `number between ${min} and ${max}`);
  if (typeof value !== 'number') throw typeError(expected, name, value);
  if (!Number.isFinite(value) || value < min || value > max) throw rangeError(expected, name, value);
  return value;
}

export function boolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw typeError('boolean', name, value);
  return value;
}

export function string(name: string, value: unknown, { allowEmpty = true } = {}): string {
  if (typeof value !== 'string') throw typeError('string', name, value);
  if (!allowEmpty && value.length === 0) throw rangeError('non-empty string', name, value);
  return value;
}

export function func<T extends (...args: never[]) => unknown>(name: string, value: unknown): T {
  if (typeof value !== 'function') throw typeError('function', name, value);
  return value as T;
}

export function signal(name: string, value: unknown): AbortSignal {
  if (!(value instanceof AbortSignal)) throw typeError('AbortSignal', name, value);
  return value;
}

export function oneOf<T extends string | number | boolean>(name: string, value: unknown, allowed: readonly T[]): T {
  if (!allowed.includes(value as T)) {
    const list = allowed.map((a) => (typeof a === 'string' ? `"${a}"` : String(a))).join(', ');
    throw (typeof value === typeof allowed[0] ? rangeError : typeError)(`one of ${list}`, name, value);
  }
  return value as T;
}

export function stringArray(name: string, value: unknown): string[] {
  if (!Array.isArray(value)) throw typeError('array of strings', name, value);
  value.forEach((v, i) => string(`${name}[${i}]`, v));
  return value as string[];
}

/** Checks token ids (integers in [0, vocabularySize)) and packs them for the addon. */
export function tokens(name: string, value: unknown, vocabularySize: number): Int32Array {
  if (!(Array.isArray(value) || ArrayBuffer.isView(value)) || value instanceof DataView) {
    throw typeError('array of token ids', name, value);
  }
  const list = value as ArrayLike<unknown>;
  const out = new Int32Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    if (typeof t !== 'number' && typeof t !== 'bigint') throw typeError('token id (integer)', `${name}[${i}]`, t);
    const n = Number(t);
    if (!Number.isInteger(n) || n < 0 || n >= vocabularySize) {
      throw rangeError(`token id between 0 and ${vocabularySize - 1}`, `${name}[${i}]`, t);
    }
    out[i] = n;
  }
  return out;
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) dp[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      dp[i][j] = Math.min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return dp[a.length][b.length];
}

/** Checks that `value` is an options object with only known keys, suggesting the closest for a misspelling. */
export function options<T extends object>(name: string, value: unknown, known: readonly string[]): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw typeError('object', name, value);
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    const close = known
      .map((k) => [k, editDistance(key.toLowerCase(), k.toLowerCase())] as const)
      .sort((x, y) => x[1] - y[1])[0];
    const hint = close && close[1] <= Math.max(2, Math.floor(key.length / 3)) ? ` Did you mean "${close[0]}"?` : '';
    throw Object.assign(new TypeError(`Unknown option "${key}" in ${name}.${hint}`), { code: 'ERR_INVALID_ARG_TYPE' });
  }
  return value as Partial<T>;
}
