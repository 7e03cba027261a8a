// SentencePiece's tokenizer.model without the sentencepiece library: a small schema-driven protobuf (proto2
// wire format) decoder and the part of sentencepiece_model.proto a converter needs. Unknown fields are
// skipped by wire type, as protobuf does, so models from newer trainers still read; a malformed or truncated
// file gets a ConvertError that says where.
import { ConvertError } from './error.js';

type Scalar = 'string' | 'bytes' | 'float' | 'int32' | 'bool' | 'enum';

interface Field {
  name: string;
  type: Scalar | Schema;
  repeated?: boolean;
}

/** Field number → field. */
interface Schema {
  readonly name: string;
  readonly fields: Readonly<Record<number, Field>>;
}

type Decoded = Record<string, unknown>;

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

const WIRE_OF: Record<Scalar, number> = {
  string: WIRE_LEN, bytes: WIRE_LEN, float: WIRE_FIXED32, int32: WIRE_VARINT, bool: WIRE_VARINT, enum: WIRE_VARINT,
};

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
    readonly file: string,
  ) {
    this.pos = start;
  }

  fail(what: string): never {
    throw new ConvertError(`${this.file} is not a valid SentencePiece model: ${what} (at byte ${this.pos})`, this.file);
  }

  /** A varint's low 32 bits (as an unsigned number) and whether any higher bit is set. */
  varint(): { lo: number; high: boolean } {
    let lo = 0;
    let high = false;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('it ends inside a number');
      const b = this.buf[this.pos++];
      if (i < 4) lo |= (b & 0x7f) << (7 * i);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        if (b & 0x70) high = true;
      } else if (b & 0x7f) high = true;
      if ((b & 0x80) === 0) return { lo: lo >>> 0, high };
    }
    this.fail('a number is longer than 10 bytes');
  }

  length(): number {
    const { lo, high } = this.varint();
    if (high || lo > this.end - this.pos) this.fail(`a field claims ${high ? 'more than 4 GiB' : `${lo} bytes`} but ${this.end - this.pos} remain`);
    return lo;
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT: this.varint(); return;
      case WIRE_FIXED64: this.advance(8); return;
      case WIRE_LEN: this.advance(this.length()); return;
      case WIRE_FIXED32: this.advance(4); return;
      default: this.fail(`wire type ${wire} (groups are not used by sentencepiece_model.proto)`);
    }
  }

  advance(n: number): void {
    if (n > this.end - this.pos) this.fail('it ends inside a field');
    this.pos += n;
  }
}

function decodeMessage(r: Reader, schema: Schema): Decoded {
  const out: Decoded = {};
  for (const f of Object.values(schema.fields)) if (f.repeated) out[f.name] = [];
  while (r.pos < r.end) {
    const key = r.varint();
    const number = key.lo >>> 3;
    const wire = key.lo & 7;
    if (key.high || number === 0) r.fail(`a bad field key in ${schema.name}`);
    const field = schema.fields[number];
    if (!field) {
      r.skip(wire);
      continue;
    }
    const expected = typeof field.type === 'string' ? WIRE_OF[field.type] : WIRE_LEN;
    if (wire !== expected) r.fail(`${schema.name}.${field.name} has wire type ${wire}, expected ${expected}`);
    let value: unknown;
    if (typeof field.type !== 'string') {
      const n = r.length();
      value = decodeMessage(new Reader(r.buf, r.pos, r.pos + n, r.file), field.type);
      r.pos += n;
    } else {
      switch (field.type) {
        case 'string': {
          const n = r.length();
          try {
            value = utf8.decode(r.buf.subarray(r.pos, r.pos + n));
          } catch {
            r.fail(`${schema.name}.${field.name} is not valid UTF-8`);
          }
          r.pos += n;
          break;
        }
        case 'bytes': {
          const n = r.length();
          value = r.buf.slice(r.pos, r.pos + n);
          r.pos += n;
          break;
        }
        case 'float': {
          r.advance(4);
          value = new DataView(r.buf.buffer, r.buf.byteOffset).getFloat32(r.pos - 4, true);
          break;
        }
        case 'int32':
        case 'enum':
          // negative int32 values are sign-extended to 64 bits on the wire; the low 32 bits carry them
          value = r.varint().lo | 0;
          break;
        case 'bool': {
          const v = r.varint();
          value = v.lo !== 0 || v.high;
          break;
        }
      }
    }
    if (field.repeated) (out[field.name] as unknown[]).push(value);
    else out[field.name] = value; // proto2: the last occurrence wins
  }
  return out;
}

/** SentencePiece.Type. */
export enum PieceType {
  NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
}

/** TrainerSpec.ModelType. */
export enum SentencePieceModelType {
  UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4,
}

const PIECE: Schema = {
  name: 'SentencePiece',
  fields: { 1: { name: 'piece', type: 'string' }, 2: { name: 'score', type: 'float' }, 3: { name: 'type', type: 'enum' } },
};

