// The topology: every node as a card in an SVG graph (role, memory, backends, the layers it holds, live or lost),
// dashed links for the cluster mesh and coloured links along each instance's pipeline.

import { esc, fmtBytes, instanceColors, modelName, nodeName, ranks, runnerState, setHtml, short } from './util.js';

const BOX_W = 232;
const BOX_H = 132;
const WIDTH = 780;

/** Clusters up to this size sit on an ellipse; larger ones in a grid (an ellipse would overlap their cards). */
const RING_MAX = 6;
const GRID_COLUMNS = 3;

/** Node positions: one centred, two side by side, up to RING_MAX on an ellipse, more in a grid. */
function layout(count) {
  if (count === 1) return { height: BOX_H + 48, points: [[WIDTH / 2, BOX_H / 2 + 24]] };
  if (count === 2) {
    return { height: BOX_H + 48, points: [[WIDTH / 2 - 190, BOX_H / 2 + 24], [WIDTH / 2 + 190, BOX_H / 2 + 24]] };
  }
  if (count > RING_MAX) {
    const rows = Math.ceil(count / GRID_COLUMNS);
    const gapX = (WIDTH - GRID_COLUMNS * BOX_W) / (GRID_COLUMNS + 1);
    const points = [];
    for (let i = 0; i < count; i += 1) {
      const col = i % GRID_COLUMNS;
      const row = Math.floor(i / GRID_COLUMNS);
      points.push([gapX + BOX_W / 2 + col * (BOX_W + gapX), 24 + BOX_H / 2 + row * (BOX_H + 44)]);
    }
    return { height: rows * (BOX_H + 44) + 4, points };
  }
  const rx = Math.min(WIDTH / 2 - BOX_W / 2 - 12, 170 + count * 30);
  const ry = 112 + Math.max(0, count - 3) * 34;
  const height = 2 * ry + BOX_H + 40;
  const points = [];
  for (let i = 0; i < count; i += 1) {
    const angle = -Math.PI / 2 + (i * 2 * Math.PI) / count;
    points.push([WIDTH / 2 + rx * Math.cos(angle), height / 2 + ry * Math.sin(angle)]);
  }
  return { height, points };
}

function roleOf(id, info, lost, masterId) {
  if (lost) return ['lost', 'LOST'];
  if (id === masterId) return ['master', 'MASTER'];
  if (!info?.identity || !info?.memory) return ['follower', 'JOINING'];
  return ['follower', 'FOLLOWER'];
}

function nodeCard(node, x, y, held, masterId, selfId) {
  const { id, info, lost } = node;
  const [role, roleText] = roleOf(id, info, lost, masterId);
  const left = x - BOX_W / 2;
  const top = y - BOX_H / 2;
  const total = info?.memory?.total ?? 0;
  const used = total ? total - (info?.memory?.available ?? total) : 0;
  const frac = total ? Math.min(1, used / total) : 0;
  const identity = info?.identity;
  const sub = identity ? `${identity.os} · ${identity.arch}` : 'waiting for facts';
  const backends = (info?.backends ?? []).join(', ') || '—';
  const pillW = roleText.length * 7 + 14;
  let chips = '';
  let chipX = left + 14;
  let chipY = top + 106;
  for (const h of held.slice(0, 4)) {
    const label = `${h.model} L${h.start}–${h.end}`;
    const w = Math.min(label.length * 7 + 14, BOX_W - 28);
    if (chipX + w > left + BOX_W - 10) {
      break;
    }
    const [stateLabel] = runnerState(h.status);
    chips += `<g class="layer-chip"><title>${esc(`${h.modelId} layers ${h.start}–${h.end} (${stateLabel})`)}</title>
      <rect x="${chipX}" y="${chipY}" width="${w}" height="18" rx="5" fill="${h.color}" opacity="${stateLabel === 'ready' || stateLabel === 'running' ? 1 : 0.55}"/>
      <text x="${chipX + 8}" y="${chipY + 13}">${esc(label)}</text></g>`;
    chipX += w + 6;
  }
  if (!held.length) {
    chips = `<text class="sub" x="${left + 14}" y="${chipY + 13}">${lost ? `lost ${esc(node.lostAgo)}` : 'no layers'}</text>`;
  }
  return `<g class="node" data-node="${esc(id)}" data-role="${role}" data-live="${lost ? 'lost' : 'live'}" data-self="${id === selfId}">
    <title>${esc(id)}</title>
    <rect class="node-box" x="${left}" y="${top}" width="${BOX_W}" height="${BOX_H}" rx="14"/>
    <rect class="role-pill role-${role}" x="${left + BOX_W - pillW - 12}" y="${top + 12}" width="${pillW}" height="18" rx="9"/>
    <text class="role-text" x="${left + BOX_W - pillW / 2 - 12}" y="${top + 25}" text-anchor="middle">${roleText}</text>
    <text class="title" x="${left + 14}" y="${top + 26}">${esc(nodeName(info, id))}${id === selfId ? ' ·  you' : ''}</text>
    <text class="mono" x="${left + 14}" y="${top + 42}">${esc(short(id))}</text>
    <text class="sub" x="${left + 14}" y="${top + 60}">${esc(sub)} · ${esc(backends)}</text>
    <rect class="mem-track" x="${left + 14}" y="${top + 70}" width="${BOX_W - 28}" height="6" rx="3"/>
    <rect x="${left + 14}" y="${top + 70}" width="${Math.max(0, (BOX_W - 28) * frac)}" height="6" rx="3" class="${frac > 0.85 ? 'mem-fill hot' : 'mem-fill'}"/>
    ${info?.store_fault
      ? `<text class="fault" x="${left + 14}" y="${top + 94}"><title>${esc(info.store_fault)}</title>store cannot write: no new work</text>`
      : `<text class="sub" x="${left + 14}" y="${top + 94}">${total ? `${fmtBytes(used)} / ${fmtBytes(total)} used` : 'memory unknown'}</text>`}
    ${chips}
  </g>`;
}

