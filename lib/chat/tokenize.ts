// Segments to token ids. Template text is split at special-token texts (which become their ids); the raw text
// between them, template and content alike, is tokenized with special-token parsing off. Because llama.cpp's
// SPM tokenizer adds its space prefix to every raw fragment that starts the text or follows a special token,
// tokenizing fragment by fragment gives exactly what tokenizing the whole string with parseSpecial would,
// except that special-token text inside content stays plain text.
import type { Model } from '../model.js';
import type { Segment } from './template.js';

export type Piece = { special: number } | { text: string };

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const splitters = new WeakMap<Model, RegExp | null>();

function specialSplitter(model: Model): RegExp | null {
  let re = splitters.get(model);
  if (re === undefined) {
    const texts = [...model.specialTokens.keys()].filter((t) => t.length > 0).sort((a, b) => b.length - a.length);
    re = texts.length ? new RegExp(texts.map(escapeRegExp).join('|'), 'g') : null;
    splitters.set(model, re);
  }
  return re;
}

/** Splits segments into special tokens and raw text, merging adjacent raw text across segments. */
export function segmentsToPieces(model: Model, segments: readonly Segment[]): Piece[] {
  const pieces: Piece[] = [];
  const raw = (text: string) => {
    if (!text) return;
    const last = pieces[pieces.length - 1];
    if (last && 'text' in last) last.text += text;
    else pieces.push({ text });
  };
  const splitter = specialSplitter(model);
  for (const seg of segments) {
    if (seg.kind === 'content' || !splitter) {
      raw(seg.text);
      continue;
    }
    let at = 0;
    for (const m of seg.text.matchAll(splitter)) {
      raw(seg.text.slice(at, m.index));
      pieces.push({ special: model.specialTokens.get(m[0])! });
      at = m.index! + m[0].length;
    }
    raw(seg.text.slice(at));
  }
  return pieces;
}

/** Token ids for the segments; with `addBos`, BOS first unless the template already rendered it. */
export function tokenizeSegments(model: Model, segments: readonly Segment[], addBos: boolean): number[] {
  const out: number[] = [];
  for (const piece of segmentsToPieces(model, segments)) {
    if ('special' in piece) out.push(piece.special);
    else for (const id of model.tokenizeToArray(piece.text, { addBos: false, parseSpecial: false })) out.push(id);
  }
  const bos = model.tokens.bos;
  if (addBos && bos !== null && out[0] !== bos) out.unshift(bos);
  return out;
}
