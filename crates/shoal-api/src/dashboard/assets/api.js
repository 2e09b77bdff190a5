// Every data call of the page: the API key (asked once on a 401, kept in sessionStorage, sent as a Bearer token).

const KEY = 'shoal.apiKey';
let asking = null;

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

function askKey(refused) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const dialog = document.getElementById('key-dialog');
    const form = document.getElementById('key-form');
    const input = document.getElementById('key-input');
    const note = document.getElementById('key-note');
    note.textContent = refused ? 'That key was refused; try again.' : '';
    note.className = refused ? 'form-note bad' : 'form-note';
    const onCancel = (e) => e.preventDefault();
    const onSubmit = (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      try {
        sessionStorage.setItem(KEY, key);
      } catch {
        /* a private window without storage: the key lives until reload */
      }
      memoryKey = key;
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('cancel', onCancel);
      dialog.close();
      asking = null;
      resolve(key);
    };
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('cancel', onCancel);
    document.getElementById('conn').dataset.conn = 'locked';
    document.getElementById('conn-text').textContent = 'key needed';
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return asking;
}

let memoryKey = null;

/** `fetch` with the key; a 401 asks for the key and tries again. */
export async function call(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = apiKey() || memoryKey;
    if (key) headers.set('Authorization', `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await response.body?.cancel();
    await askKey(Boolean(key));
  }
}

/** A JSON call: `{ ok, status, body }` (body null when not JSON). */
export async function json(path, options = {}) {
  const init = { ...options };
  if (init.body !== undefined && typeof init.body !== 'string') {
    init.body = JSON.stringify(init.body);
    init.headers = { 'Content-Type': 'application/json', ...(init.headers || {}) };
  }
  const response = await call(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { ok: response.ok, status: response.status, body };
}

/**
 * Reads a server-sent event body, calling `onEvent(name, data)` per event. Resolves at the end of the body.
 * Used for the live stream and the chat (both need headers, so neither can use EventSource).
 */
export async function readSse(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let name = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      let line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) onEvent(name, data.join('\n'));
        name = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        // A comment: keep-alive.
      } else if (line.startsWith('event:')) {
        name = line.slice(6).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      }
    }
  }
}
