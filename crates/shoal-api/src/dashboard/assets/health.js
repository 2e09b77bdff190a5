// Health: this node's stream and network counters from the live feed's `health` frames, and charts of tok/s and
// each node's memory over the last minutes.

import { sparkline } from './charts.js';
import { color, esc, fmtBytes, fmtNumber, nodeLabel, setHtml } from './util.js';

/** Samples the charts keep (one per health frame, about a second each). */
const SAMPLES = 180;
const tps = [];
const memory = new Map();
let previous = null;

/** A new stream may come from another node: its counters are not comparable with the last ones. */
export function resetHealth() {
  previous = null;
}

/** Adds one health sample; `state` gives each node's memory at that moment. */
export function addHealth(health, state) {
  if (previous && health.time_ms > previous.time_ms) {
    const seconds = (health.time_ms - previous.time_ms) / 1000;
    const tokens = Math.max(0, health.streams.tokens - previous.streams.tokens);
    tps.push(tokens / seconds);
    if (tps.length > SAMPLES) tps.shift();
  }
  previous = health;
  for (const [id, info] of Object.entries(state?.nodes ?? {})) {
    const m = info.memory;
    if (!m?.total) continue;
    const list = memory.get(id) ?? [];
    list.push({ used: m.total - m.available, total: m.total });
    if (list.length > SAMPLES) list.shift();
    memory.set(id, list);
  }
  for (const id of memory.keys()) {
    if (!state?.nodes?.[id]) memory.delete(id);
  }
  render(health, state);
}

/** The memory chart's top: a little above the highest node, so small changes show (at most 100%). */
function memoryScale(series) {
  const high = Math.max(1, ...series.flatMap((s) => s.values));
  return Math.min(100, Math.ceil((high * 1.25) / 5) * 5);
}

function tile(label, value, bad = false, key = '') {
  return `<div class="tile${bad ? ' bad' : ''}" data-tile="${key}"><div class="label">${label}</div><div class="value">${value}</div></div>`;
}

function render(h, state) {
  const closes = Object.entries(h.streams.closes ?? {});
  const ids = [...memory.keys()].sort(
    (a, b) => (state?.nodes?.[a]?.first_seen_ms ?? 0) - (state?.nodes?.[b]?.first_seen_ms ?? 0) || a.localeCompare(b),
  );
  const memSeries = ids.map((id, i) => ({
    color: color(i),
    values: memory.get(id).map((m) => (100 * m.used) / m.total),
  }));
  const now = tps.length ? tps[tps.length - 1] : 0;
  const peak = tps.length ? Math.max(...tps) : 0;
  const legend = ids
    .map((id, i) => {
      const last = memory.get(id).at(-1);
      return `<span><span class="swatch" data-c="${color(i)}"></span>${esc(nodeLabel(state, id))} ${fmtBytes(last.used)}</span>`;
    })
    .join('');
  const dropped = h.net.dropped;
  const html = `<div class="tiles">
      ${tile('Open streams', fmtNumber(h.streams.open), false, 'open')}
      ${tile('Finished', fmtNumber(h.streams.finished), false, 'finished')}
      ${tile('Tokens sent', fmtNumber(h.streams.tokens), false, 'tokens')}
      ${tile('Dropped msgs', fmtNumber(dropped), dropped > 0, 'dropped')}
      ${tile('Unrouted chunks', fmtNumber(h.chunks_unrouted + h.streams.chunks_unknown), h.chunks_unrouted + h.streams.chunks_unknown > 0, 'unrouted')}
      ${tile('Dashboards', `${h.live_streams}<span class="hint"> / ${h.live_streams_max}</span>`, false, 'live')}
    </div>
    <div class="closes"><span class="hint">Stream ends:</span>${closes.length ? closes.map(([r, n]) => `<span class="badge ${r === 'cancelled' ? '' : 'warn'}">${esc(r)} ${n}</span>`).join('') : '<span class="badge ok">none early</span>'}
    ${(h.net.by_key ?? []).map((r) => `<span class="badge bad" title="dropped ${r.dropped_full}, malformed ${r.malformed}, incompatible ${r.incompatible}, oversized ${r.oversized}">${esc(r.key)} dropped</span>`).join('')}</div>
    <div class="chart"><div class="chart-head"><span>Tokens/s served by this node</span><span><strong>${now.toFixed(1)}</strong> now · peak ${peak.toFixed(1)}</span></div>
      ${sparkline([{ color: '#14b8a6', values: tps }], { points: SAMPLES })}</div>
    <div class="chart"><div class="chart-head"><span>Memory used per node</span><span>% of total (scale to ${memoryScale(memSeries)}%)</span></div>
      ${sparkline(memSeries, { points: SAMPLES, max: memoryScale(memSeries) })}<div class="legend">${legend}</div></div>`;
  setHtml(document.getElementById('health'), html);
  document.getElementById('health-hint').textContent = `${fmtNumber(h.net.received)} messages received`;
}
