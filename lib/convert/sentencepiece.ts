// SentencePiece's tokenizer.model without the sentencepiece library: upstream's sentencepiece_model.proto (proto2,
// next to this file) compiled by protoc-gen-es into sentencepiece_model_pb.ts, and decoded by @bufbuild/protobuf.
// To regenerate after updating the .proto (from lib/convert/, with @bufbuild/buf and @bufbuild/protoc-gen-es of
// the same version as @bufbuild/protobuf on PATH):
//   buf generate . --path sentencepiece_model.proto \
//     --template '{"version":"v2","plugins":[{"local":"protoc-gen-es","out":".","opt":["target=ts","import_extension=js"]}]}'
//
// The library decodes well-formed files, but it trusts the framing of a hostile one: a field with the wrong wire
// type is read as if it had the right one, a length with bits above 32 is cut to its low 32 bits, a sub-message
// may run past its parent, and proto2 strings that are not UTF-8 become U+FFFD. So WireChecker walks the file
// first with the library's reader and the generated descriptors, and a malformed or truncated file gets a
// ConvertError that says where instead of a garbled vocabulary. Unknown fields are skipped by wire type, as
// protobuf does, so models from newer trainers still read.
import { isUtf8 } from 'node:buffer';
import { create, fromBinary, isFieldSet, ScalarType, type DescField, type DescMessage, type Message } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { ConvertError } from './error.js';
import {
  ModelProto_SentencePiece_Type as PieceType,
  ModelProto_SentencePieceSchema,
  ModelProtoSchema,
  NormalizerSpecSchema,
  TrainerSpec_ModelType as SentencePieceModelType,
  TrainerSpecSchema,
  type ModelProto,
} from './sentencepiece_model_pb.js';

/** SentencePiece.Type and TrainerSpec.ModelType, as sentencepiece_model.proto declares them. */
export { PieceType, SentencePieceModelType };

/**
 * The strings this module hands on, which end up as GGUF strings: they must be valid UTF-8. proto2 does not ask
 * that of a string field, and the others (corpus paths and the like) are never read, so they may be anything.
 */
const UTF8_CHECKED: ReadonlySet<DescField> = new Set([
  ModelProto_SentencePieceSchema.field.piece,
  TrainerSpecSchema.field.unkPiece,
  TrainerSpecSchema.field.bosPiece,
  TrainerSpecSchema.field.eosPiece,
  TrainerSpecSchema.field.padPiece,
  NormalizerSpecSchema.field.name,
]);

function scalarWireType(scalar: ScalarType): WireType {
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WireType.LengthDelimited;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    default:
      return WireType.Varint;
  }
}

/** The wire type a field is written with (a packed repeated number is length-delimited as well). */
function wireTypeOf(field: DescField): WireType {
  switch (field.fieldKind) {
    case 'scalar':
      return scalarWireType(field.scalar);
    case 'enum':
      return WireType.Varint;
    case 'list':
      return field.listKind === 'scalar' ? scalarWireType(field.scalar) : field.listKind === 'enum' ? WireType.Varint : WireType.LengthDelimited;
    default:
      return WireType.LengthDelimited;
  }
}

const fieldsByNumber = new WeakMap<DescMessage, Map<number, DescField>>();
function fieldByNumber(desc: DescMessage, no: number): DescField | undefined {
  let fields = fieldsByNumber.get(desc);
  if (!fields) fieldsByNumber.set(desc, (fields = new Map(desc.fields.map((f) => [f.number, f]))));
  return fields.get(no);
}

/** Walks the wire format against the schema without building anything; throws where it is malformed. */
class WireChecker {
  private readonly r: BinaryReader;
  constructor(
    private readonly bytes: Uint8Array,
    private readonly file: string,
  ) {
    this.r = new BinaryReader(bytes);
  }

  private fail(what: string, at = this.r.pos): never {
    throw new ConvertError(`${this.file} is not a valid SentencePiece model: ${what} (at byte ${at})`, this.file);
  }

  /** A varint that ends by `end`, and whether it has bits above the low 32, which the reader drops. */
  private varint(end: number): { value: number; high: boolean } {
    const start = this.r.pos;
    let value = 0;
    try {
      value = this.r.uint32();
    } catch (e) {
      // the reader throws a RangeError past the end of the buffer, an Error for an 11th byte
      this.fail(e instanceof RangeError ? 'it ends inside a number' : 'a number is longer than 10 bytes', start);
    }
    if (this.r.pos > end) this.fail('it ends inside a number', start);
    let high = this.r.pos - start >= 5 && (this.bytes[start + 4]! & 0x70) !== 0;
    for (let i = start + 5; i < this.r.pos && !high; i++) high = (this.bytes[i]! & 0x7f) !== 0;
    return { value, high };
  }

