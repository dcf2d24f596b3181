// The graph engine: lays the overlay out and draws its base image (every visible edge and
// node) into a 2D canvas, off the main thread when it runs in graph-worker.js. The page
// shows the latest image, moved and scaled while the user pans or zooms, and draws
// highlights on top; see graph-view.js.
//
// Why canvas 2D and not WebGL: in headless Chromium with --disable-gpu WebGL runs on
// SwiftShader, which took ~1.3 s per frame for 56k edges, against ~0.36 s for the same
// frame in canvas 2D (and ~3 ms to show a finished image at a new offset). The edges,
// though, are not stroked by the canvas: edge-raster.js draws them into the image itself,
// ~4× faster than Chromium's software rasterizer (819,613 edges: ~0.4 s against ~1.8 s);
// the nodes are filled by the canvas on top.
//
// Messages in (all optional fields keep their previous values):
//   {type: 'init', n, edges: Uint32Array, keys: Float32Array (key-space fraction per node),
//    positions?: Float32Array (seed, NaN where unknown)}
//   {type: 'style', colour: Uint8Array (palette index per node), palette: [css colour],
//    visible: Uint8Array, edgeRgb: [r, g, b] (0–255), edgeAlpha (one edge's opacity),
//    haloColour}
//   {type: 'view', width, height, dpr, fit: bool, view?: {k, x, y}, lazy?: bool}
//   {type: 'layout', mode?: 'force'|'ring', running?: bool, reheat?: number}
//   {type: 'interacting', value: bool} while the user drags or zooms, no new images are made
//    (the page moves the last one; the layout keeps going), then one for the final view
// Messages out:
//   {type: 'frame', bitmap, view: {k, x, y}, width, height, dpr, margin, positions: Float32Array,
//    seq, renderMs, stats: {ticks, alpha, state, layoutMs}}

import { ForceLayout } from './layout.js';
import { EdgeRaster } from './edge-raster.js';

export const MARGIN = 96; // CSS px drawn beyond each side of the viewport, shown while panning
const LAYOUT_SLICE_MS = 40;
const INTERACTING_SLICE_MS = 12;
const INTERACTING_PAUSE_MS = 24;
const RING_SPREAD = 0.05;
const EDGE_WIDTH = 0.8; // CSS px

export function nodeRadius(k) {
  return Math.min(9, Math.max(1.6, 3 * k));
}

export function ringRadius(n) {
  return Math.max(120, 26 * Math.sqrt(n));
}

export class GraphEngine {
  /**
   * @param {(msg: object, transfer: Transferable[]) => void} post
   * @param {(w: number, h: number) => (OffscreenCanvas|HTMLCanvasElement)} makeCanvas
   * @param {boolean} transferBitmaps post ImageBitmaps (worker) or the canvas itself (same thread)
   */
  constructor(post, makeCanvas, transferBitmaps) {
    this.post = post;
    this.makeCanvas = makeCanvas;
    this.transferBitmaps = transferBitmaps;
    this.n = 0;
    this.edges = new Uint32Array(0);
    this.layout = null;
    this.mode = 'force';
    this.running = true;
    this.colour = new Uint8Array(0);
    this.visible = new Uint8Array(0);
    this.palette = ['#2456c7'];
    this.edgeRgb = [90, 100, 120];
    this.edgeAlpha = 0.15;
    this.edgeRaster = new EdgeRaster();
    this.haloColour = null;
    this.width = 0;
    this.height = 0;
    this.dpr = 1;
    this.fit = true;
    this.view = { k: 1, x: 0, y: 0 };
    this.canvas = null;
    this.ctx = null;
    this.seq = 0;
    this.dirtyPositions = true;
    this.dirtyRender = true;
    this.lastRenderEnd = 0;
    this.lastRenderMs = 0;
    this.layoutMs = 0;
    this.scheduled = false;
    this.interacting = false;
    this.order = null; // node indices grouped by colour
    this.groupStart = null;
  }

  handle(msg) {
    switch (msg.type) {
      case 'init': this.init(msg); break;
      case 'style': this.setStyle(msg); break;
      case 'view': this.setView(msg); break;
      case 'layout': this.setLayout(msg); break;
      case 'interacting':
        this.interacting = Boolean(msg.value);
        if (!this.interacting) this.dirtyRender = true;
        break;
      default: break;
    }
    this.schedule();
  }

