import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConvertError } from '../../dist/convert/convert.js';
import { parseSentencePieceModel, PieceType, SentencePieceModelType } from '../../dist/convert/sentencepiece.js';
import { fixtureDir } from '../helpers.js';

// Protobuf wire-format builders for hand-made models.
const varint = (n: bigint): number[] => {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v ? b | 0x80 : b);
  } while (v);
  return out;
};
const key = (field: number, wire: number) => varint(BigInt((field << 3) | wire));
const len = (field: number, bytes: number[]) => [...key(field, 2), ...varint(BigInt(bytes.length)), ...bytes];
const str = (field: number, s: string) => len(field, [...Buffer.from(s, 'utf8')]);
const f32 = (field: number, x: number) => {
  const b = Buffer.alloc(4);
  b.writeFloatLE(x);
  return [...key(field, 5), ...b];
};
const int = (field: number, n: number) => [...key(field, 0), ...varint(BigInt(n))];
const piece = (text: string, score: number, type?: number) => len(1, [...str(1, text), ...f32(2, score), ...(type ? int(3, type) : [])]);

describe('SentencePiece model decoding', () => {
  it('reads the fixture: pieces with scores and types, trainer and normalizer specs', () => {
    const m = parseSentencePieceModel(readFileSync(join(fixtureDir, 'hf', 'tokenizer.model')));
    expect(m.pieces).toHaveLength(2048);
    expect(m.pieces.slice(0, 4)).toEqual([
      { piece: '<unk>', score: 0, type: PieceType.UNKNOWN },
      { piece: '<s>', score: 0, type: PieceType.CONTROL },
      { piece: '</s>', score: 0, type: PieceType.CONTROL },
      { piece: '<0x00>', score: 0, type: PieceType.BYTE },
    ]);
    expect(m.pieces[260]).toEqual({ piece: '▁t', score: -1, type: PieceType.NORMAL });
    expect(m.pieces.filter((p) => p.type === PieceType.BYTE)).toHaveLength(256);
    expect(m.trainer).toMatchObject({ modelType: SentencePieceModelType.BPE, vocabSize: 2048, byteFallback: true, unkId: 0, bosId: 1, eosId: 2, padId: -1 });
    expect(m.normalizer).toMatchObject({ name: 'identity', addDummyPrefix: true, removeExtraWhitespaces: false, escapeWhitespaces: true });
  });

  it('applies proto2 defaults, negative int32s, and skips unknown fields of every wire type', () => {
    const bytes = Uint8Array.from([
      ...piece('<unk>', 0, 2), ...piece('▁你好', -1.5), ...piece('<pad>', 0, 5),
      ...key(99, 1), 1, 2, 3, 4, 5, 6, 7, 8, // unknown fixed64
      ...key(98, 5), 1, 2, 3, 4, // unknown fixed32
      ...str(97, 'ignored'),
      ...len(2, [...int(3, 1), ...int(43, -1), ...int(40, 0), ...int(1000, 7)]),
      ...len(3, [...int(3, 0)]),
    ]);
    const m = parseSentencePieceModel(bytes);
    expect(m.pieces.map((p) => [p.piece, p.score, p.type])).toEqual([['<unk>', 0, 2], ['▁你好', -1.5, 1], ['<pad>', 0, 5]]);
    expect(m.trainer).toMatchObject({ modelType: SentencePieceModelType.UNIGRAM, padId: -1, bosId: 1, byteFallback: false });
    expect(m.normalizer).toMatchObject({ addDummyPrefix: false, removeExtraWhitespaces: true, escapeWhitespaces: true });
  });

  it('rejects malformed files with a ConvertError that says where', () => {
    const good = [...piece('a', 0), ...piece('b', -1)];
    const rejects = (bytes: number[], message: RegExp) => {
      let error: unknown;
      try {
        parseSentencePieceModel(Uint8Array.from(bytes), 'x.model');
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ConvertError);
      expect((error as ConvertError).code).toBe('ERR_HUOZI_CONVERT');
      expect((error as Error).message).toMatch(message);
    };
    rejects(good.slice(0, -3), /x\.model is not a valid SentencePiece model: .*(ends inside|remain)/);
    rejects([...len(1, [...key(1, 2), 2, 0xff, 0xfe])], /SentencePiece\.piece is not valid UTF-8/);
    rejects([...key(1, 0), 1], /ModelProto\.pieces has wire type 0, expected 2/);
    rejects([...key(5, 3)], /wire type 3/);
    rejects([], /it has no pieces/);
    rejects([...Buffer.from('not a model at all, just text')], /not a valid SentencePiece model/);
  });
});
