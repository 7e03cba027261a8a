import { describe, expect, it } from 'vitest';
import { isLoopback } from '../../dist/util/net.js';

describe('isLoopback (the one loopback rule of the server, serve and rpc-server)', () => {
  it('accepts every spelling of this machine', () => {
    for (const h of ['localhost', 'LocalHost', '127.0.0.1', '127.255.0.9', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) {
      expect(isLoopback(h), h).toBe(true);
    }
  });
  it('refuses addresses other machines can reach', () => {
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', '::ffff:10.0.0.1', '1::1', 'localhost.example.com', 'example.com', '']) {
      expect(isLoopback(h), h).toBe(false);
    }
  });
});