  init({ n, edges, keys, positions }) {
    this.n = n;
    this.edges = edges;
    this.keys = keys;
    const layout = new ForceLayout(n, edges);
    layout.initSpiral();
    if (positions) {
      // Keep where known nodes were; put newcomers next to a placed neighbour.
      let placed = 0;
      const known = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const x = positions[2 * i];
        const y = positions[2 * i + 1];
        if (Number.isFinite(x) && Number.isFinite(y)) {
          layout.x[i] = x;
          layout.y[i] = y;
          known[i] = 1;
          placed += 1;
        }
      }
      if (placed) {
        for (let e = 0; e < edges.length; e += 2) {
          const a = edges[e];
          const b = edges[e + 1];
          if (known[a] && !known[b]) {
            layout.x[b] = layout.x[a] + (Math.random() - 0.5) * 20;
            layout.y[b] = layout.y[a] + (Math.random() - 0.5) * 20;
            known[b] = 2;
          } else if (known[b] && !known[a]) {
            layout.x[a] = layout.x[b] + (Math.random() - 0.5) * 20;
            layout.y[a] = layout.y[b] + (Math.random() - 0.5) * 20;
            known[a] = 2;
          }
        }
        layout.alpha = placed === n ? 0.05 : 0.3;
      }
    }
    this.layout = layout;
    this.ringX = new Float64Array(n);
    this.ringY = new Float64Array(n);
    const R = ringRadius(n);
    for (let i = 0; i < n; i++) {
      const angle = keys[i] * 2 * Math.PI - Math.PI / 2;
      // A narrow band rather than a thin circle, so neighbours in key space stay apart.
      const spread = 1 + RING_SPREAD * (((i * 2654435761) >>> 0) / 4294967296 - 0.5);
      this.ringX[i] = Math.cos(angle) * R * spread;
      this.ringY[i] = Math.sin(angle) * R * spread;
    }
    if (this.colour.length !== n) {
      this.colour = new Uint8Array(n);
      this.visible = new Uint8Array(n).fill(1);
      this.order = null;
    }
    this.dirtyPositions = true;
    this.dirtyRender = true;
    this.firstFrame = true;
  }

  setStyle({ colour, palette, visible, edgeRgb, edgeAlpha, haloColour }) {
    if (colour) this.colour = colour;
    if (visible) this.visible = visible;
    if (palette) this.palette = palette;
    if (edgeRgb) this.edgeRgb = edgeRgb;
    if (edgeAlpha !== undefined) this.edgeAlpha = edgeAlpha;
    if (haloColour !== undefined) this.haloColour = haloColour;
    this.order = null;
    this.dirtyRender = true;
  }

  setView({ width, height, dpr, fit, view, lazy }) {
    if (width) this.width = Math.max(1, Math.round(width));
    if (height) this.height = Math.max(1, Math.round(height));
    if (dpr) this.dpr = Math.min(2, Math.max(1, dpr));
    if (fit !== undefined) this.fit = Boolean(fit);
    if (view) this.view = { k: view.k, x: view.x, y: view.y };
    // A lazy view is used by the next image the layout makes anyway; it does not ask for one.
    if (!lazy) this.dirtyRender = true;
  }

  setLayout({ mode, running, reheat }) {
    if (mode && mode !== this.mode) {
      this.mode = mode;
      this.dirtyRender = true;
      this.dirtyPositions = true;
    }
    if (running !== undefined) this.running = Boolean(running);
    if (reheat && this.layout) this.layout.reheat(reheat);
    this.dirtyRender = true;
  }

  layoutActive() {
    return Boolean(this.layout && this.mode === 'force' && this.running && !this.layout.settled);
  }

  layoutState() {
    if (!this.layout) return 'idle';
    if (this.mode === 'ring') return 'ring';
    if (!this.running) return 'paused';
    return this.layout.settled ? 'settled' : 'running';
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    // While the user drags or zooms, the layout runs at half duty so the page (which on a
    // two-core machine shares the CPU with this worker) keeps its frame rate.
    setTimeout(() => this.pump(), this.interacting ? INTERACTING_PAUSE_MS : 0);
  }

  pump() {
    this.scheduled = false;
    if (!this.layout || !this.width) return;
    const now = () => performance.now();
    // The first image comes before any layout work: first paint first.
    if (!this.firstFrame && this.layoutActive()) {
      const start = now();
      do {
        this.layout.tick();
      } while (now() - start < (this.interacting ? INTERACTING_SLICE_MS : LAYOUT_SLICE_MS) && !this.layout.settled);
      this.layoutMs += now() - start;
      this.dirtyPositions = true;
    }
    const interval = Math.min(1200, Math.max(120, this.lastRenderMs * 1.5));
    const positionsDue = this.dirtyPositions && (now() - this.lastRenderEnd >= interval || !this.layoutActive());
    if (this.firstFrame || (!this.interacting && (this.dirtyRender || positionsDue))) this.render();
    if (this.layoutActive() || (this.dirtyRender && !this.interacting)) this.schedule();
  }

  positions() {
    if (this.mode === 'ring') return [this.ringX, this.ringY];
    return [this.layout.x, this.layout.y];
  }

  fitView() {
    const [xs, ys] = this.positions();
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    const vis = this.visible;
    let any = false;
    for (let i = 0; i < this.n; i++) {
      if (!vis[i]) continue;
      any = true;
      const x = xs[i];
      const y = ys[i];
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    }
    if (!any) {
      minX = -100; maxX = 100; minY = -100; maxY = 100;
    }
    const pad = 24;
    const w = Math.max(maxX - minX, 1);
    const h = Math.max(maxY - minY, 1);
    const k = Math.min(3, Math.max(1e-4, Math.min((this.width - 2 * pad) / w, (this.height - 2 * pad) / h)));
    return {
      k,
      x: this.width / 2 - ((minX + maxX) / 2) * k,
      y: this.height / 2 - ((minY + maxY) / 2) * k,
    };
  }

  groupByColour() {
    const n = this.n;
    const groups = this.palette.length;
    const counts = new Uint32Array(groups + 1);
    for (let i = 0; i < n; i++) counts[Math.min(this.colour[i], groups - 1) + 1] += 1;
    for (let g = 1; g <= groups; g++) counts[g] += counts[g - 1];
    const start = counts.slice();
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[counts[Math.min(this.colour[i], groups - 1)]++] = i;
    this.order = order;
    this.groupStart = start;
  }

  render() {
    const t0 = performance.now();
    if (this.fit) this.view = this.fitView();
    const { width, height, dpr, view } = this;
    const M = MARGIN;
    const cw = Math.round((width + 2 * M) * dpr);
    const ch = Math.round((height + 2 * M) * dpr);
    if (!this.canvas) {
      this.canvas = this.makeCanvas(cw, ch);
      this.ctx = this.canvas.getContext('2d', { alpha: true });
    }
    if (this.canvas.width !== cw) this.canvas.width = cw;
    if (this.canvas.height !== ch) this.canvas.height = ch;
    const ctx = this.ctx;
    const [xs, ys] = this.positions();
    const k = view.k;
    const ox = view.x + M;
    const oy = view.y + M;
    const W = width + 2 * M;
    const H = height + 2 * M;
    const vis = this.visible;

    // Edges: every edge with both ends visible, by the engine's own rasterizer (see
    // edge-raster.js), which also replaces the last image. Zoomed in, more of them cross
    // the screen: they fade so the nodes stay readable; on the key-space ring (all chords)
    // they stay faint.
    const n = this.n;
    if (!this.devX || this.devX.length !== n) {
      this.devX = new Float64Array(n);
      this.devY = new Float64Array(n);
    }
    const { devX, devY } = this;
    for (let i = 0; i < n; i++) {
      devX[i] = (xs[i] * k + ox) * dpr;
      devY[i] = (ys[i] * k + oy) * dpr;
    }
    const fitK = this.fit ? k : this.fitView().k;
    const fade = Math.min(1, Math.max(0.3, Math.sqrt(fitK / k))) * (this.mode === 'ring' ? 0.45 : 1);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalAlpha = 1;
    this.edgeRaster.draw(ctx, cw, ch, this.edges, devX, devY, vis, {
      rgb: this.edgeRgb,
      alpha: this.edgeAlpha * fade,
      lineWidth: EDGE_WIDTH * dpr,
    });
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);

    // Nodes, one path per colour.
    if (!this.order) this.groupByColour();
    const r = nodeRadius(k);
    const round = r >= 2.4;
    const order = this.order;
    const starts = this.groupStart;
    if (this.haloColour && round) {
      ctx.fillStyle = this.haloColour;
      ctx.beginPath();
      const hr = r + 1;
      for (let i = 0; i < this.n; i++) {
        if (!vis[i]) continue;
        const x = xs[i] * k + ox;
        const y = ys[i] * k + oy;
        if (x < -hr || y < -hr || x > W + hr || y > H + hr) continue;
        ctx.moveTo(x + hr, y);
        ctx.arc(x, y, hr, 0, 2 * Math.PI);
      }
      ctx.fill();
    }
    for (let g = 0; g < this.palette.length; g++) {
      const from = starts[g];
      const to = starts[g + 1];
      if (from === to) continue;
      ctx.fillStyle = this.palette[g];
      ctx.beginPath();
      for (let o = from; o < to; o++) {
        const i = order[o];
        if (!vis[i]) continue;
        const x = xs[i] * k + ox;
        const y = ys[i] * k + oy;
        if (x < -r || y < -r || x > W + r || y > H + r) continue;
        if (round) {
          ctx.moveTo(x + r, y);
          ctx.arc(x, y, r, 0, 2 * Math.PI);
        } else {
          ctx.rect(x - r, y - r, 2 * r, 2 * r);
        }
      }
      ctx.fill();
    }

    const positions = new Float32Array(this.n * 2);
    for (let i = 0; i < this.n; i++) {
      positions[2 * i] = xs[i];
      positions[2 * i + 1] = ys[i];
    }
    let bitmap;
    const transfer = [positions.buffer];
    if (this.transferBitmaps) {
      bitmap = this.canvas.transferToImageBitmap();
      transfer.push(bitmap);
    } else {
      bitmap = this.canvas;
    }
    this.lastRenderEnd = performance.now();
    this.lastRenderMs = this.lastRenderEnd - t0;
    this.dirtyRender = false;
    this.dirtyPositions = false;
    this.firstFrame = false;
    this.seq += 1;
    this.post({
      type: 'frame',
      bitmap,
      view: { ...view },
      width,
      height,
      dpr,
      margin: M,
      positions,
      seq: this.seq,
      renderMs: this.lastRenderMs,
      stats: {
        ticks: this.layout.ticks,
        alpha: this.layout.alpha,
        state: this.layoutState(),
        layoutMs: this.layoutMs,
      },
    }, transfer);
  }
}