  private length(end: number): number {
    const { value, high } = this.varint(end);
    const left = end - this.r.pos;
    if (high || value > left) this.fail(`a field claims ${high ? 'more than 4 GiB' : `${value} bytes`} but ${left} remain`);
    return value;
  }

  private advance(n: number, end: number): void {
    if (n > end - this.r.pos) this.fail('it ends inside a field');
    this.r.pos += n;
  }

  message(desc: DescMessage, end: number): void {
    const r = this.r;
    while (r.pos < end) {
      const at = r.pos;
      let no: number;
      let wire: WireType;
      try {
        [no, wire] = r.tag();
      } catch (e) {
        this.fail(e instanceof RangeError ? 'it ends inside a number' : `a bad field key in ${desc.name}`, at);
      }
      if (r.pos > end) this.fail('it ends inside a number', at);
      const field = fieldByNumber(desc, no);
      if (field) {
        const expected = wireTypeOf(field);
        const packed = field.fieldKind === 'list' && field.listKind !== 'message' && expected !== WireType.LengthDelimited;
        if (wire !== expected && !(packed && wire === WireType.LengthDelimited)) {
          this.fail(`${desc.name}.${field.name} has wire type ${wire}, expected ${expected}`);
        }
        const sub = field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message') ? field.message : undefined;
        if (sub) {
          const n = this.length(end);
          this.message(sub, r.pos + n);
          continue;
        }
        if (wire === WireType.LengthDelimited && UTF8_CHECKED.has(field)) {
          const n = this.length(end);
          if (!isUtf8(this.bytes.subarray(r.pos, r.pos + n))) this.fail(`${desc.name}.${field.name} is not valid UTF-8`);
          r.pos += n;
          continue;
        }
      }
      switch (wire) {
        case WireType.Varint: this.varint(end); break;
        case WireType.Bit64: this.advance(8, end); break;
        case WireType.LengthDelimited: this.advance(this.length(end), end); break;
        case WireType.Bit32: this.advance(4, end); break;
        default: this.fail(`wire type ${wire} (groups are not used by sentencepiece_model.proto)`);
      }
    }
  }
}

/** The last value of `field` that the closed enum did not know (proto2 keeps those as unknown fields). */
function unknownEnumValue(message: Message, field: DescField): number | undefined {
  const u = message.$unknown?.findLast((f) => f.no === field.number);
  return u && new BinaryReader(u.data).int32();
}

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
  new WireChecker(bytes, file).message(ModelProtoSchema, bytes.length);
  let m: ModelProto;
  try {
    m = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    // not expected after the walk; still a ConvertError rather than the library's own
    throw new ConvertError(`${file} is not a valid SentencePiece model: ${(e as Error).message}`, file, { cause: e });
  }
  if (m.pieces.length === 0) throw new ConvertError(`${file} is not a valid SentencePiece model: it has no pieces`, file);
  const { piece: pieceField, type: typeField } = ModelProto_SentencePieceSchema.field;
  const pieces = m.pieces.map((p, i): SentencePiece => {
    if (!isFieldSet(p, pieceField)) throw new ConvertError(`${file}: piece ${i} has no text`, file);
    const unknownType = unknownEnumValue(p, typeField);
    if (unknownType !== undefined) throw new ConvertError(`${file}: piece ${i} ("${p.piece}") has the unknown type ${unknownType}`, file);
    return { piece: p.piece, score: p.score, type: p.type };
  });
  const t = m.trainerSpec ?? create(TrainerSpecSchema);
  const n = m.normalizerSpec ?? create(NormalizerSpecSchema);
  return {
    pieces,
    trainer: {
      // an unknown model type is passed on as it is: the vocabulary does not depend on it
      modelType: unknownEnumValue(t, TrainerSpecSchema.field.modelType) ?? t.modelType,
      vocabSize: isFieldSet(t, TrainerSpecSchema.field.vocabSize) ? t.vocabSize : undefined,
      byteFallback: t.byteFallback,
      treatWhitespaceAsSuffix: t.treatWhitespaceAsSuffix,
      unkId: t.unkId,
      bosId: t.bosId,
      eosId: t.eosId,
      padId: t.padId,
      unkPiece: t.unkPiece,
      bosPiece: t.bosPiece,
      eosPiece: t.eosPiece,
      padPiece: t.padPiece,
    },
    normalizer: {
      name: isFieldSet(n, NormalizerSpecSchema.field.name) ? n.name : undefined,
      addDummyPrefix: n.addDummyPrefix,
      removeExtraWhitespaces: n.removeExtraWhitespaces,
      escapeWhitespaces: n.escapeWhitespaces,
      precompiledCharsmapBytes: n.precompiledCharsmap.length,
    },
  };
}
