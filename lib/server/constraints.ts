// Structured output as three APIs ask for it: OpenAI's `response_format`, vLLM's `guided_*` fields and
// llama-server's `grammar` / `json_schema`. Each becomes one grammar (GBNF text) or one JSON Schema for the
// generation's `grammar` / `jsonSchema` options; a request may use one of them. The field is kept with it so
// that a grammar or schema the library refuses is answered 400 naming the field the client sent.
import { bad, HttpError } from './http-error.js';
import { RegexError, regexToGbnf } from './regex.js';

/** What the answer is constrained to, and the request field that asked for it. */
export type Constraint =
  | { field: string; grammar: string }
  | { field: string; jsonSchema: Record<string, unknown> };

/** The request fields that constrain the answer (at most one per request). */
export const CONSTRAINT_FIELDS = [
  'response_format', 'guided_json', 'guided_grammar', 'guided_choice', 'guided_regex', 'grammar', 'json_schema',
] as const;

/**
 * Any JSON object, as `response_format: { type: 'json_object' }` asks: llama.cpp's grammars/json.gbnf with an
 * object at the root. Whitespace between tokens is bounded (a newline and up to 20 spaces or tabs), so that
 * a model cannot fill its answer with blanks.
 */
export const JSON_OBJECT_GBNF = String.raw`root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,16})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
`;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A GBNF string literal of `text` (every character escaped that GBNF would read otherwise). */
export function gbnfLiteral(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (cp < 0x20 || cp === 0x7f) out += `\\x${cp.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** A schema given as an object, or (vLLM accepts both) as JSON text. */
function schemaOf(param: string, value: unknown): Record<string, unknown> {
  let schema = value;
  if (typeof value === 'string') {
    try {
      schema = JSON.parse(value);
    } catch {
      throw bad(param, 'a JSON Schema (an object, or its JSON text)', value);
    }
  }
  // `true` is the schema that allows anything; `{}` says the same.
  if (schema === true) return {};
  if (!isObject(schema)) throw bad(param, 'a JSON Schema (an object, or its JSON text)', value);
  return schema;
}

function responseFormat(value: unknown): Constraint | undefined {
  const param = 'response_format';
  if (!isObject(value)) throw bad(param, "an object such as { type: 'json_object' }", value);
  const type = value.type;
  const only = (keys: string[]) => {
    for (const key of Object.keys(value)) {
      if (!keys.includes(key)) {
        throw new HttpError(400, `Unrecognized request argument supplied: ${param}.${key}`, { param: `${param}.${key}`, code: 'unknown_parameter' });
      }
    }
  };
  switch (type) {
    case 'text':
      only(['type']);
      return undefined;
    case 'json_object':
      only(['type']);
      return { field: param, grammar: JSON_OBJECT_GBNF };
    case 'json_schema': {
      only(['type', 'json_schema']);
      const spec = value.json_schema;
      const at = `${param}.json_schema`;
      if (!isObject(spec)) throw bad(at, 'an object { name, schema, strict?, description? }', spec);
      for (const key of Object.keys(spec)) {
        if (!['name', 'schema', 'strict', 'description'].includes(key)) {
          throw new HttpError(400, `Unrecognized request argument supplied: ${at}.${key}`, { param: `${at}.${key}`, code: 'unknown_parameter' });
        }
      }
      // OpenAI's rule for the name; the name and description only label the schema.
      if (typeof spec.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(spec.name)) {
        throw bad(`${at}.name`, 'a name of 1 to 64 letters, digits, underscores and dashes', spec.name);
      }
      if (spec.description !== undefined && spec.description !== null && typeof spec.description !== 'string') {
        throw bad(`${at}.description`, 'a string', spec.description);
      }
      // strict: false lets OpenAI's answer leave the schema; this server always holds the answer to it, which
      // is what strict: true asks and what a non-strict schema hopes for.
      if (spec.strict !== undefined && spec.strict !== null && typeof spec.strict !== 'boolean') {
        throw bad(`${at}.strict`, 'a boolean', spec.strict);
      }
      // OpenAI: without a schema the answer is any JSON object.
      if (spec.schema === undefined || spec.schema === null) return { field: param, grammar: JSON_OBJECT_GBNF };
      return { field: param, jsonSchema: schemaOf(`${at}.schema`, spec.schema) };
    }
    default:
      throw bad(`${param}.type`, "'text', 'json_object' or 'json_schema'", type);
  }
}

/** The one constraint `body` asks for, or undefined; 400 when it asks for two or gives a bad value. */
export function parseConstraint(body: Record<string, unknown>): Constraint | undefined {
  const given = CONSTRAINT_FIELDS.filter((key) => body[key] !== undefined && body[key] !== null);
  // `response_format: { type: 'text' }` asks for nothing; it does not count against another field.
  const asking = given.filter((key) => !(key === 'response_format' && isObject(body[key]) && body[key].type === 'text'));
  if (asking.length > 1) {
    throw new HttpError(400, `'${asking[0]}' and '${asking[1]}' both constrain the answer: send one of them.`, {
      param: asking[1], code: 'invalid_value',
    });
  }
  for (const key of given) {
    const value = body[key];
    switch (key) {
      case 'response_format': {
        const c = responseFormat(value);
        if (c) return c;
        break;
      }
      case 'guided_json':
      case 'json_schema':
        return { field: key, jsonSchema: schemaOf(key, value) };
      case 'guided_grammar':
      case 'grammar':
        if (typeof value !== 'string' || value.trim().length === 0) throw bad(key, 'a GBNF grammar (text, with a rule named root)', value);
        return { field: key, grammar: value };
      case 'guided_choice': {
        if (!Array.isArray(value) || value.length === 0 || !value.every((s) => typeof s === 'string')) {
          throw bad(key, 'a non-empty array of strings', value);
        }
        return { field: key, grammar: `root ::= ${[...new Set(value as string[])].map(gbnfLiteral).join(' | ')}\n` };
      }
      case 'guided_regex': {
        if (typeof value !== 'string') throw bad(key, 'a regular expression (a string)', value);
        try {
          return { field: key, grammar: regexToGbnf(value) };
        } catch (error) {
          if (error instanceof RegexError) {
            throw new HttpError(400, error.message, { param: key, code: error.feature === 'syntax' ? 'invalid_value' : 'unsupported_parameter' });
          }
          throw error;
        }
      }
    }
  }
  return undefined;
}