/** Renders the graph into `#topology`. `lost`: Map of node id → { info, at } for nodes State no longer holds. */
export function renderTopology(state, status, lost) {
  const root = document.getElementById('topology');
  const hint = document.getElementById('topo-hint');
  if (!state) {
    setHtml(root, '<div class="empty">Waiting for the cluster…</div>');
    return;
  }
  const masterId = state.session?.master;
  const selfId = status?.node;
  const nodes = Object.entries(state.nodes ?? {})
    .map(([id, info]) => ({ id, info, lost: false }))
    .concat([...lost.entries()].map(([id, l]) => ({ id, info: l.info, lost: true, lostAgo: agoText(l.at) })))
    .sort((a, b) => (a.info?.first_seen_ms ?? 0) - (b.info?.first_seen_ms ?? 0) || a.id.localeCompare(b.id));
  if (!nodes.length) {
    setHtml(root, '<div class="empty">No nodes yet.</div>');
    return;
  }
  const { height, points } = layout(nodes.length);
  const at = new Map(nodes.map((n, i) => [n.id, points[i]]));
  const { list, colors } = instanceColors(state);
  const held = new Map(nodes.map((n) => [n.id, []]));
  let pipes = '';
  for (const inst of list) {
    const rs = ranks(state, inst);
    for (const r of rs) {
      held.get(r.node)?.push({
        model: modelName(inst.model),
        modelId: inst.model?.id,
        start: r.start,
        end: r.end,
        status: r.record?.status,
        color: colors.get(inst.id),
      });
    }
    for (let i = 0; i + 1 < rs.length; i += 1) {
      const a = at.get(rs[i].node);
      const b = at.get(rs[i + 1].node);
      if (!a || !b) continue;
      const mx = (a[0] + b[0]) / 2 + (b[1] - a[1]) * 0.18;
      const my = (a[1] + b[1]) / 2 - (b[0] - a[0]) * 0.18;
      pipes += `<path class="pipe" d="M${a[0]},${a[1]} Q${mx},${my} ${b[0]},${b[1]}" stroke="${colors.get(inst.id)}"><title>${esc(modelName(inst.model))}: rank ${i} → ${i + 1}</title></path>`;
    }
  }
  let mesh = '';
  const live = nodes.filter((n) => !n.lost);
  // Every pair of nodes is linked; past a ring's size those lines would only hide the pipelines.
  for (let i = 0; nodes.length <= RING_MAX && i < live.length; i += 1) {
    for (let j = i + 1; j < live.length; j += 1) {
      const a = at.get(live[i].id);
      const b = at.get(live[j].id);
      mesh += `<line class="mesh" x1="${a[0]}" y1="${a[1]}" x2="${b[0]}" y2="${b[1]}"/>`;
    }
  }
  const cards = nodes.map((n) => nodeCard(n, at.get(n.id)[0], at.get(n.id)[1], held.get(n.id), masterId, selfId));
  setHtml(
    root,
    `<svg viewBox="0 0 ${WIDTH} ${height}" role="img" aria-label="${nodes.length} nodes">${mesh}${pipes}${cards.join('')}</svg>`,
  );
  const lostCount = nodes.length - live.length;
  hint.textContent = `${live.length} live${lostCount ? ` · ${lostCount} lost` : ''} · term ${state.session?.term ?? '—'} · idx ${state.pos?.idx ?? '—'}`;
}

function agoText(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s}s ago` : `${Math.floor(s / 60)}m ago`;
}
