// What llama.cpp's JSON Schema converter (common/json-schema.cpp, json-schema-to-grammar.cpp) honours, checked in
// TS before it sees a schema: the converter picks one kind per schema node and silently drops every keyword that
// kind does not read (a `multipleOf`, a `not`, a `minLength` next to a `pattern`), and a grammar that drops a
// constraint produces answers that fail validation. Each such keyword is a GrammarError naming it and its path.
import { GrammarError } from './errors.js';

/** Annotations: they never constrain a value. */
const METADATA = new Set(['title', 'description', '$schema', '$id', '$comment', 'default', 'examples', 'deprecated', 'readOnly', 'writeOnly']);
/** Containers of schemas reached through `$ref`. */
const DEFINITIONS = new Set(['$defs', 'definitions']);

/** Keywords that constrain values of one type, by that type (JSON Schema 2020-12 and draft 7). */
const BY_TYPE: Record<string, readonly string[]> = {
  string: ['minLength', 'maxLength', 'pattern', 'format', 'contentEncoding', 'contentMediaType', 'contentSchema'],
  number: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf'],
  object: [
    'properties', 'required', 'additionalProperties', 'patternProperties', 'minProperties', 'maxProperties', 'propertyNames',
    'dependentRequired', 'dependentSchemas', 'dependencies', 'unevaluatedProperties',
  ],
  array: ['items', 'prefixItems', 'additionalItems', 'minItems', 'maxItems', 'uniqueItems', 'contains', 'minContains', 'maxContains', 'unevaluatedItems'],
};
BY_TYPE.integer = BY_TYPE.number;
/** Keywords that constrain values of any type. */
const UNIVERSAL = ['type', 'enum', 'const', 'allOf', 'anyOf', 'oneOf', 'not', 'if', 'then', 'else', '$ref', '$dynamicRef', '$recursiveRef', '$anchor', '$dynamicAnchor', 'nullable', 'discriminator'];
const ALL_TYPED = Object.values(BY_TYPE).flat();
const KNOWN = new Set([...METADATA, ...DEFINITIONS, ...UNIVERSAL, ...ALL_TYPED]);
const TYPES = new Set(['string', 'number', 'integer', 'object', 'array', 'boolean', 'null']);
const FORMATS = new Set(['date', 'time', 'date-time', 'uuid', 'uuid1', 'uuid2', 'uuid3', 'uuid4', 'uuid5']);
/** llama.cpp's grammar parser repeats an item at most 2000 times; a larger maximum silently becomes "no maximum". */
const MAX_REPEAT = 2000;
/** Nesting of schemas (objects in objects, items of items, ...): the converter recurses once per level. */
export const JSON_SCHEMA_MAX_DEPTH = 64;
/**
 * llama.cpp's converter is cubic in an object's optional properties (every suffix of the list is copied
 * recursively, json-schema-to-grammar.cpp get_recursive_refs), synchronously: 2,000 take 9 s, 10,000 minutes.
 * At most this many in one object, and at most 4 such objects' worth of that work in a schema (about 0.1 s).
 */
export const JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES = 256;
const MAX_OPTIONAL_COST = 4 * JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES ** 3;

type Schema = Record<string, unknown>;

