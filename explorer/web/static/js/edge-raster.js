// Draws the graph's edges into a canvas with a rasterizer of its own: every edge is added,
// as an antialiased one-pixel line (Xiaolin Wu's, in fixed point), to a coverage count per
// pixel, and the counts become one image in a single pass. Used by graph-engine.js for
// the base image.
//
// Why not the canvas's own stroke(): all edges have one colour and one alpha, so the image
// that many translucent strokes composite to is a function of how much line covers each
// pixel. Chromium's software canvas (headless, --disable-gpu, and OffscreenCanvas in a
// worker) spent ~1.8 s rasterizing the 819,613 edges of a 10,000-node network at the
// fitted view; this takes ~0.4 s for the same edges (~0.25 s once V8 has optimized it),
// with the same look: n strokes of alpha a over a pixel give 1 − (1 − a)ⁿ, and so does
// this, with n the covered fraction summed over the edges (hairlines narrower than a
// pixel modulate their alpha by their width, as Skia's do). It is also more exact: the
// canvas rounds every faint stroke to 8 bits, which loses faint edges and shifts their hue
// where thousands overlap; here the colour is the stylesheet's and the density is summed
// before rounding.

const FRACTION_BITS = 16;
const ONE = 1 << FRACTION_BITS;
const COVERAGE = 256; // coverage units per fully covered pixel
const LUT_SHIFT = 2; // the colour table has one entry per 4 coverage units
const LUT_MAX = 1 << 16;
const EDGE_CHUNK = 2 * 16384; // edges per accumulate() call, ×2 (pairs)

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** One RGBA pixel as a Uint32 in the platform's byte order (ImageData is R, G, B, A). */
function pixel(r, g, b, a) {
  return LITTLE_ENDIAN
    ? ((a << 24) | (b << 16) | (g << 8) | r) >>> 0
    : ((r << 24) | (g << 16) | (b << 8) | a) >>> 0;
}

// The parameter range [t0, t1] of the part of a segment still inside the clip box.
const clipT = new Float64Array(2);

/** One side of the Liang–Barsky clip: false when the segment lies wholly outside it. */
function clipEdge(p, q) {
  if (p === 0) return q >= 0;
  const r = q / p;
  if (p < 0) {
    if (r > clipT[1]) return false;
    if (r > clipT[0]) clipT[0] = r;
  } else {
    if (r < clipT[0]) return false;
    if (r < clipT[1]) clipT[1] = r;
  }
  return true;
}

/**
 * Adds edges [from, to) (indices into `edges`, even) to `acc`, a (width + 1) × (height + 3)
 * grid of coverage counts: row −1, rows `height` and `height` + 1, and column `width`
 * (which is also column −1 of the next row) are guards that catch what the half-pixel
 * steps at a line's ends put just outside the image, so the inner loops need no bounds
 * checks. `px`/`py` are node positions in device pixels; an edge is drawn only when both
 * its ends are visible (`vis`), and clipped to the image.
 */
function accumulate(acc, width, height, edges, from, to, px, py, vis) {
  const stride = width + 1;
  // Pixel centres sit at integer coordinates after the half-pixel shift below; the clip
  // box keeps every sample within the image or its guards.
  const xMin = -0.5;
  const yMin = -0.5;
  const xMax = width - 0.5;
  const yMax = height - 0.5;
  for (let e = from; e < to; e += 2) {
    const a = edges[e];
    const b = edges[e + 1];
    if (!vis[a] || !vis[b]) continue;
    let x0 = px[a] - 0.5;
    let y0 = py[a] - 0.5;
    let x1 = px[b] - 0.5;
    let y1 = py[b] - 0.5;
    let dx = x1 - x0;
    let dy = y1 - y0;
    if (!(x0 >= xMin && x0 <= xMax && x1 >= xMin && x1 <= xMax
      && y0 >= yMin && y0 <= yMax && y1 >= yMin && y1 <= yMax)) {
      // Liang–Barsky: the part of the segment inside the box, if any. NaN positions (nodes
      // not placed yet) are skipped here too.
      clipT[0] = 0;
      clipT[1] = 1;
      if (!(clipEdge(-dx, x0 - xMin) && clipEdge(dx, xMax - x0)
        && clipEdge(-dy, y0 - yMin) && clipEdge(dy, yMax - y0))) continue;
      const t0 = clipT[0];
      const t1 = clipT[1];
      if (!(t0 <= t1) || Number.isNaN(dx + dy)) continue;
      x1 = x0 + t1 * dx;
      y1 = y0 + t1 * dy;
      x0 += t0 * dx;
      y0 += t0 * dy;
      dx = x1 - x0;
      dy = y1 - y0;
    }
    if (Math.abs(dx) >= Math.abs(dy)) {
      // Mostly horizontal: one step per column, the coverage split between the two rows
      // the line passes between.
      if (x0 > x1) {
        let t = x0; x0 = x1; x1 = t;
        t = y0; y0 = y1; y1 = t;
      }
      const slope = dx === 0 ? 0 : (y1 - y0) / (x1 - x0);
      // Columns from the one nearest x0 to the one nearest x1 (x0 ≥ −0.5 here, so "+ 0.5,
      // then | 0" rounds; unlike Math.round it never gives −0, which would make the loop
      // below work on doubles instead of small integers).
      let x = (x0 + 0.5) | 0;
      const xEnd = (x1 + 0.5) | 0;
      // y in 16.16 fixed point, offset by one row for the top guard row (so ≥ 0).
      let y = ((y0 + 1 + slope * (x - x0)) * ONE + 0.5) | 0;
      const step = Math.round(slope * ONE) | 0;
      for (; x <= xEnd; x++) {
        const i = (y >> FRACTION_BITS) * stride + x;
        const f = (y >> 8) & 255;
        acc[i] += COVERAGE - f;
        acc[i + stride] += f;
        y += step;
      }
    } else {
      // Mostly vertical: one step per row, split between two columns.
      if (y0 > y1) {
        let t = x0; x0 = x1; x1 = t;
        t = y0; y0 = y1; y1 = t;
      }
      const slope = (x1 - x0) / (y1 - y0);
      let y = (y0 + 0.5) | 0;
      const yEnd = (y1 + 0.5) | 0;
      // x in 16.16 fixed point, offset by one column (so ≥ 0): column −1 is the previous
      // row's guard column.
      let x = ((x0 + 1 + slope * (y - y0)) * ONE + 0.5) | 0;
      const step = Math.round(slope * ONE) | 0;
      let row = (y + 1) * stride - 1;
      for (; y <= yEnd; y++) {
        const i = row + (x >> FRACTION_BITS);
        const f = (x >> 8) & 255;
        acc[i] += COVERAGE - f;
        acc[i + 1] += f;
        x += step;
        row += stride;
      }
    }
  }
}