const TRAINER_SPEC: Schema = {
  name: 'TrainerSpec',
  fields: {
    3: { name: 'model_type', type: 'enum' },
    4: { name: 'vocab_size', type: 'int32' },
    24: { name: 'treat_whitespace_as_suffix', type: 'bool' },
    35: { name: 'byte_fallback', type: 'bool' },
    40: { name: 'unk_id', type: 'int32' },
    41: { name: 'bos_id', type: 'int32' },
    42: { name: 'eos_id', type: 'int32' },
    43: { name: 'pad_id', type: 'int32' },
    45: { name: 'unk_piece', type: 'string' },
    46: { name: 'bos_piece', type: 'string' },
    47: { name: 'eos_piece', type: 'string' },
    48: { name: 'pad_piece', type: 'string' },
  },
};

const NORMALIZER_SPEC: Schema = {
  name: 'NormalizerSpec',
  fields: {
    1: { name: 'name', type: 'string' },
    2: { name: 'precompiled_charsmap', type: 'bytes' },
    3: { name: 'add_dummy_prefix', type: 'bool' },
    4: { name: 'remove_extra_whitespaces', type: 'bool' },
    5: { name: 'escape_whitespaces', type: 'bool' },
  },
};

const MODEL_PROTO: Schema = {
  name: 'ModelProto',
  fields: {
    1: { name: 'pieces', type: PIECE, repeated: true },
    2: { name: 'trainer_spec', type: TRAINER_SPEC },
    3: { name: 'normalizer_spec', type: NORMALIZER_SPEC },
    5: { name: 'denormalizer_spec', type: NORMALIZER_SPEC },
  },
};

export interface SentencePiece {
  piece: string;
  /** f32, as stored. */
  score: number;
  type: PieceType;
}

export interface SentencePieceModel {
  pieces: SentencePiece[];
  trainer: {
    modelType: SentencePieceModelType;
    vocabSize?: number;
    byteFallback: boolean;
    treatWhitespaceAsSuffix: boolean;
    unkId: number;
    bosId: number;
    eosId: number;
    padId: number;
    unkPiece: string;
    bosPiece: string;
    eosPiece: string;
    padPiece: string;
  };
  normalizer: {
    name?: string;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
    precompiledCharsmapBytes: number;
  };
}

/** Decodes a tokenizer.model (`file` names it in errors). Defaults are sentencepiece_model.proto's. */
export function parseSentencePieceModel(bytes: Uint8Array, file = 'tokenizer.model'): SentencePieceModel {
  const m = decodeMessage(new Reader(bytes, 0, bytes.length, file), MODEL_PROTO);
  const rawPieces = m.pieces as Decoded[];
  if (rawPieces.length === 0) throw new ConvertError(`${file} is not a valid SentencePiece model: it has no pieces`, file);
  const pieces = rawPieces.map((p, i): SentencePiece => {
    if (typeof p.piece !== 'string') throw new ConvertError(`${file}: piece ${i} has no text`, file);
    const type = (p.type as number | undefined) ?? PieceType.NORMAL;
    if (!(type in PieceType)) throw new ConvertError(`${file}: piece ${i} ("${p.piece}") has the unknown type ${type}`, file);
    return { piece: p.piece, score: (p.score as number | undefined) ?? 0, type };
  });
  const t = (m.trainer_spec ?? {}) as Decoded;
  const n = (m.normalizer_spec ?? {}) as Decoded;
  return {
    pieces,
    trainer: {
      modelType: (t.model_type as number | undefined) ?? SentencePieceModelType.UNIGRAM,
      vocabSize: t.vocab_size as number | undefined,
      byteFallback: (t.byte_fallback as boolean | undefined) ?? false,
      treatWhitespaceAsSuffix: (t.treat_whitespace_as_suffix as boolean | undefined) ?? false,
      unkId: (t.unk_id as number | undefined) ?? 0,
      bosId: (t.bos_id as number | undefined) ?? 1,
      eosId: (t.eos_id as number | undefined) ?? 2,
      padId: (t.pad_id as number | undefined) ?? -1,
      unkPiece: (t.unk_piece as string | undefined) ?? '<unk>',
      bosPiece: (t.bos_piece as string | undefined) ?? '<s>',
      eosPiece: (t.eos_piece as string | undefined) ?? '</s>',
      padPiece: (t.pad_piece as string | undefined) ?? '<pad>',
    },
    normalizer: {
      name: n.name as string | undefined,
      addDummyPrefix: (n.add_dummy_prefix as boolean | undefined) ?? true,
      removeExtraWhitespaces: (n.remove_extra_whitespaces as boolean | undefined) ?? true,
      escapeWhitespaces: (n.escape_whitespaces as boolean | undefined) ?? true,
      precompiledCharsmapBytes: ((n.precompiled_charsmap as Uint8Array | undefined) ?? new Uint8Array()).length,
    },
  };
}