const escape = (segment: string) => segment.replace(/~/g, '~0').replace(/\//g, '~1');
const isObject = (x: unknown): x is Schema => typeof x === 'object' && x !== null && !Array.isArray(x);

function fail(keyword: string, path: string, why: string): never {
  throw new GrammarError(`JSON Schema keyword "${keyword}" at ${path}: ${why}`, { keyword, path });
}

/** @internal Throws GrammarError for anything in `schema` that llama.cpp's converter would not honour. */
export function checkJsonSchema(root: object): void {
  new Walker(root as Schema).node(root, '#', 0);
}

/** @internal Every `pattern` in the schema (reachable or not), with its path: each is tried on its own. */
export function patternsOf(root: object): { pattern: string; path: string }[] {
  const out: { pattern: string; path: string }[] = [];
  const visit = (x: unknown, path: string, depth: number) => {
    if (depth > JSON_SCHEMA_MAX_DEPTH * 4 || typeof x !== 'object' || x === null) return;
    if (Array.isArray(x)) {
      x.forEach((item, i) => visit(item, `${path}/${i}`, depth + 1));
      return;
    }
    for (const [key, value] of Object.entries(x)) {
      if (key === 'pattern' && typeof value === 'string') out.push({ pattern: value, path: `${path}/pattern` });
      else visit(value, `${path}/${escape(key)}`, depth + 1);
    }
  };
  visit(root, '#', 0);
  return out;
}

class Walker {
  readonly #root: Schema;
  #optionalCost = 0;
  readonly #refs = new Set<string>();
  constructor(root: Schema) {
    this.#root = root;
  }

  node(schema: unknown, path: string, depth: number): void {
    if (depth > JSON_SCHEMA_MAX_DEPTH) {
      throw new GrammarError(`The JSON Schema nests more than ${JSON_SCHEMA_MAX_DEPTH} levels deep at ${path}`, { limit: 'depth', path });
    }
    if (!isObject(schema)) {
      const keyword = path.slice(path.lastIndexOf('/') + 1);
      fail(keyword, path, typeof schema === 'boolean' ? 'a boolean schema is not supported here; use {} or leave it out' : 'a schema must be an object');
    }
    for (const key of Object.keys(schema)) {
      if (!KNOWN.has(key)) fail(key, `${path}/${escape(key)}`, 'unknown keyword (llama.cpp\'s converter would ignore it)');
    }
    const has = (k: string) => Object.hasOwn(schema, k);
    const at = (k: string) => `${path}/${escape(k)}`;
    for (const k of ['not', 'if', 'then', 'else', '$dynamicRef', '$recursiveRef', '$anchor', '$dynamicAnchor', 'nullable', 'discriminator']) {
      if (has(k)) fail(k, at(k), 'not supported by llama.cpp\'s converter');
    }
    // Only these may sit next to the keyword that decides the node's kind.
    const only = (allowed: readonly string[], why: string) => {
      for (const k of Object.keys(schema)) {
        if (!METADATA.has(k) && !DEFINITIONS.has(k) && !allowed.includes(k)) fail(k, at(k), why);
      }
    };
    // The converter's order (common/json-schema.cpp build_node): $ref, oneOf/anyOf, a list of types, const,
    // enum, then the type.
    if (has('$ref')) {
      only(['$ref'], 'ignored next to "$ref" by llama.cpp\'s converter (put it in the referenced schema)');
      this.#ref(schema.$ref, at('$ref'), depth);
      return;
    }
    if (has('oneOf') || has('anyOf')) {
      const key = has('oneOf') ? 'oneOf' : 'anyOf';
      only([key], `ignored next to "${key}" by llama.cpp's converter (put it in each alternative)`);
      this.#list(schema[key], at(key), depth);
      return;
    }
    const type = schema.type;
    if (Array.isArray(type)) {
      if (type.length === 0) fail('type', at('type'), 'an empty list of types');
      type.forEach((t, i) => {
        if (typeof t !== 'string' || !TYPES.has(t)) fail('type', `${at('type')}/${i}`, `unknown type ${JSON.stringify(t)}`);
        this.node({ ...schema, type: t }, path, depth);
      });
      return;
    }
    if (type !== undefined && (typeof type !== 'string' || !TYPES.has(type))) fail('type', at('type'), `unknown type ${JSON.stringify(type)}`);
    if (has('const') || has('enum')) {
      const key = has('const') ? 'const' : 'enum';
      only([key, 'type'], `ignored next to "${key}" by llama.cpp's converter`);
      if (key === 'enum' && (!Array.isArray(schema.enum) || schema.enum.length === 0)) fail('enum', at('enum'), 'must be a non-empty array');
      return;
    }
    // A typed object with allOf and no properties of its own is merged from allOf (build_node does the same).
    const ownProperties = has('properties') || (has('additionalProperties') && schema.additionalProperties !== true);
    const kind = type === 'object' && !ownProperties && has('allOf') ? 'allOf' : (type ?? this.#implied(schema));
    // Keywords for other types never apply to a value of this kind: ignoring them is right. Those for this kind
    // must each be honoured.
    const applicable = kind === 'any' ? ALL_TYPED : kind === 'boolean' || kind === 'null' || kind === 'allOf' ? [] : BY_TYPE[kind];
    const honoured = HONOURED[kind] ?? [];
    for (const k of [...applicable, 'allOf']) {
      if (has(k) && !honoured.includes(k)) {
        fail(k, at(k), kind === 'any' ? 'ignored by llama.cpp\'s converter in a schema without a type' : `not supported for type ${kind} by llama.cpp's converter`);
      }
    }
    switch (kind) {
      case 'allOf':
        this.#allOf(schema, path, depth);
        return;
      case 'object':
        this.#object(schema, path, depth);
        return;
      case 'array':
        this.#array(schema, path, depth);
        return;
      case 'string':
        this.#string(schema, path);
        return;
      case 'integer':
        for (const [a, b] of [['minimum', 'exclusiveMinimum'], ['maximum', 'exclusiveMaximum']]) {
          if (has(a) && has(b)) fail(b, at(b), `ignored next to "${a}" by llama.cpp's converter`);
        }
        for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']) {
          const value = schema[k];
          if (has(k) && (typeof value !== 'number' || !Number.isFinite(value) || Math.abs(value) > Number.MAX_SAFE_INTEGER)) {
            fail(k, at(k), 'must be a number within ±2^53');
          }
        }
        return;
      default:
        return;
    }
  }

  /** The kind the converter picks for a schema without a type, from its structural keywords. */
  #implied(schema: Schema): string {
    const has = (k: string) => Object.hasOwn(schema, k);
    if (has('properties') || (has('additionalProperties') && schema.additionalProperties !== true)) return 'object';
    if (has('allOf')) return 'allOf';
    if (has('items') || has('prefixItems')) return 'array';
    if (has('pattern') || has('minLength') || has('maxLength') || (typeof schema.format === 'string' && FORMATS.has(schema.format))) return 'string';
    return 'any';
  }

  #list(value: unknown, path: string, depth: number): void {
    const keyword = path.slice(path.lastIndexOf('/') + 1);
    if (!Array.isArray(value) || value.length === 0) fail(keyword, path, 'must be a non-empty array of schemas');
    value.forEach((s, i) => this.node(s, `${path}/${i}`, depth + 1));
  }

  #ref(ref: unknown, path: string, depth: number): void {
    if (typeof ref !== 'string' || !ref.startsWith('#/')) {
      fail('$ref', path, 'only references into the same document ("#/$defs/name") are supported');
    }
    if (/[~%]/.test(ref)) fail('$ref', path, 'escaped JSON Pointer segments (~0, ~1, %xx) are not supported by llama.cpp\'s converter');
    if (this.#refs.has(ref)) return;
    this.#refs.add(ref);
    let target: unknown = this.#root;
    for (const segment of ref.slice(2).split('/')) {
      if (isObject(target) && Object.hasOwn(target, segment)) target = target[segment];
      else if (Array.isArray(target) && /^\d+$/.test(segment) && Number(segment) < target.length) target = target[Number(segment)];
      else fail('$ref', path, `${ref} does not resolve in this schema`);
    }
    this.node(target, ref, depth + 1);
  }

  #object(schema: Schema, path: string, depth: number): void {
    const props = schema.properties;
    if (props !== undefined && !isObject(props)) fail('properties', `${path}/properties`, 'must be an object');
    for (const [name, s] of Object.entries(props ?? {})) this.node(s, `${path}/properties/${escape(name)}`, depth + 1);
    if (schema.required !== undefined) {
      if (!Array.isArray(schema.required) || schema.required.some((r) => typeof r !== 'string')) {
        fail('required', `${path}/required`, 'must be an array of property names');
      }
      for (const name of schema.required as string[]) {
        if (!props || !Object.hasOwn(props, name)) {
          fail('required', `${path}/required`, `"${name}" is not in "properties" (llama.cpp's converter would not require it)`);
        }
      }
    }
    const extra = schema.additionalProperties;
    if (extra !== undefined && typeof extra !== 'boolean') this.node(extra, `${path}/additionalProperties`, depth + 1);
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const optional = Object.keys(props ?? {}).filter((name) => !required.has(name)).length;
    if (optional > JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES) {
      throw new GrammarError(
        `The object at ${path} has ${optional} optional properties, more than ${JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES} ` +
          '(llama.cpp\'s converter takes time cubic in their number)', { limit: 'properties', keyword: 'properties', path },
      );
    }
    this.#optionalCost += optional ** 3;
    if (this.#optionalCost > MAX_OPTIONAL_COST) {
      throw new GrammarError(
        `The schema's objects have too many optional properties in all (at ${path}; at most the work of ` +
          `${4} objects of ${JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES}: llama.cpp's converter takes time cubic in them)`,
        { limit: 'properties', keyword: 'properties', path },
      );
    }
  }

  #allOf(schema: Schema, path: string, depth: number): void {
    const list = schema.allOf;
    if (!Array.isArray(list) || list.length === 0) fail('allOf', `${path}/allOf`, 'must be a non-empty array of schemas');
    if (schema.type !== undefined && schema.type !== 'object') fail('allOf', `${path}/allOf`, 'llama.cpp\'s converter merges only objects or enums');
    const kinds = new Set<string>();
    list.forEach((component, i) => {
      const p = `${path}/allOf/${i}`;
      let c: unknown = component;
      for (let hops = 0; isObject(c) && typeof c.$ref === 'string' && hops < 32; hops++) {
        this.#ref(c.$ref, `${p}/$ref`, depth);
        c = resolve(this.#root, c.$ref);
      }
      if (!isObject(c)) fail('allOf', p, 'each component must be a schema object');
      if (Object.hasOwn(c, 'enum')) {
        kinds.add('enum');
        this.node(c, p, depth + 1);
        return;
      }
      kinds.add('object');
      for (const k of Object.keys(c)) {
        if (!METADATA.has(k) && !DEFINITIONS.has(k) && !['type', 'properties', 'required'].includes(k)) {
          fail(k, `${p}/${escape(k)}`, 'llama.cpp\'s converter merges only the properties of allOf components');
        }
      }
      if (c.type !== undefined && c.type !== 'object') fail('type', `${p}/type`, 'allOf components must be objects or enums');
      this.#object(c, p, depth + 1);
    });
    if (kinds.size > 1) fail('allOf', `${path}/allOf`, 'components must be all objects or all enums');
  }

  #array(schema: Schema, path: string, depth: number): void {
    const has = (k: string) => Object.hasOwn(schema, k);
    const tuple = has('prefixItems') || Array.isArray(schema.items);
    if (has('prefixItems') && has('items')) fail('items', `${path}/items`, 'next to "prefixItems", llama.cpp\'s converter would drop "prefixItems"');
    if (tuple) {
      for (const k of ['minItems', 'maxItems']) if (has(k)) fail(k, `${path}/${k}`, 'ignored for a tuple (prefixItems) by llama.cpp\'s converter');
      const key = has('prefixItems') ? 'prefixItems' : 'items';
      this.#list(schema[key], `${path}/${key}`, depth);
    } else if (has('items')) {
      this.node(schema.items, `${path}/items`, depth + 1);
    }
    count(schema, 'minItems', path);
    count(schema, 'maxItems', path);
    ordered(schema, 'minItems', 'maxItems', path);
  }

  #string(schema: Schema, path: string): void {
    const has = (k: string) => Object.hasOwn(schema, k);
    const groups = [['pattern'], ['format'], ['minLength', 'maxLength']].filter((g) => g.some(has));
    if (groups.length > 1) {
      const [first, second] = groups;
      const k = second.find(has)!;
      fail(k, `${path}/${k}`, `ignored next to "${first.find(has)}" by llama.cpp's converter`);
    }
    if (has('pattern') && typeof schema.pattern !== 'string') fail('pattern', `${path}/pattern`, 'must be a string');
    if (has('format') && (typeof schema.format !== 'string' || !FORMATS.has(schema.format))) {
      fail('format', `${path}/format`, `llama.cpp's converter knows only ${[...FORMATS].join(', ')}`);
    }
    count(schema, 'minLength', path);
    count(schema, 'maxLength', path);
    ordered(schema, 'minLength', 'maxLength', path);
  }
}

