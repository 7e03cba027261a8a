// Output files, one way for every command and API that writes one (quantize, convert, synth, computeImatrix,
// writeGguf): the output path is checked before any work, and the file is written as a temporary file in the
// same directory that is renamed into place only when complete.
//
// The check: an output that exists must be a regular file (a device, a FIFO, a socket or a directory is never
// replaced or opened: renaming over /dev/null replaced the device node, and opening a FIFO blocks), it must not
// be one of the inputs (device and inode, so a symlink or a hard link to an input counts; paths are not
// compared), and its directory must exist and take a new file. The last is tested by creating the temporary
// file there, which is what writing needs anyway: no access() guess, which root and some file systems answer
// wrongly. An output that is a symlink is written through: the file it points to is replaced (in that file's
// directory) and the link stays; a link that points nowhere is refused, as cp refuses it.
import { randomBytes } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { chmod, chown, lstat, open, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { OutputPathError } from '../errors.js';

export interface OutputCheckOptions {
  /** Files the output must not be (compared by device and inode after following symlinks); missing ones are skipped. */
  inputs?: readonly (string | undefined)[];
}

/** A checked output: where the file goes, and its temporary file, created empty and open for writing. */
export interface OutputFile {
  /** The path the file will have: the output resolved, through a symlink to the file it points to. */
  readonly path: string;
  /** The temporary file next to `path` (`.<name>.<random>.tmp`), created empty with mode 0644 (less the umask). */
  readonly tmp: string;
  /** `tmp`, open for reading and writing. */
  readonly handle: FileHandle;
  /**
   * More files the output must not be, known only after some reading (a checkpoint's parts): checks them now,
   * and again in commit().
   *
   * @throws {@link OutputPathError} (`SAME_AS_INPUT`); the caller then calls discard().
   */
  addInputs(inputs: readonly (string | undefined)[]): Promise<void>;
  /**
   * Makes the temporary file the output: fsyncs and closes it, checks the output path again (it may have changed
   * since), gives it the permission bits (and, where permitted, the owner and group) of the file it replaces,
   * renames it into place and fsyncs the directory.
   * On failure the temporary file is removed and the output is as it was.
   */
  commit(): Promise<void>;
  /** Closes and removes the temporary file; safe to call more than once, and after commit(). */
  discard(): Promise<void>;
}

function kindOf(s: BigIntStats): string {
  if (s.isCharacterDevice()) return 'a character device';
  if (s.isBlockDevice()) return 'a block device';
  if (s.isFIFO()) return 'a FIFO (named pipe)';
  if (s.isSocket()) return 'a socket';
  if (s.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

function errnoOf(error: unknown): string {
  return (error as NodeJS.ErrnoException)?.code ?? 'EIO';
}

/** What an error from creating or renaming into `dir` means, in words. */
function directoryProblem(dir: string, code: string, error: unknown): string {
  switch (code) {
    case 'ENOENT': return `the output directory ${dir} does not exist (ENOENT)`;
    case 'ENOTDIR': return `${dir} is not a directory: a part of the path is a file (ENOTDIR)`;
    case 'EACCES':
    case 'EPERM': return `the output directory ${dir} is not writable (${code}: permission denied)`;
    case 'EROFS': return `the output directory ${dir} is on a read-only file system (EROFS)`;
    case 'ENOSPC': return `the output directory ${dir} has no space left (ENOSPC)`;
    case 'EDQUOT': return `the disk quota for ${dir} is used up (EDQUOT)`;
    default: return `cannot create a file in ${dir}: ${(error as Error)?.message ?? code}`;
  }
}

interface Target {
  /** Where the file goes (the output, or the file a symlink points to). */
  path: string;
  /** The file there now, if any (a regular file). */
  existing?: BigIntStats;
}

/** Resolves `output` (absolute) to where the file goes and checks what is there now and the inputs. */
async function target(output: string, inputs: readonly (string | undefined)[]): Promise<Target> {
  const fail = (why: string, reason: string, cause?: unknown): never => {
    throw new OutputPathError(`Cannot write ${output}: ${why}`, output, reason, cause === undefined ? undefined : { cause });
  };
  let path = output;
  let existing: BigIntStats | undefined;
  try {
    existing = await lstat(output, { bigint: true });
  } catch (error) {
    const code = errnoOf(error);
    if (code !== 'ENOENT') fail(directoryProblem(dirname(output), code, error), code, error);
  }
  if (existing?.isSymbolicLink()) {
    try {
      path = await realpath(output);
      existing = await stat(path, { bigint: true });
    } catch (error) {
      const code = errnoOf(error);
      if (code === 'ENOENT') fail('it is a symbolic link to a file that does not exist (refusing to write through it)', 'DANGLING_SYMLINK', error);
      fail(`it is a symbolic link that cannot be followed (${code}): ${(error as Error).message}`, code, error);
    }
  }
  if (existing?.isDirectory()) fail(`${output} is a directory, not a file (EISDIR)`, 'EISDIR');
  if (existing && !existing.isFile()) {
    const link = path === output ? '' : ` (through the symbolic link, ${path})`;
    fail(`${output} is ${kindOf(existing)}${link}, not a regular file: refusing to replace it`, 'NOT_A_FILE');
  }
  if (existing) {
    for (const input of inputs) {
      if (input === undefined) continue;
      const s = await stat(input, { bigint: true }).catch(() => undefined);
      if (s && s.dev === existing.dev && s.ino === existing.ino) {
        const how = resolve(input) === output ? 'the same path' : 'the same file: a symlink or a hard link';
        fail(`${output} is the input ${resolve(input)} (${how}); write the output to another file`, 'SAME_AS_INPUT');
      }
    }
  }
  return { path, existing };
}

/**
 * Checks an output path without creating anything: what exists there must be a regular file (or a symlink to
 * one) and none of `inputs`. Returns the absolute path the file would have.
 *
 * @throws {@link OutputPathError}
 */
export async function checkOutput(output: string, options: OutputCheckOptions = {}): Promise<string> {
  return (await target(resolve(output), options.inputs ?? [])).path;
}

/**
 * Checks `output` (see {@link checkOutput}) and creates its temporary file, which proves the directory exists and
 * takes a new file. Call commit() when the file is written, discard() on any failure.
 *
 * @throws {@link OutputPathError}
 */
export async function openOutput(output: string, options: OutputCheckOptions = {}): Promise<OutputFile> {
  const requested = resolve(output);
  const inputs = [...(options.inputs ?? [])];
  const { path } = await target(requested, inputs);
  const dir = dirname(path);
  // A file name of 255 bytes leaves no room for the temporary name's additions: shorten that, not the output.
  const tmp = join(dir, `.${basename(path).slice(0, 200)}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: FileHandle;
  try {
    handle = await open(tmp, 'wx+', 0o644);
  } catch (error) {
    const code = errnoOf(error);
    throw new OutputPathError(`Cannot write ${requested}: ${directoryProblem(dir, code, error)}`, requested, code, { cause: error });
  }
  let open_ = true;
  let gone = false;
  const discard = async () => {
    if (open_) {
      open_ = false;
      await handle.close().catch(() => undefined);
    }
    if (!gone) {
      gone = true;
      await unlink(tmp).catch(() => undefined);
    }
  };
  const commit = async () => {
    try {
      await handle.sync();
      open_ = false;
      await handle.close();
      // The path is checked again: it may have become something else while the file was written.
      const again = await target(requested, inputs);
      if (again.path !== path) {
        throw new OutputPathError(`Cannot write ${requested}: it changed while the file was written (it now leads to ${again.path})`, requested, 'CHANGED');
      }
      if (again.existing) {
        // The replaced file's owner and group where permitted (root), then its permission bits (chown may
        // clear setuid/setgid, and a new file's mode depends on the umask).
        const { uid, gid } = again.existing;
        if (Number(uid) !== process.getuid?.() || Number(gid) !== process.getgid?.()) {
          await chown(tmp, Number(uid), Number(gid)).catch(() => undefined);
        }
        await chmod(tmp, Number(again.existing.mode & 0o777n));
      }
      try {
        await rename(tmp, path);
      } catch (error) {
        const code = errnoOf(error);
        throw new OutputPathError(`Cannot write ${requested}: ${directoryProblem(dir, code, error)}`, requested, code, { cause: error });
      }
      gone = true;
    } catch (error) {
      await discard();
      throw error;
    }
    const dirHandle = await open(dir, 'r').catch(() => undefined);
    await dirHandle?.sync().catch(() => undefined);
    await dirHandle?.close().catch(() => undefined);
  };
  const addInputs = async (more: readonly (string | undefined)[]) => {
    inputs.push(...more);
    await target(requested, more);
  };
  return { path, tmp, handle, addInputs, commit, discard };
}

/** Writes `chunks` to `output` through {@link openOutput}: readers see the old file or the whole new one. */
export async function writeOutputFile(output: string, chunks: readonly Uint8Array[], options: OutputCheckOptions = {}): Promise<string> {
  const out = await openOutput(output, options);
  try {
    for (const chunk of chunks) await out.handle.write(chunk);
    await out.commit();
  } catch (error) {
    await out.discard();
    throw error;
  }
  return out.path;
}
