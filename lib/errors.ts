/**
 * Typed errors. Every error this package throws has a stable `.code`:
 * validation failures are `TypeError` (`ERR_INVALID_ARG_TYPE`) or `RangeError` (`ERR_OUT_OF_RANGE`),
 * runtime failures are subclasses of {@link HuoziError}.
 */
export class HuoziError extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** llama.cpp could not load the model file (missing, unreadable, unsupported or corrupt). */
export class ModelLoadError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_MODEL_LOAD', options);
  }
}

/** llama.cpp could not create a context (usually: not enough memory for the requested size). */
export class ContextCreateError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_CONTEXT_CREATE', options);
  }
}

/** The tokens would not fit in the context. */
export class ContextOverflowError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_CONTEXT_OVERFLOW', options);
  }
}

/** llama_decode failed. */
export class DecodeError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_DECODE', options);
  }
}

/** The object was used after `dispose()`. */
export class DisposedError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_DISPOSED', options);
  }
}

/** The operation was stopped through its `signal`. `code` is `ABORT_ERR`, like Node's own AbortError. */
export class AbortError extends HuoziError {
  constructor(message = 'The operation was aborted', options?: ErrorOptions) {
    super(message, 'ABORT_ERR', options);
  }
}

/** A native call was made while the object was busy (lib/ normally queues calls, so this is a bug report). */
export class BusyError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_BUSY', options);
  }
}

/** A GGUF file is malformed, or would make llama.cpp abort. `offset` is where in the file the problem is. */
export class GgufError extends HuoziError {
  readonly offset: number;
  constructor(message: string, offset: number, options?: ErrorOptions) {
    super(`${message} (at byte ${offset})`, 'ERR_HUOZI_GGUF', options);
    this.offset = offset;
  }
}

/** The request needs more memory than the machine has available (checked before llama.cpp allocates it). */
export class InsufficientMemoryError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_INSUFFICIENT_MEMORY', options);
  }
}

/** The native addon could not be loaded. */
export class BindingError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_BINDING', options);
  }
}

/**
 * A grammar that cannot constrain generation. From {@link Grammar.compile} (and the `grammar` option): a syntax
 * error, an undefined rule, a missing root, left recursion, or one of the limits that keep parsing safe
 * (`limit`: `bytes`, `depth`, `rules` or `elements`); `position` is the byte offset in the GBNF text (0 when the
 * problem is the grammar as a whole), `line` and `column` (1-based, the column in bytes) the same place, `rule`
 * the rule concerned. From {@link Grammar.fromJsonSchema} (and `jsonSchema`): a keyword llama.cpp's converter would
 * ignore or cannot honour, named by `keyword`, at the JSON Pointer `path` (`#/properties/age/multipleOf`); or
 * `limit` `depth` for a schema nested too deeply. While generating: the grammar allows no next token (it matches
 * nothing more, or it is complete and `stopAtEog` is false); the error then carries the partial `result`, as an
 * {@link AbortError} does.
 */
export class GrammarError extends HuoziError {
  readonly position: number;
  readonly line: number;
  readonly column: number;
  readonly rule: string | undefined;
  readonly limit: string | undefined;
  readonly keyword: string | undefined;
  readonly path: string | undefined;
  constructor(
    message: string,
    details: { position?: number; line?: number; column?: number; rule?: string; limit?: string; keyword?: string; path?: string } = {},
    options?: ErrorOptions,
  ) {
    super(message, 'ERR_HUOZI_GRAMMAR', options);
    this.position = details.position ?? 0;
    this.line = details.line ?? 1;
    this.column = details.column ?? 1;
    this.rule = details.rule;
    this.limit = details.limit;
    this.keyword = details.keyword;
    this.path = details.path;
  }
}

interface NativeError extends Error {
  code?: string;
}

/**
 * Turns an error thrown by the addon into its typed class. `callSite` is an Error created in JS just before
 * the native call, so that the stack points at the caller's code and not at an event-loop tick.
 */
export function fromNative(error: unknown, callSite?: Error): Error {
  if (!(error instanceof Error)) return new HuoziError(String(error), 'ERR_HUOZI_NATIVE');
  const native = error as NativeError;
  const message = native.message;
  let typed: Error;
  switch (native.code) {
    case 'ERR_HUOZI_MODEL_LOAD':
      typed = new ModelLoadError(message);
      break;
    case 'ERR_HUOZI_CONTEXT_CREATE':
      typed = new ContextCreateError(message);
      break;
    case 'ERR_HUOZI_CONTEXT_OVERFLOW':
      typed = new ContextOverflowError(message);
      break;
    case 'ERR_HUOZI_DECODE':
      typed = new DecodeError(message);
      break;
    case 'ERR_HUOZI_DISPOSED':
      typed = new DisposedError(message);
      break;
    case 'ERR_HUOZI_ABORTED':
      typed = new AbortError(message);
      break;
    case 'ERR_HUOZI_BUSY':
      typed = new BusyError(message);
      break;
    case 'ERR_HUOZI_GRAMMAR':
      typed = new GrammarError(message);
      break;
    case 'ERR_HUOZI_LORA':
      typed = new LoraError(message, { reason: 'load' });
      break;
    case 'ERR_HUOZI_INVALID_ARGUMENT':
      typed = Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' });
      break;
    case 'ERR_HUOZI_OUT_OF_RANGE':
      typed = Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' });
      break;
    default:
      return error;
  }
  if (callSite?.stack) {
    typed.stack = `${typed.name}: ${message}\n${callSite.stack.split('\n').slice(1).join('\n')}`;
  }
  return typed;
}

