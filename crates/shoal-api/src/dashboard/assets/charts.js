// Small SVG sparklines: no axes, a line per series scaled to the largest value (or a fixed maximum).

import { esc } from './util.js';

const W = 300;
const H = 60;

/** `series`: [{ color, values: number[], label }]; `points`: samples the x axis holds. */
export function sparkline(series, { points = 120, max = null } = {}) {
  const top = max ?? Math.max(1e-9, ...series.flatMap((s) => s.values));
  const step = W / Math.max(1, points - 1);
  const paths = series
    .map((s) => {
      const offset = points - s.values.length;
      const coords = s.values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(H - 3 - (Math.min(v, top) / top) * (H - 8)).toFixed(1)}`);
      if (!coords.length) return '';
      const line = `<polyline class="line" points="${coords.join(' ')}" stroke="${esc(s.color)}" vector-effect="non-scaling-stroke"/>`;
      const first = coords[0].split(',')[0];
      const last = coords[coords.length - 1].split(',')[0];
      const area = series.length === 1
        ? `<polygon class="area" points="${first},${H} ${coords.join(' ')} ${last},${H}" fill="${esc(s.color)}"/>`
        : '';
      return area + line;
    })
    .join('');
  return `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img">${paths}</svg>`;
}