/** What the converter reads for each kind, beyond `type`. */
const HONOURED: Record<string, readonly string[]> = {
  object: ['properties', 'required', 'additionalProperties'],
  array: ['items', 'prefixItems', 'minItems', 'maxItems'],
  string: ['pattern', 'format', 'minLength', 'maxLength'],
  integer: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
  allOf: ['allOf'],
};

function count(schema: Schema, key: string, path: string): void {
  if (!Object.hasOwn(schema, key)) return;
  const value = schema[key];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_REPEAT) {
    fail(key, `${path}/${key}`, `must be an integer from 0 to ${MAX_REPEAT} (llama.cpp's repetition limit)`);
  }
}

/** A minimum above its maximum matches nothing, and llama.cpp's parser would loop on the {min,max} it becomes. */
function ordered(schema: Schema, min: string, max: string, path: string): void {
  if (Object.hasOwn(schema, min) && Object.hasOwn(schema, max) && (schema[min] as number) > (schema[max] as number)) {
    fail(min, `${path}/${min}`, `${String(schema[min])} is above "${max}" (${String(schema[max])}): nothing matches`);
  }
}

function resolve(root: Schema, ref: string): unknown {
  let target: unknown = root;
  for (const segment of ref.slice(2).split('/')) {
    target = isObject(target) ? target[segment] : Array.isArray(target) ? target[Number(segment)] : undefined;
  }
  return target;
}
