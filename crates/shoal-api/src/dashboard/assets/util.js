// Small helpers every panel shares: escaping, formatting, names of things in State.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for HTML (element content and quoted attributes). */
export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export function short(id) {
  return String(id ?? '').slice(0, 8);
}

export function fmtBytes(bytes) {
  if (!Number.isFinite(bytes)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

export function fmtNumber(n) {
  if (!Number.isFinite(n)) return '—';
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

export function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

/** A node's display name: its friendly name, or its short id. */
export function nodeName(info, id) {
  return info?.identity?.friendly_name || short(id);
}

/** A node's label among the others of `state`: its name, with a short id when another node has the same name. */
export function nodeLabel(state, id) {
  const info = state?.nodes?.[id];
  const name = nodeName(info, id);
  const same = Object.entries(state?.nodes ?? {}).some(([other, i]) => other !== id && nodeName(i, other) === name);
  return same ? `${name}·${String(id).slice(0, 4)}` : name;
}

/** The variant name of an externally tagged enum as serde writes it (`"Ready"` or `{"Loading": {...}}`). */
export function variant(value) {
  if (typeof value === 'string') return [value, null];
  if (value && typeof value === 'object') {
    const [name] = Object.keys(value);
    return [name, value[name]];
  }
  return ['Unknown', null];
}

/** A short model name: its first alias, else the last part of its id. */
export function modelName(card) {
  if (!card) return '?';
  return card.aliases?.[0] || String(card.id).split('/').pop();
}

const PALETTE = ['#14b8a6', '#6366f1', '#f59e0b', '#ec4899', '#0ea5e9', '#84cc16', '#a855f7', '#ef4444'];

export function color(i) {
  return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

/** Instances in a stable order (oldest first) with their colour. */
export function instanceColors(state) {
  const list = Object.values(state?.instances ?? {}).sort(
    (a, b) => a.created_ms - b.created_ms || String(a.id).localeCompare(String(b.id)),
  );
  const colors = new Map();
  list.forEach((inst, i) => colors.set(inst.id, color(i)));
  return { list, colors };
}

/** Each rank of an instance: runner id, node, layer range and the runner's record. */
export function ranks(state, instance) {
  const byRunner = new Map(Object.entries(instance.assignments?.node_runner ?? {}).map(([n, r]) => [r, n]));
  return Object.entries(instance.assignments?.shards ?? {})
    .map(([runner, shard]) => {
      const [, s] = variant(shard);
      return {
        runner,
        node: byRunner.get(runner),
        rank: s?.device_rank ?? 0,
        start: s?.start_layer ?? 0,
        end: s?.end_layer ?? 0,
        total: s?.n_layers ?? 0,
        record: state?.runners?.[runner],
      };
    })
    .sort((a, b) => a.rank - b.rank);
}

/** A runner status as [label, badge class, detail]. */
export function runnerState(status) {
  const [name, body] = variant(status ?? 'Idle');
  switch (name) {
    case 'Ready':
      return ['ready', 'ok', ''];
    case 'Running':
      return ['running', 'ok', ''];
    case 'Loading':
      return ['loading', 'warn', `${body?.layers_loaded ?? 0}/${body?.total_layers ?? '?'}`];
    case 'Loaded':
    case 'WarmingUp':
      return [name === 'Loaded' ? 'loaded' : 'warming up', 'warn', ''];
    case 'Failed':
      return ['failed', 'bad', body?.error ?? ''];
    case 'ShuttingDown':
    case 'Shutdown':
      return ['stopping', 'info', ''];
    default:
      return [String(name).toLowerCase(), '', ''];
  }
}

/** Replaces `el`'s content only when it differs (keeps focus, hover and element identity otherwise). */
export function setHtml(el, html) {
  if (!el || el.__html === html) return false;
  el.__html = html;
  el.innerHTML = html;
  applyStyles(el);
  return true;
}

/** The policy forbids style attributes: widths and colours travel as data attributes and are set here. */
export function applyStyles(root) {
  for (const node of root.querySelectorAll('[data-w]')) node.style.width = `${node.dataset.w}%`;
  for (const node of root.querySelectorAll('[data-c]')) node.style.background = node.dataset.c;
  for (const node of root.querySelectorAll('[data-flex]')) node.style.flex = node.dataset.flex;
}

export function toast(message, bad = false) {
  const box = document.getElementById('toasts');
  if (!box) return;
  const el = document.createElement('div');
  el.className = bad ? 'toast bad' : 'toast';
  el.textContent = message;
  box.append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 4000);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The message of an API error body (`{"error": {"message": …}}`), or the status. */
export function errorMessage(status, body) {
  return body?.error?.message || body?.message || `HTTP ${status}`;
}
