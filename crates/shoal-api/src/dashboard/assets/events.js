// The live log of durable events: idx, time, kind, summary; newest first, bounded.

import { esc, setHtml } from './util.js';

/** Lines the log keeps. */
const KEEP = 400;
let lines = [];
let newest = -1;

function tone(kind) {
  if (/TimedOut|Failed|Deleted$/.test(kind) && !/^Task/.test(kind)) return 'bad';
  if (/^Node|^Session/.test(kind)) return 'info';
  if (/^Runner/.test(kind)) return 'accent';
  if (/^Instance|^Deployment|^ModelCard/.test(kind)) return 'ok';
  if (/^Download/.test(kind)) return 'warn';
  return '';
}

function time(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8);
}

/** A new stream (perhaps from another node, after a master change) starts the log afresh. */
export function resetEvents() {
  lines = [];
  newest = -1;
}

export function addEvents(batch, names) {
  const fresh = batch.filter((e) => e.idx > newest);
  if (!fresh.length) return;
  newest = fresh[fresh.length - 1].idx;
  lines = fresh.reverse().concat(lines).slice(0, KEEP);
  render(names, new Set(fresh.map((e) => e.idx)));
}

export function addGap(message, names) {
  lines = [{ gap: true, summary: message, idx: newest }].concat(lines).slice(0, KEEP);
  render(names, new Set());
}

function render(names, fresh) {
  const root = document.getElementById('events');
  const html = lines
    .map((e) => {
      if (e.gap) return `<div class="event gap">⚠ Earlier events are not on this node: ${esc(e.summary)}</div>`;
      const who = e.node && names(e.node) ? ` <span class="hint">${esc(names(e.node))}</span>` : '';
      return `<div class="event${fresh.has(e.idx) ? ' fresh' : ''}" data-event-idx="${e.idx}">
        <span class="idx">${e.idx}</span><span class="time">${time(e.time_ms)}</span>
        <span><span class="badge ${tone(e.kind)}">${esc(e.kind)}</span></span>
        <span class="what">${esc(e.summary)}${who}</span></div>`;
    })
    .join('');
  setHtml(root, html || '<div class="empty">No events yet.</div>');
  document.getElementById('events-hint').textContent = lines.length ? `newest idx ${newest} · last ${Math.min(lines.length, KEEP)}` : '';
}
