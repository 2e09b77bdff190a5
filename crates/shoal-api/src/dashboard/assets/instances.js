// Instances: each pipeline's ranks (node, layer range, runner state) and its measured tok/s, with a delete button
// that asks once more before it deletes.

import { json } from './api.js';
import { esc, errorMessage, instanceColors, modelName, nodeName, ranks, runnerState, setHtml, short, toast, variant } from './util.js';

/** A delete button stays armed (asking "confirm") this long. */
const ARM_MS = 5000;
let armed = null;
let last = null;

function deploymentBadge(deployment) {
  const [name, body] = variant(deployment?.status ?? 'Running');
  const cls = { Running: 'ok', Placing: 'warn', Waiting: 'warn', Failed: 'bad' }[name] ?? '';
  return `<span class="badge ${cls}" title="${esc(body?.reason ?? '')}">${esc(name.toLowerCase())}</span>`;
}

/** `tps`: Map instance id → { tps, at } measured by this page's chats. */
export function renderInstances(state, tps) {
  last = { state, tps };
  const root = document.getElementById('instances');
  const hint = document.getElementById('inst-hint');
  if (!state) return;
  const { list, colors } = instanceColors(state);
  const parts = [];
  for (const inst of list) {
    const rs = ranks(state, inst);
    const serving = rs.length > 0 && rs.every((r) => ['Ready', 'Running'].includes(variant(r.record?.status)[0]));
    const total = rs[0]?.total || inst.model?.n_layers || 1;
    const measured = tps.get(inst.id);
    const isArmed = armed && armed.id === inst.id && Date.now() - armed.at < ARM_MS;
    const segments = rs
      .map((r) => {
        const [label, cls] = runnerState(r.record?.status);
        const tone = cls === 'ok' ? colors.get(inst.id) : cls === 'bad' ? '#dc2626' : '#d97706';
        return `<span data-flex="${Math.max(1, r.end - r.start)}" data-c="${tone}" title="rank ${r.rank}: layers ${r.start}–${r.end} · ${esc(label)}"></span>`;
      })
      .join('');
    const rows = rs
      .map((r) => {
        const [label, cls, detail] = runnerState(r.record?.status);
        const node = state.nodes?.[r.node];
        return `<tr data-rank="${r.rank}" data-runner-state="${esc(variant(r.record?.status ?? 'Idle')[0])}">
          <td>${r.rank}</td>
          <td>${esc(nodeName(node, r.node))} <span class="mono hint">${esc(short(r.node))}</span></td>
          <td class="mono">${r.start}–${r.end} <span class="hint">(${r.end - r.start} of ${total})</span></td>
          <td><span class="badge ${cls}" title="${esc(detail)}">${esc(label)}${cls !== 'bad' && detail ? ` ${esc(detail)}` : ''}</span></td>
        </tr>`;
      })
      .join('');
    parts.push(`<div class="instance" data-instance="${esc(inst.id)}" data-serving="${serving}">
      <div class="instance-head">
        <span class="swatch" data-c="${colors.get(inst.id)}"></span>
        <span class="model">${esc(modelName(inst.model))}</span>
        <span class="mono hint">${esc(short(inst.id))}</span>
        ${deploymentBadge(state.deployments?.[inst.deployment])}
        ${serving ? '<span class="badge ok">serving</span>' : '<span class="badge warn">starting</span>'}
        <span class="spacer"></span>
        <span class="hint" data-tps="${measured ? measured.tps.toFixed(1) : ''}" title="measured by this page's chats">${measured ? `${measured.tps.toFixed(1)} tok/s` : '— tok/s'}</span>
        <button type="button" class="${isArmed ? 'danger small' : 'ghost small'}" data-delete-instance="${esc(inst.id)}">${isArmed ? 'Confirm delete' : 'Delete'}</button>
      </div>
      <div class="pipeline">${segments}</div>
      <table class="ranks"><thead><tr><th>Rank</th><th>Node</th><th>Layers</th><th>Runner</th></tr></thead><tbody>${rows}</tbody></table>
    </div>`);
  }
  for (const d of Object.values(state.deployments ?? {})) {
    if (d.instance && state.instances?.[d.instance]) continue;
    const [name, body] = variant(d.status);
    parts.push(`<div class="instance" data-deployment="${esc(d.id)}">
      <div class="instance-head"><span class="model">${esc(String(d.model_id).split('/').pop())}</span>
      ${deploymentBadge(d)}<span class="hint">${esc(body?.reason ?? (name === 'Placing' ? 'being placed' : ''))}</span></div></div>`);
  }
  setHtml(root, parts.length ? parts.join('') : '<div class="empty">No instances. Place a model below.</div>');
  hint.textContent = list.length ? `${list.length} running` : '';
}

export function wireInstances() {
  document.getElementById('instances').addEventListener('click', async (e) => {
    const button = e.target.closest('[data-delete-instance]');
    if (!button) return;
    const id = button.dataset.deleteInstance;
    if (!armed || armed.id !== id || Date.now() - armed.at >= ARM_MS) {
      armed = { id, at: Date.now() };
      if (last) renderInstances(last.state, last.tps);
      setTimeout(() => last && renderInstances(last.state, last.tps), ARM_MS + 50);
      return;
    }
    armed = null;
    button.disabled = true;
    button.textContent = 'Deleting…';
    const { ok, status, body } = await json(`/instance/${encodeURIComponent(id)}`, { method: 'DELETE' });
    if (ok) toast(`Deleted instance ${short(id)}`);
    else toast(`Could not delete: ${errorMessage(status, body)}`, true);
    if (last) renderInstances(last.state, last.tps);
  });
}