/**
 * A Jinja chat template failed: it does not parse (`reason` `syntax`), it called `raise_exception` (`exception`;
 * its text is in the message), it went past one of its limits (`limit`: `steps`, `outputChars`, `timeoutMs`,
 * `memoryMiB`, `arrayLength` or `depth`), or rendering failed otherwise (`error`, e.g. an unknown filter).
 * `template` names the template, e.g. `tokenizer.chat_template of /models/x.gguf`.
 */
export class ChatTemplateError extends HuoziError {
  readonly template: string;
  readonly reason: 'syntax' | 'exception' | 'limit' | 'error';
  readonly limit: string | undefined;
  constructor(
    message: string,
    details: { template: string; reason: 'syntax' | 'exception' | 'limit' | 'error'; limit?: string },
    options?: ErrorOptions,
  ) {
    super(message, 'ERR_HUOZI_CHAT_TEMPLATE', options);
    this.template = details.template;
    this.reason = details.reason;
    this.limit = details.limit;
  }
}

/**
 * An output path cannot be written safely, found before any work is done: it exists and is not a regular file (a
 * device, a FIFO, a socket, a directory), it is one of the operation's inputs (same device and inode: the same
 * path, a symlink or a hard link), it is a symlink that points nowhere, or its directory is missing or cannot be
 * written. Nothing is written and nothing at `path` changes. `path` is the output as given (absolute); `reason` is
 * `'NOT_A_FILE'`, `'EISDIR'`, `'SAME_AS_INPUT'`, `'DANGLING_SYMLINK'`, `'CHANGED'` (the path led elsewhere when the
 * finished file was to be renamed into place), or the system's error code (`'ENOENT'`, `'ENOTDIR'`, `'EACCES'`,
 * `'EPERM'`, `'EROFS'`, `'ELOOP'`, `'ENAMETOOLONG'`, ...).
 */
export class OutputPathError extends HuoziError {
  readonly path: string;
  readonly reason: string;
  constructor(message: string, path: string, reason: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_OUTPUT_PATH', options);
    this.path = path;
    this.reason = reason;
  }
}

/**
 * A model path (loadModel, inspect, readGguf, quantize's input, `chat -m`, ...) that is not a regular file: a
 * directory, a FIFO, a socket or a device. It is refused before it is opened for reading: reading a FIFO blocks
 * until something writes to it, and a device may never end. A {@link ModelLoadError}, with its own code
 * `ERR_HUOZI_NOT_REGULAR_FILE`; `kind` says what the path is (e.g. `a FIFO (named pipe)`).
 */
export class NotRegularFileError extends ModelLoadError {
  override readonly code: string = 'ERR_HUOZI_NOT_REGULAR_FILE';
  readonly path: string;
  readonly kind: string;
  constructor(path: string, kind: string, options?: ErrorOptions) {
    super(`${path} is ${kind}, not a regular file; a model must be a GGUF file`, options);
    this.path = path;
    this.kind = kind;
  }
}

/**
 * A LoRA adapter cannot be converted or does not fit the model: from {@link convertLora} (a PEFT setting llama.cpp
 * cannot apply, such as DoRA, biases or modules_to_save; a tensor the base lacks; a rank or shape mismatch) and from
 * {@link validateLoraForModel} (an adapter GGUF llama.cpp would refuse, abort on or compute garbage with). `reason`
 * is a stable word for the kind of problem (`'config'`, `'unsupported'`, `'architecture'`, `'metadata'`,
 * `'name'`, `'pair'`, `'not-in-model'`, `'shape'`, `'rank'`, `'type'`, `'empty'`, `'file'`, `'base'`: the base model
 * given to convertLora, `'load'`: llama.cpp refused it); `tensor` names the
 * offending tensor (or PEFT module), `key` the metadata key, `file` the file, when there is one.
 */
export class LoraError extends HuoziError {
  readonly reason: string;
  readonly tensor: string | undefined;
  readonly key: string | undefined;
  readonly file: string | undefined;
  constructor(
    message: string,
    details: { reason: string; tensor?: string; key?: string; file?: string },
    options?: ErrorOptions,
  ) {
    super(message, 'ERR_HUOZI_LORA', options);
    this.reason = details.reason;
    this.tensor = details.tensor;
    this.key = details.key;
    this.file = details.file;
  }
}
