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
    // a length with a bit above 32 set, which a uint32 read would cut to 1
    rejects([...key(1, 2), 0x81, 0x80, 0x80, 0x80, 0x10, ...str(1, 'a')], /claims more than 4 GiB/);
    // every field of the schema has its wire type checked, not only those read: the decoder would misread the rest
    rejects([...piece('a', 0), ...len(2, int(10, 1))], /TrainerSpec\.character_coverage has wire type 0, expected 5/);
    rejects([...len(1, [...str(1, 'a'), ...int(3, 9)])], /piece 0 \("a"\) has the unknown type 9/);
  });

  it('reads as protobuf does: U+FEFF is text, a repeated sub-message merges, unread strings need not be UTF-8', () => {
    const m = parseSentencePieceModel(Uint8Array.from([
      ...piece('\uFEFF▁a', -2),
      ...len(2, [...int(41, 7), ...key(1, 2), 2, 0xff, 0xfe]), // bos_id, and a corpus path (input) that is not UTF-8
      ...len(2, int(42, 9)),
    ]));
    expect(m.pieces).toEqual([{ piece: '\uFEFF▁a', score: -2, type: PieceType.NORMAL }]);
    expect(m.trainer).toMatchObject({ bosId: 7, eosId: 9 });
  });

  it('gives a model or a ConvertError for any corruption of the fixture, never another error', () => {
    const good = readFileSync(join(fixtureDir, 'hf', 'tokenizer.model'));
    let seed = 1;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    const outcomes = { parsed: 0, rejected: 0 };
    for (let i = 0; i < 1000; i++) {
      let bytes = Uint8Array.from(good);
      if (i % 3 === 0) bytes = bytes.subarray(0, rand(bytes.length));
      else if (i % 3 === 1) for (let k = 0; k < 1 + rand(4); k++) bytes[rand(bytes.length)] = rand(256);
      else bytes[rand(bytes.length)] ^= 1 << rand(8);
      try {
        parseSentencePieceModel(bytes, 'x.model');
        outcomes.parsed++;
      } catch (e) {
        if (!(e instanceof ConvertError)) throw new Error(`case ${i}: ${String(e)}`, { cause: e });
        outcomes.rejected++;
      }
    }
    expect(outcomes.parsed).toBeGreaterThan(0);
    expect(outcomes.rejected).toBeGreaterThan(0);
  });
});
