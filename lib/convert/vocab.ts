// The vocabulary as LlamaModel.set_vocab writes it for a SentencePiece checkpoint: every piece of
// tokenizer.model with its score and type, added_tokens.json and tokenizer_config.json's added_tokens_decoder
// laid over them, and gguf-py's SpecialVocab (special token ids, add_bos/add_eos, chat template) from
// tokenizer.json, tokenizer_config.json and config.json, in the same order and with the same quirks.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConvertError } from './error.js';
import { isFile, readJsonFile, type Json } from './hf.js';
import type { SentencePieceModel } from './sentencepiece.js';

/** llama.cpp's token types (gguf-py's TokenType, SentencePieceTokenTypes). */
export enum TokenType {
  NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
}

export type ChatTemplateValue = string | { name: string; template: string }[];

export interface SpecialVocab {
  /** Special token ids by type (bos, eos, unk, sep, pad, cls, mask, eot, eom, ...), in the order found. */
  ids: Map<string, number>;
  /** add_<type>_token flags, in the order found. */
  add: Map<string, boolean>;
  chatTemplate?: ChatTemplateValue;
  normalizerLowercase?: boolean;
  normalizerStripAccents?: boolean;
}

export interface Vocabulary {
  model: SentencePieceModel;
  tokens: string[];
  scores: number[];
  types: TokenType[];
  /** tokenizer_config.json's add_prefix_space, when it says. */
  addSpacePrefix?: boolean;
  special: SpecialVocab;
  /** The extra SpecialVocab set_vocab adds for CodeLlama's 32016-token vocabulary. */
  codeLlama?: SpecialVocab;
  /** set_vocab's override for Granite's 49152-token vocabulary. */
  forceAddBosFalse: boolean;
}

const DEFAULT_SPECIAL_TYPES = ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'];

/** Python truthiness, for the ported conditions. */
function truthy(x: unknown): boolean {
  if (x === undefined || x === null || x === false || x === 0 || x === '') return false;
  if (Array.isArray(x)) return x.length > 0;
  if (typeof x === 'object') return Object.keys(x).length > 0;
  return true;
}

function isObject(x: unknown): x is Json {
  return x !== null && typeof x === 'object' && !Array.isArray(x);
}

/** TextModel.does_token_look_special. */
export function looksSpecial(token: string): boolean {
  return ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(token) ||
    (token.startsWith('<|') && token.endsWith('|>')) ||
    (token.startsWith('<｜') && token.endsWith('｜>')) ||
    (token.startsWith('<unused') && token.endsWith('>'));
}

