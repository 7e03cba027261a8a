// The chat session file (ChatSession.save/load): its byte layout, its checksum, and how it is read and written.
//
// Version 2 (this one):  "HUOZI-CHAT-SESSION" | u32 version | u32 header length | header (JSON, UTF-8)
//                        | KV state (llama_state_seq_get_data of sequence 0) | SHA-256 of every byte before it
// Version 1 (read only): the same without the trailing SHA-256; the header held a SHA-256 of the state alone.
//
// The checksum is unkeyed: it catches accidents (a flipped bit, a truncated copy), not a forger, who can
// recompute it. So nothing here or in the addon trusts a file because its checksum matches: the header is
// validated field by field (lib/chat/session.ts) and the KV state against the context (src/session_state.cc)
// before anything changes.
import { createHash, randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { lstat, open, readlink, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { HuoziError } from '../errors.js';

/** A session file that is corrupt, truncated, forged or belongs to another model, or a path `save()` refuses. */
export class SessionFileError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_SESSION_FILE', options);
  }
}

export const MAGIC = 'HUOZI-CHAT-SESSION';
export const FORMAT_VERSION = 2;
const PREFIX = MAGIC.length + 8;
const DIGEST = 32;
/** The JSON header's limit: far above any conversation a context holds, far below what would exhaust memory. */
export const MAX_HEADER_BYTES = 256 * 1024 * 1024;
// A chain of symbolic links longer than this is refused (Linux's own limit is 40).
const MAX_LINKS = 40;

/** A session file taken apart (checksums verified, nothing else yet). */
export interface SessionFileParts {
  version: number;
  header: Record<string, unknown>;
  state: Buffer;
}

const sha256 = (chunks: readonly Uint8Array[]) => {
  const hash = createHash('sha256');
  for (const chunk of chunks) hash.update(chunk);
  return hash.digest();
};

/** The bytes of a version-2 file. */
export function encodeSessionFile(header: Record<string, unknown>, state: Buffer): Buffer[] {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) {
    throw new SessionFileError(`The conversation's header would be ${json.length} bytes, more than the ${MAX_HEADER_BYTES} a session file allows`);
  }
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(FORMAT_VERSION, 0);
  prefix.writeUInt32LE(json.length, 4);
  const chunks = [Buffer.from(MAGIC, 'latin1'), prefix, json, state];
  return [...chunks, sha256(chunks)];
}

/**
 * Reads and takes apart a session file: a regular file (a FIFO or device is refused without being read), of
 * exactly the size its lengths give, with a matching checksum. `maxStateBytes` bounds the KV state before
 * anything that large is read.
 */
export async function readSessionFile(path: string, maxStateBytes: number): Promise<SessionFileParts> {
  const bad = (why: string) => new SessionFileError(`${path} is not a usable chat session file: ${why}`);
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
  const handle = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw bad(`it is ${kindOf(info)}, not a regular file`);
    const size = info.size;
    const prefix = Buffer.alloc(PREFIX);
    const got = size >= PREFIX ? (await handle.read(prefix, 0, PREFIX, 0)).bytesRead : 0;
    if (got < MAGIC.length || prefix.toString('latin1', 0, MAGIC.length) !== MAGIC) throw bad('wrong magic');
    if (got < PREFIX) throw bad('truncated header');
    const version = prefix.readUInt32LE(MAGIC.length);
    if (version !== 1 && version !== FORMAT_VERSION) {
      throw bad(`format version ${version}; this huozi-gguf reads versions 1 and ${FORMAT_VERSION}${version > FORMAT_VERSION ? ' (it was written by a newer one)' : ''}`);
    }
    const headerBytes = prefix.readUInt32LE(MAGIC.length + 4);
    if (headerBytes > MAX_HEADER_BYTES) throw bad(`its header claims ${headerBytes} bytes, more than the ${MAX_HEADER_BYTES} allowed`);
    const trailer = version === 1 ? 0 : DIGEST;
    if (PREFIX + headerBytes + trailer > size) throw bad('truncated header');
    const stateBytes = size - PREFIX - headerBytes - trailer;
    if (stateBytes > maxStateBytes) {
      throw bad(`its KV state is ${stateBytes} bytes, more than this context's cache can hold (${maxStateBytes})`);
    }
    const rest = Buffer.alloc(size - PREFIX);
    const read = (await handle.read(rest, 0, rest.length, PREFIX)).bytesRead;
    if (read !== rest.length) throw bad('it changed size while being read');
    const json = rest.subarray(0, headerBytes);
    const state = rest.subarray(headerBytes, headerBytes + stateBytes);
    if (version !== 1 && !sha256([prefix, json, state]).equals(rest.subarray(headerBytes + stateBytes))) {
      throw bad('checksum mismatch (the file was damaged or edited)');
    }
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
    } catch {
      throw bad('corrupt header');
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) throw bad('corrupt header');
    const h = header as Record<string, unknown>;
    if (h.stateBytes !== stateBytes) throw bad(`its KV state is ${stateBytes} bytes, the header says ${String(h.stateBytes)}`);
    if (version === 1) {
      if (typeof h.stateSha256 !== 'string' || sha256([state]).toString('hex') !== h.stateSha256) {
        throw bad('checksum mismatch (the file was damaged or edited)');
      }
    }
    return { version, header: h, state: Buffer.from(state) };
  } finally {
    await handle.close();
  }
}

