// A one-line progress bar on standard error (only when it is a terminal; otherwise a line per 10%).
export function progressBar(label: string): { update(done: number, total: number): void; finish(note?: string): void } {
  const tty = process.stderr.isTTY;
  const start = Date.now();
  let lastDecile = -1;
  let lastDraw = 0;
  const fmt = (bytes: number) => (bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`);
  return {
    update(done, total) {
      const fraction = total > 0 ? Math.min(1, done / total) : 1;
      if (tty) {
        const now = Date.now();
        if (now - lastDraw < 100 && fraction < 1) return;
        lastDraw = now;
        const width = 30;
        const filled = Math.round(fraction * width);
        const rate = done / Math.max(0.001, (now - start) / 1000);
        process.stderr.write(
          `\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ` +
            `${fmt(done)} / ${fmt(total)} ${fmt(rate)}/s `,
        );
      } else {
        const decile = Math.floor(fraction * 10);
        if (decile > lastDecile) {
          lastDecile = decile;
          process.stderr.write(`${label}: ${decile * 10}%\n`);
        }
      }
    },
    finish(note) {
      const seconds = ((Date.now() - start) / 1000).toFixed(1);
      process.stderr.write(`${tty ? '\n' : ''}${label}: done in ${seconds} s${note ? `, ${note}` : ''}\n`);
    },
  };
}