/** gguf-py's SpecialVocab(path, load_merges=False, special_token_types, n_vocab). */
export async function loadSpecialVocab(dir: string, nVocab: number | undefined, types: readonly string[] = DEFAULT_SPECIAL_TYPES): Promise<SpecialVocab> {
  const sv: SpecialVocab = { ids: new Map(), add: new Map() };
  let specialTypes = [...types];
  const setSpecial = (typ: string, tid: unknown) => {
    if (typeof tid !== 'number' || !Number.isInteger(tid)) return;
    if (tid < 0) throw new ConvertError(`invalid value for special token type ${typ}: ${tid}`, dir);
    if (nVocab === undefined || tid < nVocab) {
      if (!sv.ids.has(typ)) sv.ids.set(typ, tid);
    }
    // else: out of range, skipped (the Python converter only warns)
  };
  const parseNormalizer = (normalizer: Json) => {
    const t = normalizer.type;
    if (t === 'Lowercase') sv.normalizerLowercase = true;
    else if (t === 'StripAccents') sv.normalizerStripAccents = true;
    else if (t === 'BertNormalizer') {
      if ('lowercase' in normalizer) sv.normalizerLowercase = normalizer.lowercase as boolean;
      if ('strip_accents' in normalizer) sv.normalizerStripAccents = normalizer.strip_accents as boolean;
    } else if (t === 'Sequence') {
      for (const n of (normalizer.normalizers ?? []) as Json[]) if (isObject(n)) parseNormalizer(n);
    }
  };

  // _try_load_from_tokenizer_json
  const tokenizer = await readJsonFile(join(dir, 'tokenizer.json'), true);
  let addedTokens: Json[] = [];
  if (tokenizer) {
    if (isObject(tokenizer.normalizer) && truthy(tokenizer.normalizer)) parseNormalizer(tokenizer.normalizer);
    const at = tokenizer.added_tokens;
    addedTokens = Array.isArray(at) ? (at.filter(isObject) as Json[]) : [];
  }
  const tcFile = join(dir, 'tokenizer_config.json');
  const tc = await readJsonFile(tcFile, true);
  if (tokenizer && truthy(tokenizer)) {
    const cfg = tc ?? {};
    let specialBos = cfg.bos_token;
    let specialCls = cfg.cls_token;
    let specialEos = cfg.eos_token;
    let specialSep = cfg.sep_token;
    if (!truthy(specialBos) && truthy(specialCls) && truthy(tc)) tc!.bos_token = specialBos = specialCls;
    if (!truthy(specialEos) && truthy(specialSep) && truthy(tc)) tc!.eos_token = specialEos = specialSep;
    const post = tokenizer.post_processor;
    if (isObject(post) && truthy(post)) {
      const processors = (Array.isArray(post.processors) ? post.processors : [post]) as Json[];
      for (const processor of processors) {
        if (!isObject(processor)) continue;
        if (processor.type === 'RobertaProcessing') {
          sv.add.set('bos', true);
          sv.add.set('eos', true);
          sv.add.set('sep', true);
          if (!truthy(specialCls) && truthy(tc)) {
            specialCls = ((processor.cls as unknown[] | undefined) ?? [specialBos])[0];
            tc!.cls_token = specialCls;
          }
          if (!truthy(specialSep) && truthy(tc)) {
            specialSep = ((processor.sep as unknown[] | undefined) ?? [specialEos])[0];
            tc!.sep_token = specialSep;
          }
          continue;
        }
        // The same crude reading of TemplateProcessing as gguf-py: simple templates only.
        if (processor.type === 'TemplateProcessing') {
          const single = (Array.isArray(processor.single) ? processor.single : []) as Json[];
          let pair = (Array.isArray(processor.pair) ? processor.pair : []) as Json[];
          const specialId = (item: Json | undefined) => (isObject(item?.SpecialToken) ? (item!.SpecialToken as Json).id : undefined);
          const sequenceId = (item: Json | undefined) => (isObject(item?.Sequence) ? (item!.Sequence as Json).id : undefined);
          let specialFirst: unknown;
          let specialLast: unknown;
          if (single.length > 1) {
            specialFirst = specialId(single[0]);
            if (truthy(specialFirst)) {
              if (!truthy(tc)) specialBos = specialFirst;
              else if (specialFirst !== specialBos && specialFirst !== specialCls) {
                if (!truthy(specialBos)) tc!.bos_token = specialBos = specialFirst;
                if (!truthy(specialCls)) tc!.cls_token = specialCls = specialFirst;
              }
              sv.add.set('bos', specialFirst === specialBos || specialFirst === specialCls);
            }
            specialLast = specialId(single[single.length - 1]);
            if (truthy(specialLast)) {
              if (!truthy(tc)) specialEos = specialLast;
              else if (specialLast !== specialEos) {
                if (!specialTypes.includes('eot')) {
                  specialTypes = [...specialTypes, 'eot'];
                  tc!.eot_token = specialEos;
                } else if (!specialTypes.includes('eom')) {
                  specialTypes = [...specialTypes, 'eom'];
                  tc!.eom_token = specialEos;
                }
                tc!.eos_token = specialEos = specialLast;
              }
              sv.add.set('eos', specialLast === specialEos);
            }
          }
          if (pair.length) {
            const seqStart = truthy(specialFirst) && specialId(pair[0]) === specialFirst ? 1 : 0;
            const seqStop = truthy(specialLast) && specialId(pair[pair.length - 1]) === specialLast ? pair.length - 1 : pair.length;
            pair = pair.slice(seqStart, seqStop);
            if (pair.length) {
              const a = sequenceId(pair[0]);
              const b = sequenceId(pair[pair.length - 1]);
              if (a === 'A' && b === 'B' && (pair = pair.slice(1, -1)).length) {
                let addSep = false;
                const entry = specialId(pair[0]);
                if (truthy(entry) && (entry === specialSep || entry === specialEos) && !truthy(specialLast)) addSep = true;
                if (pair.length === 2) {
                  const second = specialId(pair[1]);
                  if (truthy(second) && (second === specialSep || second === specialEos)) addSep = true;
                }
                sv.add.set('sep', addSep);
                if (addSep && !truthy(specialSep) && truthy(tc)) tc!.sep_token = specialEos;
              }
            }
          }
        }
      }
    }
  }
  if (truthy(tc)) {
    const cfg = tc!;
    let alt: ChatTemplateValue | undefined;
    const jinja = join(dir, 'chat_template.jinja');
    const jsonFile = join(dir, 'chat_template.json');
    if (await isFile(jinja)) {
      alt = await readFile(jinja, 'utf8');
      const extraDir = join(dir, 'additional_chat_templates');
      const extras = await readdir(extraDir).catch(() => [] as string[]);
      const names = extras.filter((f) => f.endsWith('.jinja')).sort();
      if (names.length) {
        const list = [{ name: 'default', template: alt }];
        for (const f of names) list.push({ name: f.slice(0, -'.jinja'.length), template: await readFile(join(extraDir, f), 'utf8') });
        alt = list;
      }
    } else if (await isFile(jsonFile)) {
      alt = (await readJsonFile(jsonFile)).chat_template as ChatTemplateValue | undefined;
    }
    const template = 'chat_template' in cfg ? cfg.chat_template : alt;
    if (typeof template === 'string' || Array.isArray(template)) sv.chatTemplate = template as ChatTemplateValue;
    for (const typ of specialTypes) {
      const addEntry = cfg[`add_${typ}_token`];
      if (typeof addEntry === 'boolean') sv.add.set(typ, addEntry);
      const entry = cfg[`${typ}_token`];
      let content: string;
      if (typeof entry === 'string') content = entry;
      else if (isObject(entry) && typeof entry.content === 'string') content = entry.content;
      else continue;
      setSpecial(typ, addedTokens.find((t) => t.content === content)?.id);
    }
  }

  // _try_load_from_config_json
  const config = await readJsonFile(join(dir, 'config.json'), true);
  if (config) {
    for (const typ of specialTypes) {
      let id = config[`${typ}_token_id`];
      if ((id === undefined || id === null) && isObject(config.text_config)) id = config.text_config[`${typ}_token_id`];
      setSpecial(typ, id);
    }
  }
  return sv;
}

