// The page's shell: one store fed by the live stream; every panel renders from it.

import { wireChat, updateChatModels } from './chat.js';
import { addEvents, addGap, resetEvents } from './events.js';
import { addHealth, resetHealth } from './health.js';
import { renderInstances, wireInstances } from './instances.js';
import { follow } from './live.js';
import { modelCards, updateModels, wireModels } from './models.js';
import { renderTopology } from './topology.js';
import { nodeName, short } from './util.js';

/** How long a lost node stays on the graph (it returns at once if it rejoins). */
const LOST_KEEP_MS = 10 * 60 * 1000;
const THEME_KEY = 'shoal.theme';

const store = {
  state: null,
  status: null,
  /** Nodes State no longer holds: id → { info, at }. */
  lost: new Map(),
  /** tok/s this page measured per instance. */
  tps: new Map(),
};

function name(id) {
  const info = store.state?.nodes?.[id] ?? store.lost.get(id)?.info;
  return info ? `${nodeName(info, id)} ${short(id)}` : null;
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el.textContent !== value) el.textContent = value;
}

function renderHeader() {
  const { state, status } = store;
  const master = state?.session?.master;
  text('sum-master', master ? `${nodeName(state.nodes?.[master], master)} · ${short(master)}` : '—');
  const live = Object.keys(state?.nodes ?? {}).length;
  text('sum-nodes', state ? `${live}${store.lost.size ? ` (+${store.lost.size} lost)` : ''}` : '—');
  const cards = modelCards().length || Object.keys(state?.model_cards ?? {}).length;
  text('sum-models', cards ? String(cards) : '—');
  text('sum-instances', state ? String(Object.keys(state.instances ?? {}).length) : '—');
  text('sum-self', status ? `${short(status.node)} · ${status.role}` : '—');
  document.title = state ? `shoal · ${live} node${live === 1 ? '' : 's'}` : 'shoal';
}

function renderAll() {
  renderHeader();
  renderTopology(store.state, store.status, store.lost);
  renderInstances(store.state, store.tps);
  updateChatModels(store.state);
  updateModels(store.state).then(renderHeader);
}

function applyState(next) {
  const before = store.state;
  if (before) {
    for (const [id, info] of Object.entries(before.nodes ?? {})) {
      if (!next.nodes?.[id]) store.lost.set(id, { info, at: Date.now() });
    }
  }
  for (const id of Object.keys(next.nodes ?? {})) store.lost.delete(id);
  for (const [id, l] of store.lost) {
    if (Date.now() - l.at > LOST_KEEP_MS) store.lost.delete(id);
  }
  store.state = next;
  renderAll();
}

function onFrame(kind, data) {
  switch (kind) {
    case 'status':
      store.status = data;
      renderHeader();
      renderTopology(store.state, store.status, store.lost);
      break;
    case 'snapshot':
      resetEvents();
      resetHealth();
      applyState(data.state);
      break;
    case 'state':
      applyState(data.state);
      break;
    case 'events':
      addEvents(data, name);
      break;
    case 'events_gap':
      addGap(data.message, name);
      break;
    case 'health':
      addHealth(data, store.state);
      // Keeps "lost 12s ago" current between State changes.
      if (store.lost.size) renderTopology(store.state, store.status, store.lost);
      break;
    default:
      break;
  }
}

function onConnection(conn) {
  const el = document.getElementById('conn');
  if (el.dataset.conn === conn) return;
  el.dataset.conn = conn;
  text('conn-text', conn === 'live' ? 'live' : conn === 'reconnecting' ? 'reconnecting…' : 'connecting…');
}

function wireTheme() {
  const root = document.documentElement;
  let saved = null;
  try {
    saved = localStorage.getItem(THEME_KEY);
  } catch {
    saved = null;
  }
  if (saved === 'light' || saved === 'dark') root.dataset.theme = saved;
  document.getElementById('theme-toggle').addEventListener('click', () => {
    const dark = root.dataset.theme
      ? root.dataset.theme === 'dark'
      : window.matchMedia('(prefers-color-scheme: dark)').matches;
    root.dataset.theme = dark ? 'light' : 'dark';
    try {
      localStorage.setItem(THEME_KEY, root.dataset.theme);
    } catch {
      /* no storage: the choice lasts until reload */
    }
  });
}

wireTheme();
wireModels();
wireInstances();
wireChat(
  () => store.state,
  (instance, tps) => {
    store.tps.set(instance, { tps, at: Date.now() });
    renderInstances(store.state, store.tps);
  },
);
follow(onFrame, onConnection);
