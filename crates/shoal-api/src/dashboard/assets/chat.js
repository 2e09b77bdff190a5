// Chat: streams `/v1/chat/completions` with fetch (the key travels in a header), renders markdown as tokens
// arrive, shows reasoning apart in a collapsible block, and measures time to first token and tok/s. Stop cancels
// the generation on the node (`/v1/cancel/{id}`) and drops the connection (the node also cancels on disconnect).

import { call, json, readSse } from './api.js';
import { markdown } from './markdown.js';
import { esc, errorMessage, modelName, variant } from './util.js';

let history = [];
let running = null;
let getState = () => null;
let onMeasured = () => {};

function el(id) {
  return document.getElementById(id);
}

/** Keeps the model list in step with State: models with an instance, serving ones first. */
export function updateChatModels(state) {
  const select = el('chat-model');
  const byModel = new Map();
  for (const inst of Object.values(state?.instances ?? {})) {
    const serving = Object.keys(inst.assignments?.shards ?? {}).every((r) =>
      ['Ready', 'Running'].includes(variant(state.runners?.[r]?.status)[0]),
    );
    const prev = byModel.get(inst.model.id);
    byModel.set(inst.model.id, { card: inst.model, serving: serving || prev?.serving });
  }
  const options = [...byModel.values()].sort((a, b) => Number(b.serving) - Number(a.serving));
  const key = options.map((o) => `${o.card.id}:${o.serving}`).join('|');
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  const chosen = select.value;
  select.innerHTML = options.length
    ? options
        .map((o) => `<option value="${esc(o.card.id)}">${esc(modelName(o.card))}${o.serving ? '' : ' (starting)'}</option>`)
        .join('')
    : '<option value="">No model placed yet</option>';
  if (options.some((o) => o.card.id === chosen)) select.value = chosen;
  select.disabled = !options.length;
}

function scrollDown() {
  const log = el('chat-log');
  log.scrollTop = log.scrollHeight;
}

function bubble(role, text) {
  el('chat-empty')?.remove();
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  if (role === 'user') div.textContent = text;
  else div.innerHTML = '<details class="thinking" hidden><summary>Thinking</summary><div class="reasoning"></div></details><div class="content caret"></div><div class="meta"></div>';
  el('chat-log').append(div);
  scrollDown();
  return div;
}

function setRunning(on) {
  el('chat-send').hidden = on;
  el('chat-stop').hidden = !on;
  el('chat-input').disabled = false;
}

/** The instance serving command `uuid`, once State shows its task. */
function instanceOf(uuid, model) {
  const state = getState();
  const task = state?.tasks?.[state?.task_by_command?.[uuid]];
  if (task) return task.instance;
  const candidates = Object.values(state?.instances ?? {}).filter((i) => i.model?.id === model);
  return candidates.length === 1 ? candidates[0].id : null;
}

async function send(text) {
  const model = el('chat-model').value;
  if (!model || running) return;
  history.push({ role: 'user', content: text });
  bubble('user', text);
  const div = bubble('assistant', '');
  const content = div.querySelector('.content');
  const thinking = div.querySelector('.thinking');
  const reasoning = div.querySelector('.reasoning');
  const meta = div.querySelector('.meta');
  const abort = new AbortController();
  const run = { abort, id: null, stopped: false };
  running = run;
  setRunning(true);
  const started = performance.now();
  let first = null;
  let lastAt = null;
  let deltas = 0;
  let usageTokens = null;
  let text_ = '';
  let thought = '';
  let instance = null;
  let error = null;
  let finish = null;
  let pending = false;
  const paint = () => {
    pending = false;
    content.innerHTML = markdown(text_);
    if (thought) {
      thinking.hidden = false;
      reasoning.textContent = thought;
    }
    scrollDown();
  };
  const schedule = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(paint);
    }
  };
  try {
    const response = await call('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
      signal: abort.signal,
    });
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      throw new Error(errorMessage(response.status, body));
    }
    await readSse(response.body, (_name, data) => {
      if (data === '[DONE]') return;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        return;
      }
      if (chunk.error) {
        error = chunk.error.message ?? 'the generation failed';
        return;
      }
      if (chunk.id && !run.id) run.id = chunk.id;
      if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
      const choice = chunk.choices?.[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      const delta = choice.delta ?? {};
      const piece = delta.content ?? '';
      const thinkingPiece = delta.reasoning_content ?? delta.reasoning ?? '';
      if (!piece && !thinkingPiece) return;
      const now = performance.now();
      if (first === null) first = now;
      lastAt = now;
      deltas += 1;
      text_ += piece;
      thought += thinkingPiece;
      if (!instance && run.id) instance = instanceOf(run.id.replace(/^chatcmpl-/, ''), model);
      schedule();
    });
  } catch (e) {
    if (!run.stopped) error = e?.message ?? String(e);
  }
  paint();
  content.classList.remove('caret');
  const tokens = usageTokens ?? deltas;
  const ttft = first === null ? null : first - started;
  const decodeSeconds = first !== null && lastAt > first ? (lastAt - first) / 1000 : 0;
  const tps = decodeSeconds > 0 ? Math.max(0, tokens - 1) / decodeSeconds : 0;
  const parts = [];
  if (ttft !== null) parts.push(`TTFT ${Math.round(ttft)} ms`);
  parts.push(`${tokens} tokens`);
  if (tps) parts.push(`${tps.toFixed(1)} tok/s`);
  if (run.stopped) parts.push('stopped');
  else if (finish) parts.push(finish);
  if (error) {
    div.classList.add('error');
    parts.push(`error: ${error}`);
  }
  meta.textContent = parts.join(' · ');
  el('chat-stats').textContent = ttft !== null ? `last reply: ${parts.slice(0, 3).join(' · ')}` : '';
  div.dataset.done = '1';
  div.dataset.tokens = String(tokens);
  if (text_) history.push({ role: 'assistant', content: text_ });
  if (!instance && run.id) instance = instanceOf(run.id.replace(/^chatcmpl-/, ''), model);
  if (instance && tps) onMeasured(instance, tps);
  running = null;
  setRunning(false);
  el('chat-input').focus();
}

async function stop() {
  const run = running;
  if (!run) return;
  run.stopped = true;
  if (run.id) {
    // The node cancels on disconnect too; the explicit cancel frees the pipeline at once.
    await json(`/v1/cancel/${encodeURIComponent(run.id)}`, { method: 'POST' }).catch(() => null);
  }
  run.abort.abort();
}

/** `state`: returns the newest State; `measured(instance, tps)`: a finished reply's decode rate. */
export function wireChat(state, measured) {
  getState = state;
  onMeasured = measured;
  el('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = el('chat-input');
    const text = input.value.trim();
    if (!text || running) return;
    input.value = '';
    send(text);
  });
  el('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el('chat-form').requestSubmit();
    }
  });
  el('chat-stop').addEventListener('click', stop);
  el('chat-new').addEventListener('click', () => {
    if (running) return;
    history = [];
    el('chat-log').innerHTML = '<div class="empty" id="chat-empty">Pick a placed model and say hello.</div>';
    el('chat-stats').textContent = '';
  });
}
