// Models: the catalog with placement previews for 1…N nodes, place and delete buttons, adding a model, and each
// node's download progress from State.

import { json } from './api.js';
import { color, esc, errorMessage, fmtBytes, modelName, nodeLabel, setHtml, toast, variant } from './util.js';

/** Previews are fetched again at most this often while nodes' memory changes. */
const PREVIEW_REFRESH_MS = 5000;

let cards = [];
let cardsKey = null;
const previews = new Map();
let previewKey = null;
let previewAt = 0;
let last = null;
const placing = new Set();

/** Fetches the catalog when the set of custom cards changed. */
async function refreshCards(state) {
  const key = Object.keys(state.model_cards ?? {}).sort().join('|');
  if (key === cardsKey) return false;
  cardsKey = key;
  const { ok, body } = await json('/models');
  if (ok && Array.isArray(body)) cards = body;
  return true;
}

/** Fetches every model's previews when the nodes or instances changed (or every few seconds). */
async function refreshPreviews(state) {
  const key = `${Object.keys(state.nodes ?? {}).sort().join('|')}#${Object.keys(state.instances ?? {}).sort().join('|')}#${cards.length}`;
  if (key === previewKey && Date.now() - previewAt < PREVIEW_REFRESH_MS) return false;
  previewKey = key;
  previewAt = Date.now();
  await Promise.all(
    cards.map(async (card) => {
      const { ok, body } = await json(`/instance/previews?model_id=${encodeURIComponent(card.id)}`);
      if (ok) previews.set(card.id, body.previews ?? []);
    }),
  );
  return true;
}

let fetching = false;

export async function updateModels(state) {
  last = state;
  render();
  if (fetching) return;
  fetching = true;
  try {
    const changed = (await refreshCards(state)) | (await refreshPreviews(last));
    if (changed) render();
  } finally {
    fetching = false;
  }
}

export function modelCards() {
  return cards;
}

function previewBox(card, p, state, nodeIndex) {
  if (p.error) {
    return `<div class="preview" data-preview="${p.nodes}"><span class="k">${p.nodes} node${p.nodes > 1 ? 's' : ''}</span><span class="err">${esc(p.error)}</span></div>`;
  }
  const shares = (p.shares ?? [])
    .map((s) => `<span data-flex="${s.layers}" data-c="${color(nodeIndex.get(s.node) ?? 0)}" title="${esc(nodeLabel(state, s.node))}: ${s.layers} layers, ${fmtBytes(s.weight_bytes)} weights"></span>`)
    .join('');
  const names = (p.shares ?? []).map((s) => `${esc(nodeLabel(state, s.node))}: ${s.layers}`).join(' · ');
  const busy = placing.has(`${card.id}#${p.nodes}`);
  return `<div class="preview" data-preview="${p.nodes}">
    <span class="k">${p.nodes} node${p.nodes > 1 ? 's' : ''}</span>
    <div class="shares">${shares}</div>
    <span class="hint">${names}</span>
    <button type="button" class="primary small" data-place="${p.nodes}" data-model="${esc(card.id)}" ${busy ? 'disabled' : ''}>${busy ? 'Placing…' : 'Place'}</button>
  </div>`;
}