/** Reads tokenizer.model and the files laid over it, as _create_vocab_sentencepiece does. */
export async function readVocabulary(dir: string, vocabSize: number | undefined): Promise<Vocabulary> {
  if ((await isFile(join(dir, 'tekken.json'))) && !(await isFile(join(dir, 'tokenizer.json')))) {
    throw new ConvertError(`${dir} has a Mistral tekken.json tokenizer, which this converter does not read`, join(dir, 'tekken.json'));
  }
  const tcFile = join(dir, 'tokenizer_config.json');
  const tc = await readJsonFile(tcFile, true);
  let addSpacePrefix: boolean | undefined;
  if (tc) {
    if (tc.add_prefix_space !== undefined && tc.add_prefix_space !== null) addSpacePrefix = Boolean(tc.add_prefix_space);
    if (tc.tokenizer_class === 'HybridDNATokenizer') throw new ConvertError(`${tcFile}: HybridDNATokenizer is not supported`, tcFile);
  }
  const spFile = join(dir, 'tokenizer.model');
  if (!(await isFile(spFile))) {
    throw new ConvertError(
      `${dir} has no tokenizer.model; this converter reads SentencePiece vocabularies only ` +
        '(a tokenizer.json-only BPE vocabulary, as in Llama 3, needs convert_hf_to_gguf.py)',
      spFile,
    );
  }
  // sentencepiece.js loads @bufbuild/protobuf (~50 ms): a conversion needs it, `import 'huozi-gguf'` does not.
  const { parseSentencePieceModel, PieceType } = await import('./sentencepiece.js');
  const model = parseSentencePieceModel(await readFile(spFile), spFile);
  const n = vocabSize || model.pieces.length;

  const tokens: string[] = Array.from({ length: n }, (_, i) => `[PAD${i}]`);
  const scores: number[] = new Array(n).fill(-10000.0);
  const types: TokenType[] = new Array(n).fill(TokenType.UNUSED);
  for (let id = 0; id < model.pieces.length && id < n; id++) {
    const p = model.pieces[id];
    tokens[id] = p.piece;
    scores[id] = p.score;
    types[id] =
      p.type === PieceType.UNKNOWN ? TokenType.UNKNOWN
      : p.type === PieceType.CONTROL ? TokenType.CONTROL
      : p.type === PieceType.UNUSED ? TokenType.UNUSED
      : p.type === PieceType.BYTE ? TokenType.BYTE
      : TokenType.NORMAL; // user-defined pieces too: the Python converter asks only IsUnknown/IsControl/IsUnused/IsByte
  }

  const addedFile = join(dir, 'added_tokens.json');
  const added = await readJsonFile(addedFile, true);
  if (added) {
    for (const [text, id] of Object.entries(added)) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new ConvertError(`${addedFile}: "${text}" has the id ${JSON.stringify(id)}`, addedFile);
      if (id >= n) continue; // out of range: ignored, as the Python converter does (with a warning)
      tokens[id] = text;
      scores[id] = -1000.0;
      types[id] = TokenType.USER_DEFINED;
    }
  }
  const decoder = tc?.added_tokens_decoder;
  if (decoder !== undefined && decoder !== null) {
    if (!isObject(decoder)) throw new ConvertError(`${tcFile}: added_tokens_decoder is not an object`, tcFile);
    for (const [key, data] of Object.entries(decoder)) {
      const id = Number(key);
      if (!/^\s*[-+]?\d+\s*$/.test(key) || id < 0) throw new ConvertError(`${tcFile}: added_tokens_decoder has the id "${key}"`, tcFile);
      if (!isObject(data) || typeof data.content !== 'string') throw new ConvertError(`${tcFile}: added token ${key} has no content`, tcFile);
      if (id >= n) continue;
      let token = data.content;
      if (truthy(data.special) || looksSpecial(token)) types[id] = TokenType.CONTROL;
      else {
        token = token.replaceAll('\u2581', ' '); // user-defined tokens are stored pre-normalized
        types[id] = TokenType.USER_DEFINED;
      }
      scores[id] = -1000.0;
      tokens[id] = token;
    }
  }

  const special = await loadSpecialVocab(dir, tokens.length);
  let codeLlama: SpecialVocab | undefined;
  if (vocabSize === 32016) {
    // CodeLlama's infill tokens (set_vocab hard-codes them); only eot has a GGUF key among them.
    codeLlama = await loadSpecialVocab(dir, undefined, ['prefix', 'suffix', 'middle', 'eot']);
    for (const [typ, id] of [['prefix', 32007], ['suffix', 32008], ['middle', 32009], ['eot', 32010]] as const) {
      if (!codeLlama.ids.has(typ)) codeLlama.ids.set(typ, id);
    }
  }
  return { model, tokens, scores, types, addSpacePrefix, special, codeLlama, forceAddBosFalse: vocabSize === 49152 };
}