export class EdgeRaster {
  constructor() {
    this.width = 0;
    this.height = 0;
    this.acc = null;
    this.image = null;
    this.pixels = null;
    this.lut = null;
    this.lutKey = '';
  }

  /** The colour table: coverage count (>> LUT_SHIFT) → pixel, for one colour and alpha. */
  table(rgb, alpha, lineWidth) {
    const key = `${rgb.join(',')}/${alpha}/${lineWidth}`;
    if (key === this.lutKey) return this.lut;
    // Per fully covered pixel, an edge lets (1 − alpha) of what is behind it through;
    // hairlines (width < 1 device pixel) cover a whole pixel per step at `lineWidth` of
    // the alpha, wider lines spread `lineWidth` pixels' worth of ink over two.
    const a = Math.min(1, Math.max(0, alpha * Math.min(1, lineWidth)));
    const ink = lineWidth > 1 ? lineWidth : 1;
    const perUnit = a >= 1 ? Infinity : -Math.log(1 - a) * ink / COVERAGE;
    // Past this many units the pixel is opaque to 8 bits: the table ends there.
    const saturated = perUnit > 0 ? Math.log(512) / perUnit : Infinity;
    const size = Math.max(2, Math.min(LUT_MAX, Math.ceil(saturated / (1 << LUT_SHIFT)) + 2));
    const lut = new Uint32Array(size);
    const [r, g, b] = rgb;
    for (let i = 0; i < size; i++) {
      // The middle of the entry's range of counts.
      const units = (i + 0.5) * (1 << LUT_SHIFT);
      const coverage = perUnit === Infinity ? 1 : 1 - Math.exp(-perUnit * units);
      lut[i] = pixel(r, g, b, Math.round(255 * coverage));
    }
    this.lut = lut;
    this.lutKey = key;
    return lut;
  }

  /**
   * Replaces the whole of `ctx`'s canvas (`width` × `height` device pixels, identity
   * transform) with the edges: `edges` pairs of node indices, `px`/`py` node positions in
   * device pixels, `vis` 1 where a node is shown. `rgb` [r, g, b] 0–255, `alpha` one
   * edge's opacity, `lineWidth` in device pixels.
   */
  draw(ctx, width, height, edges, px, py, vis, { rgb, alpha, lineWidth }) {
    if (width !== this.width || height !== this.height || !this.image) {
      this.width = width;
      this.height = height;
      this.acc = new Uint32Array((width + 1) * (height + 3));
      this.image = ctx.createImageData(width, height);
      this.pixels = new Uint32Array(this.image.data.buffer);
    } else {
      this.acc.fill(0);
    }
    const { acc, pixels } = this;
    if (alpha > 0 && lineWidth > 0) {
      // In chunks: the first image comes from a function V8 has not optimized yet, and
      // one call over every edge would run much of its first (slowest) pass before
      // on-stack replacement; many shorter calls get the optimized code sooner (~0.12 s
      // less for the first image of 819,613 edges).
      for (let from = 0; from < edges.length; from += EDGE_CHUNK) {
        accumulate(acc, width, height, edges, from, Math.min(edges.length, from + EDGE_CHUNK), px, py, vis);
      }
    }
    const lut = this.table(rgb, alpha, lineWidth);
    const last = lut.length - 1;
    const stride = width + 1;
    for (let y = 0, o = 0; y < height; y++) {
      for (let x = 0, i = (y + 1) * stride; x < width; x++, i++, o++) {
        const v = acc[i];
        pixels[o] = v === 0 ? 0 : lut[Math.min(last, v >> LUT_SHIFT)];
      }
    }
    ctx.putImageData(this.image, 0, 0);
  }
}
