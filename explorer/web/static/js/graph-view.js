// The overlay graph on the page: shows the engine's latest base image, draws highlights on
// top (hover, selection, lookup rounds), and turns pointer, wheel and keyboard input into a
// view. While the user pans or zooms, the drawn canvas (which overhangs the stage by the
// engine's margin) is only moved and scaled with a CSS transform, so a frame costs the same
// whatever the graph's size; when the input pauses it is redrawn, and the engine draws the
// new view crisply. Layout and the base image are made in graph-worker.js.
//
// Timing marks, in ms since navigation start (performance.now()), on
// window.__explorerGraphStats:
//   fetch_start_ms   the graph request was sent
//   data_ms          the graph JSON arrived and was parsed into typed arrays
//   first_frame_ms   the engine's first base image reached the page
//   first_render_ms  that image (every node and edge) was drawn on the visible canvas
//   interactive_ms   the page's main thread was free again after the first render, with
//                    hit-testing data and input handlers in place (a task queued from the
//                    first render's animation frame ran)
// and, while the pointer drags the graph, `pan_frames`: one entry per animation frame
// (the view follows the pointer's latest position every frame while the button is held),
// {interval_ms (since the previous frame of the same drag), work_ms (main-thread time spent
// in that frame's callback)}.

import { GraphEngine, MARGIN, nodeRadius, ringRadius } from './graph-engine.js';
import { el, replace, cssVar, keyFraction, shortId, capabilityLabel, CAPABILITIES, compareVersions, fmtInt } from './util.js';

const CAP_BITS = Object.fromEntries(CAPABILITIES.map((c, i) => [c, 1 << i]));
// Colour-by-capability: the most distinctive capability wins.
const CAP_PRIORITY = ['authority', 'bridge_tor', 'bridge_i2p', 'relay', 'update_mirror', 'store_forward'];
const SERIES = 8;
const PAN_FRAMES_KEPT = 600;

const stats = {
  nodes: 0,
  edges: 0,
  renderer: 'canvas2d',
  engine: null,
  fetch_start_ms: null,
  data_ms: null,
  first_frame_ms: null,
  first_render_ms: null,
  interactive_ms: null,
  frames: 0,
  worker_render_ms: null,
  layout: { state: 'idle', ticks: 0, alpha: 1, layout_ms: 0 },
  pan_frames: [],
};
window.__explorerGraphStats = stats;

export function graphStats() {
  return stats;
}

function mainThreadEngine(onMessage) {
  stats.engine = 'main-thread';
  const engine = new GraphEngine(
    (msg) => onMessage(msg),
    (w, h) => {
      const c = document.createElement('canvas');
      c.width = w;
      c.height = h;
      return c;
    },
    false,
  );
  return (msg) => engine.handle(msg);
}

/**
 * The engine in a worker when the browser can draw off the main thread (OffscreenCanvas),
 * else on the page's thread. The last message of each kind is kept so that, should the
 * worker fail to start, the same-thread engine picks up where it was.
 */
function makeEngine(onMessage) {
  const last = new Map();
  let send = null;
  const offscreenOk = typeof OffscreenCanvas === 'function' && typeof Worker === 'function' && (() => {
    try {
      return Boolean(new OffscreenCanvas(1, 1).getContext('2d'));
    } catch (_) {
      return false;
    }
  })();
  const fallBack = () => {
    send = mainThreadEngine(onMessage);
    for (const msg of last.values()) send(msg);
  };
  if (offscreenOk) {
    try {
      const worker = new Worker(new URL('./graph-worker.js', import.meta.url), { type: 'module' });
      worker.onmessage = (event) => onMessage(event.data);
      worker.onerror = (event) => {
        event.preventDefault();
        console.warn('explorer: the graph worker failed; drawing on the main thread:', event.message || 'it did not load'); // eslint-disable-line no-console
        worker.terminate();
        fallBack();
      };
      stats.engine = 'worker';
      send = (msg) => worker.postMessage(msg);
    } catch (_) {
      send = null;
    }
  }
  if (!send) fallBack();
  return {
    post: (msg) => {
      if (msg.type === 'init') last.clear();
      last.set(msg.type, msg.type === 'layout' ? { ...last.get('layout'), ...msg, reheat: 0 } : msg);
      send(msg);
    },
  };
}

