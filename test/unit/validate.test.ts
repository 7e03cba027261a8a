import { describe, expect, it } from 'vitest';
import * as v from '../../dist/validate.js';

describe('validation messages', () => {
  it('names the argument, the expectation and what was received', () => {
    expect(() => v.integer('contextSize', 1.5, 1)).toThrow('Expected positive integer for contextSize but received 1.5 of type number');
    expect(() => v.integer('threads', '2', 1)).toThrow('Expected positive integer for threads but received "2" of type string');
    expect(() => v.number('topP', 2, 0, 1)).toThrow('Expected number between 0 and 1 for topP but received 2 of type number');
    expect(() => v.boolean('useMmap', null)).toThrow('Expected boolean for useMmap but received null');
  });

  it('uses TypeError for a wrong type and RangeError for a wrong value, with Node-style codes', () => {
    expect(() => v.integer('n', 'x')).toThrow(TypeError);
    expect(() => v.integer('n', -1, 0)).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }));
    expect(() => v.integer('n', 'x')).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it('suggests the closest option for a misspelling', () => {
    expect(() => v.options('options', { contextSise: 1 }, ['contextSize', 'batchSize'])).toThrow(
      'Unknown option "contextSise" in options. Did you mean "contextSize"?',
    );
    expect(() => v.options('options', { zzz: 1 }, ['contextSize'])).toThrow(/^Unknown option "zzz" in options\.$/);
    expect(() => v.options('options', 5, ['a'])).toThrow(TypeError);
  });

  it('checks token arrays', () => {
    expect(v.tokens('t', [0, 1, 2], 3)).toEqual(new Int32Array([0, 1, 2]));
    expect(() => v.tokens('t', [3], 3)).toThrow('Expected token id between 0 and 2 for t[0] but received 3 of type number');
    expect(() => v.tokens('t', [NaN], 3)).toThrow(RangeError);
    expect(() => v.tokens('t', 'abc', 3)).toThrow(TypeError);
  });
});