function render() {
  const state = last;
  const root = document.getElementById('models');
  if (!state) return;
  if (!cards.length) {
    setHtml(root, '<div class="empty">Loading the catalog…</div>');
    return;
  }
  const nodeIds = Object.keys(state.nodes ?? {}).sort(
    (a, b) => (state.nodes[a].first_seen_ms ?? 0) - (state.nodes[b].first_seen_ms ?? 0) || a.localeCompare(b),
  );
  const nodeIndex = new Map(nodeIds.map((id, i) => [id, i]));
  const rows = cards.map((card) => {
    const custom = Boolean(state.model_cards?.[card.id]);
    const running = Object.values(state.instances ?? {}).filter((i) => i.model?.id === card.id).length;
    const downloads = [];
    let complete = 0;
    for (const id of nodeIds) {
      const progress = state.nodes[id].downloads?.[card.id];
      if (!progress) continue;
      const [name, body] = variant(progress);
      if (name === 'Gone') continue;
      if (name === 'Completed') {
        complete += 1;
        continue;
      }
      const pct = name === 'Ongoing' && body.total ? Math.floor((100 * body.done) / body.total) : 0;
      const label = name === 'Ongoing' ? `${pct}%` : name === 'Failed' ? 'failed' : 'pending';
      downloads.push(`<div class="download" data-download="${esc(id)}" title="${esc(body?.error ?? '')}">
        <span>${esc(nodeLabel(state, id))}</span>
        <div class="bar"><span data-w="${pct}"></span></div><span class="hint">${label}</span></div>`);
    }
    const list = previews.get(card.id) ?? [];
    return `<div class="model-row" data-model-row="${esc(card.id)}">
      <div>
        <div class="model-name">${esc(modelName(card))} <span class="hint">${esc(card.id)}</span></div>
        <div class="model-meta">
          <span>${esc(card.quantization ?? card.format ?? '')}</span><span>${card.n_layers} layers</span>
          <span>${fmtBytes(card.storage_size)}</span><span>${fmtNumber(card.context_length)} ctx</span>
          <span class="badge ${custom ? 'info' : ''}">${custom ? 'added' : 'built-in'}</span>
          ${running ? `<span class="badge ok">${running} instance${running > 1 ? 's' : ''}</span>` : ''}
          ${complete ? `<span class="badge">files on ${complete}/${nodeIds.length} nodes</span>` : ''}
        </div>
      </div>
      <div>${custom ? `<button type="button" class="ghost small" data-delete-model="${esc(card.id)}">Delete model</button>` : ''}</div>
      ${downloads.length ? `<div class="downloads">${downloads.join('')}</div>` : ''}
      <div class="previews">${list.map((p) => previewBox(card, p, state, nodeIndex)).join('') || '<span class="hint">no preview yet</span>'}</div>
    </div>`;
  });
  setHtml(root, rows.join(''));
}

function fmtNumber(n) {
  return n >= 1024 ? `${Math.round(n / 1024)}k` : String(n ?? '—');
}

export function wireModels() {
  document.getElementById('models').addEventListener('click', async (e) => {
    const place = e.target.closest('[data-place]');
    if (place) {
      const k = Number(place.dataset.place);
      const model = place.dataset.model;
      const busyKey = `${model}#${k}`;
      if (placing.has(busyKey)) return;
      placing.add(busyKey);
      render();
      const { ok, status, body } = await json('/place_instance', {
        method: 'POST',
        body: { model_id: model, min_nodes: k, max_nodes: k },
      });
      placing.delete(busyKey);
      if (ok) toast(`Placing ${model.split('/').pop()} over ${k} node${k > 1 ? 's' : ''}`);
      else toast(`Could not place: ${errorMessage(status, body)}`, true);
      previewKey = null;
      render();
      return;
    }
    const del = e.target.closest('[data-delete-model]');
    if (del) {
      del.disabled = true;
      const { ok, status, body } = await json(`/models/${del.dataset.deleteModel.split('/').map(encodeURIComponent).join('/')}`, { method: 'DELETE' });
      if (ok) toast(`Deleted model ${del.dataset.deleteModel}`);
      else toast(`Could not delete: ${errorMessage(status, body)}`, true);
      cardsKey = null;
      del.disabled = false;
    }
  });
  document.getElementById('add-model').addEventListener('submit', async (e) => {
    e.preventDefault();
    const source = document.getElementById('add-source');
    const id = document.getElementById('add-id');
    const note = document.getElementById('add-note');
    const button = document.getElementById('add-button');
    if (!source.value.trim()) {
      note.textContent = 'Give a path on this node or hf:ORG/REPO/FILE.gguf.';
      note.className = 'form-note bad';
      return;
    }
    button.disabled = true;
    note.className = 'form-note';
    note.textContent = 'Reading the model’s header…';
    const request = { source: source.value.trim() };
    if (id.value.trim()) request.id = id.value.trim();
    const { ok, status, body } = await json('/models/add', { method: 'POST', body: request });
    button.disabled = false;
    if (ok) {
      note.textContent = `Added ${body?.id ?? 'the model'}. Place it to start its downloads.`;
      source.value = '';
      id.value = '';
      cardsKey = null;
      if (last) updateModels(last);
    } else {
      note.textContent = errorMessage(status, body);
      note.className = 'form-note bad';
    }
  });
}