export class GraphView {
  constructor() {
    this.onSelect = null;
    this.onOpen = null;
    this.onStats = null;
    this.data = null;
    this.filter = { state: 'all', capability: '', version: '' };
    this.colourMode = 'state';
    this.layoutMode = 'force';
    this.running = true;
    this.selected = -1;
    this.hovered = -1;
    this.overlay = null;
    this.selfIndex = -1;
    this.selfId = null;
    this.view = { k: 1, x: 0, y: 0 };
    this.fit = true;
    this.frame = null;
    this.positions = null;
    this.visible = null;
    this.legend = [];
    this.tickPending = false;
    this.needsDraw = false;
    this.needsMove = false;
    this.drawnView = null;
    this.lastViewSent = 0;
    this.interacting = false;
    this.pointers = new Map();
    this.drag = null;
    this.width = 0;
    this.height = 0;
    this.dpr = Math.min(2, window.devicePixelRatio || 1);
    this.frameWaiters = [];
    this.engine = makeEngine((msg) => this.onEngineMessage(msg));
    this.buildDom();
    // Light or dark: the canvas colours follow the stylesheet's.
    if (window.matchMedia) {
      window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => this.restyle());
    }
  }

  // ------------------------------------------------------------------ DOM

  buildDom() {
    this.canvas = el('canvas', {
      class: 'graph-canvas',
      testid: 'graph-canvas',
      tabindex: '0',
      role: 'application',
      'aria-roledescription': 'network graph',
      'aria-label': 'Network graph. Drag or use the arrow keys to pan, the wheel or + and − to zoom, 0 to fit, Enter to select the node nearest the centre (again to open its page), Escape to clear the selection.',
    });
    this.ctx = this.canvas.getContext('2d');
    this.tooltip = el('div', { class: 'graph-tooltip', testid: 'graph-tooltip', 'aria-hidden': 'true', hidden: true });
    this.announcer = el('p', { class: 'visually-hidden', 'aria-live': 'polite', testid: 'graph-announce' });
    this.legendEl = el('ul', { class: 'graph-legend', testid: 'graph-legend', 'aria-label': 'Legend' });
    this.emptyEl = el('p', { class: 'graph-empty muted', testid: 'graph-empty', hidden: true }, 'No nodes to draw.');
    const zoomIn = el('button', { type: 'button', class: 'btn btn-icon', testid: 'graph-zoom-in', 'aria-label': 'Zoom in', title: 'Zoom in (+)' }, '+');
    const zoomOut = el('button', { type: 'button', class: 'btn btn-icon', testid: 'graph-zoom-out', 'aria-label': 'Zoom out', title: 'Zoom out (−)' }, '−');
    const fit = el('button', { type: 'button', class: 'btn btn-icon btn-fit', testid: 'graph-fit', title: 'Fit the whole graph (0)' }, 'Fit');
    zoomIn.addEventListener('click', () => this.zoomAt(this.width / 2, this.height / 2, 1.5));
    zoomOut.addEventListener('click', () => this.zoomAt(this.width / 2, this.height / 2, 1 / 1.5));
    fit.addEventListener('click', () => this.fitAll());
    this.root = el('div', { class: 'graph-stage', testid: 'graph-stage', dataset: { layoutState: 'idle', frame: '0', highlighted: '0', selected: '' } },
      this.canvas,
      el('div', { class: 'graph-zoom', role: 'group', 'aria-label': 'Zoom' }, zoomIn, zoomOut, fit),
      this.legendEl,
      this.emptyEl,
      this.tooltip,
      this.announcer);
    this.bindInput();
    this.resizeObserver = new ResizeObserver(() => this.resize());
  }

  mount(container) {
    container.append(this.root);
    this.resizeObserver.observe(this.root);
    this.resize();
  }

  unmount() {
    this.frameWaiters = [];
    this.resizeObserver.disconnect();
    this.root.remove();
    this.onSelect = null;
    this.onOpen = null;
    this.onStats = null;
    this.setOverlay(null);
    this.hideTooltip();
  }

  resize() {
    const rect = this.root.getBoundingClientRect();
    const width = Math.max(1, Math.floor(rect.width));
    const height = Math.max(1, Math.floor(rect.height));
    if (width === this.width && height === this.height) return;
    if (!this.fit && this.width) {
      // Keep the centre where it was.
      this.view.x += (width - this.width) / 2;
      this.view.y += (height - this.height) / 2;
    }
    this.width = width;
    this.height = height;
    this.dpr = Math.min(2, window.devicePixelRatio || 1);
    // The canvas overhangs the stage by MARGIN on every side (the stage clips it), so a pan
    // can move it with a CSS transform and still show what lay just off screen.
    const M = MARGIN;
    this.canvas.width = Math.round((width + 2 * M) * this.dpr);
    this.canvas.height = Math.round((height + 2 * M) * this.dpr);
    this.canvas.style.width = `${width + 2 * M}px`;
    this.canvas.style.height = `${height + 2 * M}px`;
    this.canvas.style.left = `${-M}px`;
    this.canvas.style.top = `${-M}px`;
    this.sendView(true);
    // Redraw now (the resized canvas is blank until then), not at the next frame.
    if (this.frame) this.draw();
  }

  // ------------------------------------------------------------------ data

  /**
   * graph = {crawl_id, simulated, nodes: [{id, up, version, capabilities}], edges}, with
   * edges a Uint32Array of index pairs (see graph-parse.js) or [[i, j]].
   */
  setData(graph) {
    const nodes = Array.isArray(graph.nodes) ? graph.nodes : [];
    const n = nodes.length;
    const ids = new Array(n);
    const up = new Uint8Array(n);
    const caps = new Uint8Array(n);
    const versions = new Array(n);
    const index = new Map();
    const keys = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const node = nodes[i] || {};
      ids[i] = String(node.id ?? '');
      index.set(ids[i], i);
      up[i] = node.up ? 1 : 0;
      // The explorer stores an unparsable agent's version as "unknown"; lists send null.
      versions[i] = typeof node.version === 'string' && node.version && node.version !== 'unknown' ? node.version : null;
      let bits = 0;
      for (const c of Array.isArray(node.capabilities) ? node.capabilities : []) bits |= CAP_BITS[c] || 0;
      caps[i] = bits;
      keys[i] = keyFraction(ids[i]);
    }
    // Edges between two known nodes, no loops.
    let edges;
    let m = 0;
    if (graph.edges instanceof Uint32Array) {
      const pairs = graph.edges;
      edges = new Uint32Array(pairs.length);
      for (let e = 0; e + 1 < pairs.length; e += 2) {
        const a = pairs[e];
        const b = pairs[e + 1];
        if (a >= n || b >= n || a === b) continue;
        edges[2 * m] = a;
        edges[2 * m + 1] = b;
        m += 1;
      }
    } else {
      const rawEdges = Array.isArray(graph.edges) ? graph.edges : [];
      edges = new Uint32Array(rawEdges.length * 2);
      for (const edge of rawEdges) {
        const a = Array.isArray(edge) ? Number(edge[0]) : NaN;
        const b = Array.isArray(edge) ? Number(edge[1]) : NaN;
        if (!Number.isInteger(a) || !Number.isInteger(b) || a < 0 || b < 0 || a >= n || b >= n || a === b) continue;
        edges[2 * m] = a;
        edges[2 * m + 1] = b;
        m += 1;
      }
    }
    const edgeList = edges.length === 2 * m ? edges : edges.slice(0, 2 * m);
    // Adjacency (CSR) for highlighting a node's links.
    const degree = new Uint32Array(n + 1);
    for (let e = 0; e < edgeList.length; e++) degree[edgeList[e] + 1] += 1;
    for (let i = 0; i < n; i++) degree[i + 1] += degree[i];
    const adjStart = degree.slice();
    const fill = degree.slice();
    const adj = new Uint32Array(edgeList.length);
    for (let e = 0; e < edgeList.length; e += 2) {
      const a = edgeList[e];
      const b = edgeList[e + 1];
      adj[fill[a]++] = b;
      adj[fill[b]++] = a;
    }
    // Seed positions from the previous graph, by id, so a refresh does not start over.
    let seed = null;
    if (this.data && this.positions && this.data.ids.length === this.positions.length / 2) {
      seed = new Float32Array(n * 2).fill(NaN);
      let kept = 0;
      for (let i = 0; i < n; i++) {
        const old = this.data.index.get(ids[i]);
        if (old !== undefined) {
          seed[2 * i] = this.positions[2 * old];
          seed[2 * i + 1] = this.positions[2 * old + 1];
          kept += 1;
        }
      }
      if (!kept) seed = null;
    }
    const selectedId = this.selected >= 0 && this.data ? this.data.ids[this.selected] : null;
    this.data = {
      ids, up, caps, versions, index, keys, edges: edgeList, adjStart, adj,
      crawlId: graph.crawl_id ?? null, simulated: Boolean(graph.simulated),
    };
    // With seed positions the last image still matches (same places, new indices) until the
    // engine sends one for the new graph; without, there is nothing to show yet.
    this.positions = seed;
    if (!seed) this.frame = null;
    this.selected = selectedId !== null && index.has(selectedId) ? index.get(selectedId) : -1;
    this.hovered = -1;
    this.selfIndex = this.selfId !== null && index.has(this.selfId) ? index.get(this.selfId) : -1;
    stats.nodes = n;
    stats.edges = m;
    this.root.dataset.nodeCount = String(n);
    this.root.dataset.edgeCount = String(m);
    this.emptyEl.hidden = n > 0;
    this.engine.post({ type: 'init', n, edges: edgeList.slice(), keys, positions: seed || undefined });
    this.engine.post({ type: 'layout', mode: this.layoutMode, running: this.running });
    this.restyle();
    this.sendView(true);
    this.requestRedraw();
  }

  hasData() {
    return Boolean(this.data);
  }

  setSelf(id) {
    this.selfId = id || null;
    this.selfIndex = this.data && id && this.data.index.has(id) ? this.data.index.get(id) : -1;
    this.requestRedraw();
  }

  /** Applies a live `node` event; false when the node is not in the drawn graph. */
  updateNode(summary) {
    if (!this.data || !summary || typeof summary.id !== 'string') return false;
    const i = this.data.index.get(summary.id);
    if (i === undefined) return false;
    this.data.up[i] = summary.up ? 1 : 0;
    if ('version' in summary) this.data.versions[i] = typeof summary.version === 'string' && summary.version && summary.version !== 'unknown' ? summary.version : null;
    if (Array.isArray(summary.capabilities)) {
      let bits = 0;
      for (const c of summary.capabilities) bits |= CAP_BITS[c] || 0;
      this.data.caps[i] = bits;
    }
    this.restyleSoon();
    return true;
  }

  restyleSoon() {
    if (this.restyleTimer) return;
    this.restyleTimer = setTimeout(() => {
      this.restyleTimer = null;
      this.restyle();
    }, 250);
  }

  versionsList() {
    if (!this.data) return [];
    const counts = new Map();
    for (const v of this.data.versions) counts.set(v, (counts.get(v) || 0) + 1);
    return [...counts.entries()].sort((a, b) => b[1] - a[1] || compareVersions(b[0], a[0]));
  }

  // ------------------------------------------------------------------ style, filters

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this.restyle();
  }

  setColourMode(mode) {
    this.colourMode = mode;
    this.restyle();
  }

  setLayout(mode) {
    this.layoutMode = mode;
    this.engine.post({ type: 'layout', mode });
    this.fitAll();
  }

  /** Heats a settled layout up again (new nodes, or a layout the user wants redone). */
  rerun() {
    this.running = true;
    this.engine.post({ type: 'layout', running: true, reheat: 0.5 });
  }

  setRunning(running) {
    this.running = running;
    this.engine.post({ type: 'layout', running, reheat: running ? 0.3 : 0 });
  }

  readTheme() {
    this.theme = {
      accent: cssVar('--accent', '#2456c7'),
      surface: cssVar('--surface', '#fff'),
      text: cssVar('--text', '#1c2230'),
      ok: cssVar('--ok', '#1c7a43'),
      danger: cssVar('--danger', '#b3261e'),
      warn: cssVar('--warn', '#8a5a00'),
      past: cssVar('--lookup-past', '#8a94a6'),
      learned: cssVar('--lookup-learned', '#7c4dff'),
    };
    return this.theme;
  }

  restyle() {
    if (!this.data) return;
    this.readTheme();
    const { ids, up, caps, versions } = this.data;
    const n = ids.length;
    const colour = new Uint8Array(n);
    const visible = new Uint8Array(n);
    const series = Array.from({ length: SERIES }, (_, i) => cssVar(`--series-${i + 1}`, '#888'));
    const other = cssVar('--graph-other', '#999');
    let palette;
    let legend;
    if (this.colourMode === 'version') {
      const list = this.versionsList();
      const top = list.filter(([v]) => v !== null).slice(0, SERIES - 1).map(([v]) => v);
      const slot = new Map(top.map((v, i) => [v, i]));
      palette = [...series.slice(0, top.length), other];
      const otherSlot = top.length;
      const counts = new Array(palette.length).fill(0);
      for (let i = 0; i < n; i++) {
        const s = slot.has(versions[i]) ? slot.get(versions[i]) : otherSlot;
        colour[i] = s;
        counts[s] += 1;
      }
      legend = top.map((v, i) => ({ label: v, colour: palette[i], count: counts[i] }));
      if (counts[otherSlot]) legend.push({ label: 'other / unknown', colour: other, count: counts[otherSlot] });
    } else if (this.colourMode === 'capability') {
      palette = [...CAP_PRIORITY.map((_, i) => series[i]), other];
      const counts = new Array(palette.length).fill(0);
      for (let i = 0; i < n; i++) {
        let s = CAP_PRIORITY.length;
        for (let p = 0; p < CAP_PRIORITY.length; p++) {
          if (caps[i] & CAP_BITS[CAP_PRIORITY[p]]) {
            s = p;
            break;
          }
        }
        colour[i] = s;
        counts[s] += 1;
      }
      legend = CAP_PRIORITY.map((c, i) => ({ label: capabilityLabel(c), colour: palette[i], count: counts[i] }))
        .filter((entry) => entry.count);
      legend.push({ label: 'no capability', colour: other, count: counts[CAP_PRIORITY.length] });
    } else {
      palette = [cssVar('--graph-up', '#1c7a43'), cssVar('--graph-down', '#b3261e')];
      let upCount = 0;
      for (let i = 0; i < n; i++) {
        colour[i] = up[i] ? 0 : 1;
        upCount += up[i];
      }
      legend = [
        { label: 'up', colour: palette[0], count: upCount },
        { label: 'down', colour: palette[1], count: n - upCount },
      ];
    }
    const { state, capability, version } = this.filter;
    const capBit = capability ? CAP_BITS[capability] || 0 : 0;
    let shown = 0;
    for (let i = 0; i < n; i++) {
      let ok = true;
      if (state === 'up' && !up[i]) ok = false;
      else if (state === 'down' && up[i]) ok = false;
      if (ok && capability && !(caps[i] & capBit)) ok = false;
      if (ok && version) ok = version === 'unknown' ? versions[i] === null : versions[i] === version;
      visible[i] = ok ? 1 : 0;
      shown += visible[i];
    }
    this.visible = visible;
    this.legend = legend;
    this.shown = shown;
    this.root.dataset.visibleCount = String(shown);
    this.renderLegend();
    const m = this.data.edges.length / 2;
    const edgeAlpha = Math.min(0.5, Math.max(0.07, 28 / Math.sqrt(Math.max(1, m))));
    // The edge colour, "r, g, b" in the stylesheet, as numbers for the engine's rasterizer.
    let edgeRgb = cssVar('--graph-edge-rgb', '90, 100, 120').split(',').map((v) => Math.round(Number(v)));
    if (edgeRgb.length !== 3 || !edgeRgb.every((v) => v >= 0 && v <= 255)) edgeRgb = [90, 100, 120];
    this.engine.post({
      type: 'style',
      colour,
      palette,
      visible: visible.slice(),
      edgeRgb,
      edgeAlpha: Number(edgeAlpha.toFixed(3)),
      haloColour: cssVar('--surface', '#fff'),
    });
    if (this.selected >= 0 && !visible[this.selected]) this.select(-1);
    this.requestRedraw();
  }

  renderLegend() {
    this.legendEl.replaceChildren(...this.legend.map((entry) => {
      const swatch = el('span', { class: 'swatch', 'aria-hidden': 'true' });
      swatch.style.background = entry.colour;
      return el('li', { testid: 'graph-legend-item' }, swatch, entry.label, ' ', el('span', { class: 'muted' }, fmtInt(entry.count)));
    }));
  }

  // ------------------------------------------------------------------ engine

  onEngineMessage(msg) {
    if (msg.type === 'error') {
      console.warn('explorer: graph engine error', msg.message); // eslint-disable-line no-console
      return;
    }
    if (msg.type !== 'frame') return;
    if (this.frame && this.frame.bitmap && this.frame.bitmap !== msg.bitmap && typeof this.frame.bitmap.close === 'function') {
      this.frame.bitmap.close();
    }
    if (msg.positions.length !== (this.data ? this.data.ids.length * 2 : -1)) {
      // A frame of a graph that has since been replaced.
      if (msg.bitmap && typeof msg.bitmap.close === 'function') msg.bitmap.close();
      return;
    }
    this.frame = msg;
    this.positions = msg.positions;
    if (this.fit) this.view = { ...msg.view };
    stats.frames += 1;
    stats.worker_render_ms = Math.round(msg.renderMs * 10) / 10;
    stats.layout = {
      state: msg.stats.state,
      ticks: msg.stats.ticks,
      alpha: Math.round(msg.stats.alpha * 1000) / 1000,
      layout_ms: Math.round(msg.stats.layoutMs),
    };
    if (stats.first_frame_ms === null) stats.first_frame_ms = Math.round(performance.now());
    this.root.dataset.layoutState = msg.stats.state;
    this.root.dataset.frame = String(msg.seq);
    if (this.onStats) this.onStats(stats);
    this.frameMode = msg.stats.state === 'ring' ? 'ring' : 'force';
    if (this.frameMode === this.layoutMode) {
      const waiters = this.frameWaiters;
      this.frameWaiters = [];
      for (const fn of waiters) fn();
    }
    this.requestRedraw();
  }

  /** Runs `fn` once node positions of the current layout are known (now, or after a frame). */
  whenPositioned(fn) {
    if (this.frame && this.positions && this.frameMode === this.layoutMode) fn();
    else this.frameWaiters.push(fn);
  }

  /** Tells the engine the view; `lazy` while input goes on (no new image is asked for). */
  sendView(force = false, lazy = false) {
    if (!this.width) return;
    const now = performance.now();
    if (!force && now - this.lastViewSent < 250) return;
    this.lastViewSent = now;
    this.engine.post({
      type: 'view',
      width: this.width,
      height: this.height,
      dpr: this.dpr,
      fit: this.fit,
      lazy,
      view: this.fit ? undefined : { ...this.view },
    });
  }

  setInteracting(value) {
    if (this.interacting === value) return;
    this.interacting = value;
    this.engine.post({ type: 'interacting', value });
  }

  /** The crisp image for the current view, once input has paused. */
  settleView() {
    this.setInteracting(true);
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      if (this.drag && this.drag.moved) return;
      this.sendView(true);
      this.setInteracting(false);
      this.requestRedraw();
    }, 160);
  }

  // ------------------------------------------------------------------ drawing

  /** A full redraw (base image + highlights) at the next animation frame. */
  requestRedraw() {
    this.needsDraw = true;
    this.scheduleTick();
  }

  /** Only the view moved: at the next frame, move the drawn canvas with a CSS transform. */
  requestMove() {
    this.needsMove = true;
    this.scheduleTick();
  }

  scheduleTick() {
    if (this.tickPending) return;
    this.tickPending = true;
    requestAnimationFrame((t) => this.tick(t));
  }

  tick(rafTime) {
    this.tickPending = false;
    const start = performance.now();
    if (this.needsDraw || !this.drawnView) this.draw();
    else if (this.needsMove) this.applyMove();
    this.needsMove = false;
    const work = performance.now() - start;
    if (this.drag && this.drag.moved) {
      const interval = this.drag.lastFrameAt ? rafTime - this.drag.lastFrameAt : null;
      this.drag.lastFrameAt = rafTime;
      if (interval !== null) {
        stats.pan_frames.push({ interval_ms: Math.round(interval * 10) / 10, work_ms: Math.round(work * 10) / 10 });
        if (stats.pan_frames.length > PAN_FRAMES_KEPT) stats.pan_frames.shift();
      }
      // Frame by frame while the pointer is down, whether or not it moved since the last
      // frame, so that pan_frames measures the page's frame rate, not the input's rate.
      this.needsMove = true;
      this.scheduleTick();
    }
  }

  /**
   * Places the canvas, drawn for `drawnView`, where the current view wants it: canvas point
   * c (drawn at screen c − M) must land on s·(c − M) + off, i.e. the element at −M moved by
   * translate(off + M·(1 − s)) scale(s).
   */
  applyMove() {
    const b = this.drawnView;
    if (!b) return;
    const M = MARGIN;
    const s = this.view.k / b.k;
    const tx = this.view.x - b.x * s + M * (1 - s);
    const ty = this.view.y - b.y * s + M * (1 - s);
    this.canvas.style.transform = `translate(${tx}px, ${ty}px) scale(${s})`;
    this.root.dataset.crisp = 'false';
  }

  draw() {
    this.needsDraw = false;
    const ctx = this.ctx;
    const dpr = this.dpr;
    const M = MARGIN;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.canvas.style.transform = '';
    const frame = this.frame;
    if (!frame || !this.data) {
      this.drawnView = null;
      return;
    }
    // The base image, from the view it was drawn for to the current one.
    const s = this.view.k / frame.view.k;
    const offX = this.view.x - frame.view.x * s;
    const offY = this.view.y - frame.view.y * s;
    const FM = frame.margin;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(frame.bitmap,
      dpr * (M - FM * s + offX), dpr * (M - FM * s + offY),
      dpr * (frame.width + 2 * FM) * s, dpr * (frame.height + 2 * FM) * s);
    ctx.setTransform(dpr, 0, 0, dpr, dpr * M, dpr * M);
    this.drawOverlay(ctx);
    this.drawnView = { ...this.view };
    // "true" once the engine's image was made for exactly this view (not a scaled stand-in).
    this.root.dataset.crisp = String(s === 1 && Math.abs(offX) < 0.5 && Math.abs(offY) < 0.5);

    if (stats.first_render_ms === null) {
      stats.first_render_ms = Math.round(performance.now());
      this.root.dataset.rendered = 'true';
      // Interactive once this task ends and the event loop takes input again.
      const channel = new MessageChannel();
      channel.port1.onmessage = () => {
        stats.interactive_ms = Math.round(performance.now());
        this.root.dataset.interactive = 'true';
        channel.port1.close();
      };
      channel.port2.postMessage(0);
    }
  }

  toScreen(i) {
    const p = this.positions;
    return [p[2 * i] * this.view.k + this.view.x, p[2 * i + 1] * this.view.k + this.view.y];
  }

  drawOverlay(ctx) {
    const p = this.positions;
    if (!p) return;
    const r = nodeRadius(this.view.k);
    const theme = this.theme || this.readTheme();
    const { accent, surface, text } = theme;

    const ringAt = (i, radius, stroke, width = 2, fill = null) => {
      const [x, y] = this.toScreen(i);
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      if (fill) {
        ctx.fillStyle = fill;
        ctx.fill();
      }
      ctx.lineWidth = width;
      ctx.strokeStyle = stroke;
      ctx.stroke();
    };
    const linksOf = (i, colour, width, alpha) => {
      const { adjStart, adj } = this.data;
      const [x, y] = this.toScreen(i);
      ctx.globalAlpha = alpha;
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let o = adjStart[i]; o < adjStart[i + 1]; o++) {
        const j = adj[o];
        if (!this.visible[j]) continue;
        const [x2, y2] = this.toScreen(j);
        ctx.moveTo(x, y);
        ctx.lineTo(x2, y2);
      }
      ctx.stroke();
      ctx.globalAlpha = 1;
    };

    // Lookup rounds.
    let highlighted = 0;
    if (this.overlay) {
      const o = this.overlay;
      const colours = {
        past: theme.past,
        queried: accent,
        answered: theme.ok,
        failed: theme.danger,
        learned: theme.learned,
        closest: theme.warn,
      };
      // The target: in the graph, or (key-space ring) where its key falls.
      let tx = null;
      let ty = null;
      if (o.targetIndex >= 0) {
        [tx, ty] = this.toScreen(o.targetIndex);
      } else if (this.layoutMode === 'ring' && o.targetKey !== null && this.data) {
        const [wx, wy] = this.ringPoint(o.targetKey);
        tx = wx * this.view.k + this.view.x;
        ty = wy * this.view.k + this.view.y;
      }
      // This round's queries, each with a dashed line to the target: the lines shorten as
      // the lookup closes in.
      if (tx !== null) {
        ctx.setLineDash([4, 4]);
        ctx.lineWidth = 1.2;
        ctx.strokeStyle = accent;
        ctx.globalAlpha = 0.8;
        ctx.beginPath();
        for (const kind of ['queried', 'answered', 'failed']) {
          for (const i of o.nodes[kind] || []) {
            const [x, y] = this.toScreen(i);
            ctx.moveTo(x, y);
            ctx.lineTo(tx, ty);
          }
        }
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.globalAlpha = 1;
      }
      const order = ['past', 'learned', 'queried', 'failed', 'answered', 'closest'];
      for (const kind of order) {
        const list = o.nodes[kind];
        if (!list) continue;
        const faint = kind === 'past' || kind === 'learned';
        const rr = faint ? Math.max(4.5, r + 2) : Math.max(7, r + 4);
        for (const i of list) {
          ringAt(i, rr, colours[kind], faint ? 1.75 : 3, faint ? null : surface);
          highlighted += 1;
        }
      }
      if (tx !== null) {
        const size = Math.max(10, r + 8);
        ctx.lineWidth = 2.5;
        ctx.strokeStyle = text;
        ctx.beginPath();
        ctx.moveTo(tx - size, ty);
        ctx.lineTo(tx + size, ty);
        ctx.moveTo(tx, ty - size);
        ctx.lineTo(tx, ty + size);
        ctx.stroke();
        ctx.beginPath();
        ctx.arc(tx, ty, size * 0.6, 0, 2 * Math.PI);
        ctx.stroke();
        highlighted += 1;
      }
    }
    this.root.dataset.highlighted = String(highlighted);

    // The explorer's own node.
    if (this.selfIndex >= 0 && this.visible[this.selfIndex]) {
      const [x, y] = this.toScreen(this.selfIndex);
      const d = Math.max(5, r + 3);
      ctx.beginPath();
      ctx.moveTo(x, y - d);
      ctx.lineTo(x + d, y);
      ctx.lineTo(x, y + d);
      ctx.lineTo(x - d, y);
      ctx.closePath();
      ctx.fillStyle = accent;
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = surface;
      ctx.stroke();
    }

    if (this.hovered >= 0 && this.hovered !== this.selected) {
      linksOf(this.hovered, accent, 1, 0.6);
      ringAt(this.hovered, r + 3, accent, 2, surface);
    }
    if (this.selected >= 0) {
      linksOf(this.selected, accent, 1.5, 0.9);
      const { adjStart, adj } = this.data;
      for (let o = adjStart[this.selected]; o < adjStart[this.selected + 1]; o++) {
        const j = adj[o];
        if (this.visible[j]) ringAt(j, r + 1.5, accent, 1.5);
      }
      ringAt(this.selected, r + 5, accent, 3, surface);
    }
  }

  // ------------------------------------------------------------------ selection, overlay

  select(i, { announce = true, center = false } = {}) {
    if (!this.data) return;
    this.selected = i;
    const id = i >= 0 ? this.data.ids[i] : '';
    this.root.dataset.selected = id;
    if (center && i >= 0 && this.positions) {
      const k = Math.max(this.view.k, 0.8);
      this.fit = false;
      this.view = {
        k,
        x: this.width / 2 - this.positions[2 * i] * k,
        y: this.height / 2 - this.positions[2 * i + 1] * k,
      };
      this.sendView(true);
    }
    if (announce) {
      this.announcer.textContent = i >= 0
        ? `Selected node ${shortId(id, 16)}, ${this.data.up[i] ? 'up' : 'down'}, ${this.degree(i)} links.`
        : 'Selection cleared.';
    }
    if (this.onSelect) this.onSelect(i >= 0 ? this.nodeInfo(i) : null);
    this.requestRedraw();
  }

  selectId(id, options) {
    if (!this.data || !this.data.index.has(id)) return false;
    this.select(this.data.index.get(id), options);
    return true;
  }

  degree(i) {
    return this.data.adjStart[i + 1] - this.data.adjStart[i];
  }

  nodeInfo(i) {
    const d = this.data;
    const capabilities = CAPABILITIES.filter((c) => d.caps[i] & CAP_BITS[c]);
    const neighbours = [];
    for (let o = d.adjStart[i]; o < d.adjStart[i + 1]; o++) neighbours.push(d.ids[d.adj[o]]);
    return { index: i, id: d.ids[i], up: Boolean(d.up[i]), version: d.versions[i], capabilities, degree: this.degree(i), neighbours };
  }

  /**
   * Lookup highlights: {nodes: {kind: [index]}, paths: [[i, j]], targetIndex, targetKey}
   * (kinds: past, queried, answered, failed, learned, closest), or null.
   */
  setOverlay(overlay) {
    this.overlay = overlay;
    this.requestRedraw();
  }

  // ------------------------------------------------------------------ view control

  fitAll() {
    this.fit = true;
    this.sendView(true);
    this.requestRedraw();
  }

  /** Frames the given nodes (and, if given, world points) with some room around them. */
  fitToNodes(indices, points = []) {
    const p = this.positions;
    if (!p || this.width < 20 || this.height < 20) return;
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    const take = (x, y) => {
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    };
    for (const i of indices) take(p[2 * i], p[2 * i + 1]);
    for (const [x, y] of points) take(x, y);
    if (!Number.isFinite(minX)) return;
    const pad = 48;
    const w = Math.max(maxX - minX, 60);
    const h = Math.max(maxY - minY, 60);
    const k = Math.min(6, Math.max(1e-4, Math.min((this.width - 2 * pad) / w, (this.height - 2 * pad) / h)));
    this.fit = false;
    this.view = { k, x: this.width / 2 - ((minX + maxX) / 2) * k, y: this.height / 2 - ((minY + maxY) / 2) * k };
    this.requestRedraw();
    this.settleView();
  }

  /** World position of a key on the key-space ring. */
  ringPoint(fraction) {
    const R = ringRadius(this.data ? this.data.ids.length : 0);
    const angle = fraction * 2 * Math.PI - Math.PI / 2;
    return [Math.cos(angle) * R, Math.sin(angle) * R];
  }

  zoomAt(sx, sy, factor) {
    if (!this.frame) return;
    const k = Math.min(40, Math.max(1e-4, this.view.k * factor));
    const f = k / this.view.k;
    this.fit = false;
    this.view = { k, x: sx - (sx - this.view.x) * f, y: sy - (sy - this.view.y) * f };
    this.requestMove();
    this.settleView();
  }

  panBy(dx, dy) {
    this.fit = false;
    this.view = { ...this.view, x: this.view.x + dx, y: this.view.y + dy };
    this.requestMove();
  }

  /** Nearest visible node to a point in CSS px of the canvas, within reach; or -1. */
  hitTest(sx, sy) {
    const p = this.positions;
    if (!p || !this.data || !this.frame) return -1;
    const k = this.view.k;
    const wx = (sx - this.view.x) / k;
    const wy = (sy - this.view.y) / k;
    const reach = (nodeRadius(k) + 4) / k;
    let best = -1;
    let bestD = reach * reach;
    const vis = this.visible;
    for (let i = 0, n = this.data.ids.length; i < n; i++) {
      if (!vis[i]) continue;
      const dx = p[2 * i] - wx;
      const dy = p[2 * i + 1] - wy;
      const d = dx * dx + dy * dy;
      if (d <= bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  /** Screen position (CSS px, page coordinates) of a node, for tests and tools. */
  pagePosition(id) {
    if (!this.data || !this.positions || !this.data.index.has(id)) return null;
    const i = this.data.index.get(id);
    const [x, y] = this.toScreen(i);
    const rect = this.root.getBoundingClientRect();
    return { x: rect.left + x, y: rect.top + y, visible: Boolean(this.visible[i]) };
  }

  showTooltip(i, sx, sy) {
    const info = this.nodeInfo(i);
    replace(this.tooltip,
      el('strong', { class: 'mono' }, shortId(info.id, 16)),
      el('span', {}, `${info.up ? 'up' : 'down'} · ${info.version ?? 'unknown version'} · ${info.degree} links`),
      info.capabilities.length ? el('span', { class: 'muted' }, info.capabilities.map(capabilityLabel).join(', ')) : null,
    );
    this.tooltip.hidden = false;
    const left = Math.min(sx + 14, this.width - 240);
    this.tooltip.style.left = `${Math.max(4, left)}px`;
    this.tooltip.style.top = `${Math.max(4, sy + 14)}px`;
  }

  hideTooltip() {
    this.tooltip.hidden = true;
  }

  bindInput() {
    const canvas = this.canvas;
    const local = (event) => {
      const rect = this.root.getBoundingClientRect();
      return [event.clientX - rect.left, event.clientY - rect.top];
    };
    canvas.addEventListener('pointerdown', (event) => {
      if (event.button !== 0 && event.pointerType === 'mouse') return;
      canvas.setPointerCapture(event.pointerId);
      const [x, y] = local(event);
      this.pointers.set(event.pointerId, { x, y });
      if (this.pointers.size === 1) {
        this.drag = { startX: x, startY: y, x, y, moved: false, lastFrameAt: 0 };
      } else if (this.pointers.size === 2) {
        const [a, b] = [...this.pointers.values()];
        this.pinch = { dist: Math.hypot(a.x - b.x, a.y - b.y) || 1 };
        if (this.drag) this.drag.moved = true;
      }
    });
    canvas.addEventListener('pointermove', (event) => {
      const [x, y] = local(event);
      if (this.pointers.has(event.pointerId)) {
        this.pointers.set(event.pointerId, { x, y });
        if (this.pointers.size === 2 && this.pinch) {
          const [a, b] = [...this.pointers.values()];
          const dist = Math.hypot(a.x - b.x, a.y - b.y) || 1;
          this.zoomAt((a.x + b.x) / 2, (a.y + b.y) / 2, dist / this.pinch.dist);
          this.pinch.dist = dist;
          return;
        }
        const drag = this.drag;
        if (!drag) return;
        if (!drag.moved && Math.hypot(x - drag.startX, y - drag.startY) > 4) {
          drag.moved = true;
          this.hideTooltip();
          this.root.classList.add('is-panning');
          this.setInteracting(true);
        }
        if (drag.moved) {
          this.panBy(x - drag.x, y - drag.y);
          drag.x = x;
          drag.y = y;
          this.sendView(false, true);
        }
        return;
      }
      // Hover, at most once a frame.
      this.hoverAt = [x, y];
      if (!this.hoverPending) {
        this.hoverPending = true;
        requestAnimationFrame(() => {
          this.hoverPending = false;
          if (!this.hoverAt) return;
          const [hx, hy] = this.hoverAt;
          const i = this.hitTest(hx, hy);
          if (i !== this.hovered) {
            this.hovered = i;
            canvas.classList.toggle('is-pointing', i >= 0);
            this.requestRedraw();
          }
          if (i >= 0) this.showTooltip(i, hx, hy);
          else this.hideTooltip();
        });
      }
    });
    const end = (event) => {
      if (!this.pointers.has(event.pointerId)) return;
      this.pointers.delete(event.pointerId);
      if (this.pointers.size < 2) this.pinch = null;
      if (this.pointers.size > 0) return;
      const drag = this.drag;
      this.drag = null;
      this.root.classList.remove('is-panning');
      if (!drag) return;
      if (drag.moved) {
        this.settleView();
      } else if (event.type === 'pointerup') {
        const [x, y] = local(event);
        const i = this.hitTest(x, y);
        this.select(i);
      }
    };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    canvas.addEventListener('pointerleave', () => {
      this.hoverAt = null;
      if (this.hovered >= 0) {
        this.hovered = -1;
        this.requestRedraw();
      }
      this.hideTooltip();
    });
    canvas.addEventListener('dblclick', (event) => {
      const [x, y] = local(event);
      const i = this.hitTest(x, y);
      if (i >= 0 && this.onOpen) this.onOpen(this.data.ids[i]);
    });
    canvas.addEventListener('wheel', (event) => {
      event.preventDefault();
      const [x, y] = local(event);
      const delta = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
      this.zoomAt(x, y, Math.exp(-delta * 0.0015));
    }, { passive: false });
    canvas.addEventListener('focus', () => this.root.classList.toggle('has-focus', canvas.matches(':focus-visible')));
    canvas.addEventListener('blur', () => this.root.classList.remove('has-focus'));
    canvas.addEventListener('keydown', (event) => {
      const step = 60;
      let handled = true;
      switch (event.key) {
        case 'ArrowLeft': this.panBy(step, 0); this.settleView(); break;
        case 'ArrowRight': this.panBy(-step, 0); this.settleView(); break;
        case 'ArrowUp': this.panBy(0, step); this.settleView(); break;
        case 'ArrowDown': this.panBy(0, -step); this.settleView(); break;
        case '+': case '=': this.zoomAt(this.width / 2, this.height / 2, 1.4); break;
        case '-': case '_': this.zoomAt(this.width / 2, this.height / 2, 1 / 1.4); break;
        case '0': this.fitAll(); break;
        case 'Escape': this.select(-1); break;
        case 'Enter':
          if (this.selected >= 0 && this.onOpen) this.onOpen(this.data.ids[this.selected]);
          else this.select(this.nearestToCentre());
          break;
        default: handled = false;
      }
      if (handled) event.preventDefault();
    });
  }

  nearestToCentre() {
    const p = this.positions;
    if (!p || !this.data) return -1;
    const wx = (this.width / 2 - this.view.x) / this.view.k;
    const wy = (this.height / 2 - this.view.y) / this.view.k;
    let best = -1;
    let bestD = Infinity;
    for (let i = 0; i < this.data.ids.length; i++) {
      if (!this.visible[i]) continue;
      const d = (p[2 * i] - wx) ** 2 + (p[2 * i + 1] - wy) ** 2;
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }
}

// One graph per page: the layout survives moving between the graph and lookup views.
let shared = null;
export function sharedGraph() {
  if (!shared) {
    shared = new GraphView();
    window.__explorerGraph = {
      pagePosition: (id) => shared.pagePosition(id),
      nodeIds: () => (shared.data ? shared.data.ids.slice() : []),
      stats: () => stats,
      margin: MARGIN,
    };
  }
  return shared;
}
