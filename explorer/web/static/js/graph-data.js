// The drawn graph (GET /api/v1/graph), fetched once and shared by the graph and lookup views.

import { getBytes } from './api.js';
import { parseGraph } from './graph-parse.js';
import { graphStats, sharedGraph } from './graph-view.js';

const REFRESH_AFTER_MS = 20_000;

let pending = null;
let loadedAt = 0;
let stale = false;

/** Loads the graph into the shared view (once; again when `force` or marked stale). */
export async function ensureGraph({ force = false } = {}) {
  const graph = sharedGraph();
  if (pending) return pending;
  if (graph.hasData() && !force && !stale) return graph;
  const stats = graphStats();
  pending = (async () => {
    if (stats.fetch_start_ms === null) stats.fetch_start_ms = Math.round(performance.now());
    const data = parseGraph(await getBytes('/graph'));
    graph.setData(data);
    if (stats.data_ms === null) stats.data_ms = Math.round(performance.now());
    loadedAt = Date.now();
    stale = false;
    return graph;
  })();
  try {
    return await pending;
  } finally {
    pending = null;
  }
}

let timer = null;

/**
 * The drawn graph is out of date (a node it lacks joined, a crawl finished): fetch it again,
 * keeping positions, at most once every 20 s. `onDone` runs after the new graph is in.
 */
export function scheduleGraphRefresh(onDone) {
  stale = true;
  if (timer) return;
  const wait = Math.max(1000, loadedAt + REFRESH_AFTER_MS - Date.now());
  timer = setTimeout(async () => {
    timer = null;
    try {
      await ensureGraph({ force: true });
      if (onDone) onDone();
    } catch (_) {
      // Keep the graph that is drawn; the next change tries again.
    }
  }, wait);
}

export function cancelGraphRefresh() {
  clearTimeout(timer);
  timer = null;
}
