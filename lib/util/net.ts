import { isIP } from 'node:net';

/**
 * The one loopback rule (the server's Host check, `serve --host`'s warning, the RPC server's warning): `localhost`,
 * 127.0.0.0/8, `::1` (also written out in full or in brackets) and IPv4-mapped `::ffff:127.x.y.z`. Only this
 * machine can reach a socket bound to one of them.
 */
export function isLoopback(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h === 'localhost' || h === 'localhost.') return true;
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  const mapped = /^(?:0{0,4}:){0,4}:?(?:0{0,4}:)?ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (mapped) h = mapped[1];
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return /^(?:0{0,4}:){0,7}0{0,3}1$/.test(h) || h === '::1';
  return false;
}