/**
 * Writes `chunks` to `path` atomically: a temporary file in the directory of the file that is finally written,
 * fsync, rename over it, fsync of the directory. A new file gets mode 0600 (a conversation is private); an
 * existing one keeps its mode (and, where permitted, its owner and group). A symbolic link is followed to its
 * final target, which is replaced (the link stays a link); a link to nothing is refused. A path that exists
 * and is not a regular file (a directory, FIFO, socket or device) is refused. On failure the temporary file is
 * removed and the existing file is untouched.
 */
export async function writeSessionFile(path: string, chunks: readonly Uint8Array[]): Promise<void> {
  const { target, existing } = await resolveTarget(path);
  const dir = dirname(target);
  const tmp = join(dir, `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  const mode = existing ? existing.mode & 0o777 : 0o600;
  const handle = await open(tmp, 'wx', 0o600);
  try {
    // Exactly the mode wanted, whatever the umask; the owner first, as chown may clear setuid/setgid bits.
    if (existing && (existing.uid !== process.getuid?.() || existing.gid !== process.getgid?.())) {
      await handle.chown(existing.uid, existing.gid).catch(() => undefined);
    }
    await handle.chmod(mode);
    for (const chunk of chunks) await handle.write(chunk);
    await handle.sync();
    await handle.close();
    await rename(tmp, target);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
  const dirHandle = await open(dir, 'r').catch(() => undefined);
  await dirHandle?.sync().catch(() => undefined);
  await dirHandle?.close();
}

/** The file that a save to `path` replaces or creates: `path`, or the final target of the links at `path`. */
async function resolveTarget(path: string): Promise<{ target: string; existing: Stats | undefined }> {
  let target = resolve(path);
  for (let hops = 0; ; hops++) {
    let info: Stats;
    try {
      info = await lstat(target);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      if (hops === 0) return { target, existing: undefined };
      throw new SessionFileError(`Cannot save to ${path}: it is a symbolic link to ${target}, which does not exist`);
    }
    if (info.isSymbolicLink()) {
      if (hops >= MAX_LINKS) throw new SessionFileError(`Cannot save to ${path}: more than ${MAX_LINKS} symbolic links`);
      target = resolve(dirname(target), await readlink(target));
      continue;
    }
    if (!info.isFile()) throw new SessionFileError(`Cannot save to ${path}: it is ${kindOf(info)}, not a regular file`);
    return { target, existing: info };
  }
}

function kindOf(info: Stats): string {
  if (info.isDirectory()) return 'a directory';
  if (info.isFIFO()) return 'a FIFO';
  if (info.isSocket()) return 'a socket';
  if (info.isCharacterDevice()) return 'a character device';
  if (info.isBlockDevice()) return 'a block device';
  return 'something other than a file';
}
