// The live feed: `GET /state/stream` read with fetch (it needs the key header), reconnecting with backoff.

import { call, readSse } from './api.js';
import { sleep } from './util.js';

/** Backoff after a dropped stream: doubles from the first to the last, with jitter. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 8000;
/** The node sends health every second: this long without any frame means the stream is stuck. */
const SILENCE_MS = 5000;

/**
 * Follows the node's stream for ever. `onFrame(name, data)` gets every parsed frame; `onConnection(state)` gets
 * 'connecting', 'live' or 'reconnecting'.
 */
export async function follow(onFrame, onConnection) {
  let delay = BACKOFF_FIRST_MS;
  for (let attempt = 0; ; attempt += 1) {
    onConnection(attempt === 0 ? 'connecting' : 'reconnecting');
    const abort = new AbortController();
    let last = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - last > SILENCE_MS) abort.abort();
    }, 1000);
    try {
      const response = await call('/state/stream', {
        headers: { Accept: 'text/event-stream' },
        signal: abort.signal,
        cache: 'no-store',
      });
      if (response.ok && response.body) {
        await readSse(response.body, (name, data) => {
          last = Date.now();
          let parsed;
          try {
            parsed = JSON.parse(data);
          } catch {
            return;
          }
          if (name === 'status' || name === 'snapshot') {
            onConnection('live');
            delay = BACKOFF_FIRST_MS;
          }
          onFrame(name, parsed);
        });
      } else {
        await response.body?.cancel();
      }
    } catch {
      // Dropped, refused or stuck: retry below.
    } finally {
      clearInterval(watchdog);
    }
    onConnection('reconnecting');
    await sleep(delay * (1 + Math.random() * 0.3));
    delay = Math.min(delay * 2, BACKOFF_MAX_MS);
  }
}
