// Builds raw GGUF bytes field by field, for tests of malformed files.
export class Raw {
  parts: Buffer[] = [];
  u32(n: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n >>> 0);
    this.parts.push(b);
    return this;
  }
  u64(n: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(n)));
    this.parts.push(b);
    return this;
  }
  i64(n: bigint | number): this {
    return this.u64(BigInt.asUintN(64, BigInt(n)));
  }
  str(s: string | Buffer): this {
    const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    return this.u64(bytes.length).bytes(bytes);
  }
  bytes(b: Buffer | number[]): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  header(tensors: number | bigint, kvs: number | bigint, version = 3): this {
    return this.bytes(Buffer.from('GGUF')).u32(version).u64(tensors).u64(kvs);
  }
  /** A u32 metadata entry. */
  kvU32(key: string, v: number): this {
    return this.str(key).u32(4).u32(v);
  }
  kvStr(key: string, v: string): this {
    return this.str(key).u32(8).str(v);
  }
  /** A tensor info. */
  tensor(name: string, dims: (number | bigint)[], type: number, offset: number | bigint): this {
    this.str(name).u32(dims.length);
    for (const d of dims) this.i64(d);
    return this.u32(type).u64(offset);
  }
  /** Pads to `alignment` and appends `n` data bytes. */
  data(n: number, alignment = 32): this {
    const len = this.build().length;
    const pad = (alignment - (len % alignment)) % alignment;
    return this.bytes(Buffer.alloc(pad + n));
  }
  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}
