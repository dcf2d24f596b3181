// Unit checks of the graph page's plain modules, under Node (no browser, no server):
// graph-parse.js (GET /api/v1/graph's body into typed arrays) and edge-raster.js (the
// engine's edge rasterizer).
//
//   node --test explorer/tests/browser/graph-units.mjs
//
// Optional: GRAPH_JSON, a saved /api/v1/graph body (e.g. of steady-10k), also parsed both
// ways and compared.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { parseGraph } from '../../web/static/js/graph-parse.js';
import { EdgeRaster } from '../../web/static/js/edge-raster.js';

const bytesOf = (text) => new TextEncoder().encode(text).buffer;

/** parseGraph's answer with its edges as pairs, to compare with JSON.parse's. */
function asPairs(graph) {
  const pairs = [];
  for (let e = 0; e < graph.edges.length; e += 2) pairs.push([graph.edges[e], graph.edges[e + 1]]);
  return { ...graph, edges: pairs };
}

const NODES = '[{"capabilities":["relay"],"id":"aaaa","up":true,"version":"0.3.1"},'
  + '{"capabilities":[],"id":"bbbb","up":false,"version":"x \\"edges\\":[[9,9]] ü"},'
  + '{"capabilities":[],"id":"cccc","up":true,"version":null}]';

test('the server\'s layout: edges read into a Uint32Array, the rest as JSON', () => {
  const text = `{"crawl_id":7,"edges":[[0,1],[0,2],[1,2]],"nodes":${NODES},"simulated":true}`;
  const graph = parseGraph(bytesOf(text));
  assert.ok(graph.edges instanceof Uint32Array);
  assert.deepEqual([...graph.edges], [0, 1, 0, 2, 1, 2]);
  assert.deepEqual(asPairs(graph), JSON.parse(text));
});

test('no edges, a null crawl id', () => {
  const text = `{"crawl_id":null,"edges":[],"nodes":${NODES},"simulated":false}`;
  const graph = parseGraph(bytesOf(text));
  assert.ok(graph.edges instanceof Uint32Array);
  assert.equal(graph.edges.length, 0);
  assert.deepEqual(asPairs(graph), JSON.parse(text));
});

test('other layouts parse as JSON.parse does', () => {
  for (const text of [
    // Spaces, negative and fractional numbers, other keys first, the key inside a string:
    // read the fast way where it is safe, else parsed whole.
    `{"crawl_id": 1, "edges": [[0, 1]], "nodes": ${NODES}}`,
    `{"crawl_id":1,"edges":[[0,-1],[1,2]],"nodes":${NODES}}`,
    `{"crawl_id":1,"edges":[[0,1.5]],"nodes":${NODES}}`,
    `{"nodes":${NODES},"edges":[[0,1]]}`,
    `{"note":"\\"edges\\":[[0,1]]","edges":[],"nodes":${NODES}}`,
    `{"note":"\\"edges\\":[[0,1]]","edges":[[1,2]],"nodes":${NODES}}`,
    `{"crawl_id":1,"edges":[[0,1],"x"],"nodes":${NODES}}`,
    `{"crawl_id":1,"nodes":${NODES}}`,
  ]) {
    const graph = parseGraph(bytesOf(text));
    const edges = graph.edges instanceof Uint32Array ? asPairs(graph) : graph;
    assert.deepEqual(edges, JSON.parse(text), text);
  }
});

test('indices past 32 bits do not wrap into real ones', () => {
  const graph = parseGraph(bytesOf('{"crawl_id":1,"edges":[[0,4294967297],[12345678901234,1]],"nodes":[]}'));
  assert.deepEqual([...graph.edges], [0, 0xffffffff, 0xffffffff, 1]);
});

test('a body that is not JSON is an ApiError', () => {
  for (const text of ['', '{"crawl_id":1,"edges":[[0,1]],"nodes":[', '<html>']) {
    assert.throws(() => parseGraph(bytesOf(text)), (err) => err.code === 'bad_response', JSON.stringify(text));
  }
});

test('a saved graph (GRAPH_JSON) parses the same both ways', { skip: !process.env.GRAPH_JSON }, () => {
  const buffer = readFileSync(process.env.GRAPH_JSON);
  const bytes = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const started = performance.now();
  const graph = parseGraph(bytes);
  const fastMs = performance.now() - started;
  const plain = JSON.parse(buffer.toString('utf8'));
  assert.ok(graph.edges instanceof Uint32Array);
  assert.equal(graph.edges.length, plain.edges.length * 2);
  for (let e = 0; e < plain.edges.length; e++) {
    if (graph.edges[2 * e] !== plain.edges[e][0] || graph.edges[2 * e + 1] !== plain.edges[e][1]) {
      assert.fail(`edge ${e}: ${graph.edges[2 * e]},${graph.edges[2 * e + 1]} against ${plain.edges[e]}`);
    }
  }
  assert.deepEqual(graph.nodes, plain.nodes);
  assert.equal(graph.crawl_id, plain.crawl_id);
  assert.equal(graph.simulated, plain.simulated);
  console.log(`# ${plain.nodes.length} nodes, ${plain.edges.length} edges parsed in ${Math.round(fastMs)} ms`);
});

// ------------------------------------------------------------------ edge-raster.js

/** A stand-in for a 2D context: createImageData and putImageData are all the raster uses. */
function fakeContext() {
  return {
    put: null,
    createImageData: (w, h) => ({ width: w, height: h, data: new Uint8ClampedArray(w * h * 4) }),
    putImageData(image, x, y) {
      this.put = { image, x, y };
    },
  };
}

/** Draws edges between the given points (device px); returns the image's alpha channel. */
function draw(width, height, points, pairs, style, visible) {
  const ctx = fakeContext();
  const px = new Float64Array(points.map((p) => p[0]));
  const py = new Float64Array(points.map((p) => p[1]));
  const vis = visible || new Uint8Array(points.length).fill(1);
  new EdgeRaster().draw(ctx, width, height, new Uint32Array(pairs.flat()), px, py, vis,
    { rgb: [10, 20, 30], alpha: 0.5, lineWidth: 1, ...style });
  assert.ok(ctx.put, 'putImageData was called');
  assert.equal(ctx.put.x, 0);
  assert.equal(ctx.put.y, 0);
  const { data } = ctx.put.image;
  const alpha = new Uint8Array(width * height);
  for (let i = 0; i < alpha.length; i++) alpha[i] = data[4 * i + 3];
  return { alpha, data };
}

test('a horizontal edge through pixel centres covers its row, in the given colour', () => {
  const { alpha, data } = draw(32, 16, [[4.5, 6.5], [20.5, 6.5]], [[0, 1]]);
  for (let x = 0; x < 32; x++) {
    for (let y = 0; y < 16; y++) {
      const a = alpha[y * 32 + x];
      if (y === 6 && x >= 4 && x <= 20) assert.ok(Math.abs(a - 128) <= 2, `(${x},${y}) alpha ${a}`);
      else assert.equal(a, 0, `(${x},${y}) alpha ${a}`);
    }
  }
  const i = (6 * 32 + 10) * 4;
  assert.deepEqual([...data.subarray(i, i + 3)], [10, 20, 30]);
});

test('overlapping edges compose like translucent strokes: 1 − (1 − a)ⁿ', () => {
  for (const n of [1, 2, 3, 5, 8]) {
    const pairs = Array.from({ length: n }, () => [0, 1]);
    const { alpha } = draw(32, 16, [[2.5, 8.5], [29.5, 8.5]], pairs, { alpha: 0.2 });
    const want = 255 * (1 - 0.8 ** n);
    assert.ok(Math.abs(alpha[8 * 32 + 16] - want) <= 3, `${n} edges: ${alpha[8 * 32 + 16]} against ${want}`);
  }
});

test('a hairline modulates its alpha by its width; a line between rows is split between them', () => {
  const thin = draw(32, 16, [[2.5, 8.5], [29.5, 8.5]], [[0, 1]], { lineWidth: 0.5 });
  assert.ok(Math.abs(thin.alpha[8 * 32 + 16] - 255 * 0.25) <= 3);
  // Between two rows: half the coverage on each.
  const between = draw(32, 16, [[2.5, 8], [29.5, 8]], [[0, 1]], { alpha: 0.5 });
  const upper = between.alpha[7 * 32 + 16];
  const lower = between.alpha[8 * 32 + 16];
  const want = 255 * (1 - 0.5 ** 0.5);
  assert.ok(Math.abs(upper - want) <= 3 && Math.abs(lower - want) <= 3, `${upper} / ${lower} against ${want}`);
});

test('edges are clipped to the image, and hidden or unplaced ends are skipped', () => {
  // From far outside, through the image, to far outside: only the inside is drawn, quickly.
  const started = performance.now();
  const through = draw(64, 48, [[-1e7, 24.5], [1e7, 24.5], [32.5, -5e6], [32.5, 5e6]], [[0, 1], [2, 3]]);
  assert.ok(performance.now() - started < 500, 'clipped, not walked');
  assert.ok(through.alpha[24 * 64 + 3] > 100 && through.alpha[24 * 64 + 60] > 100);
  assert.ok(through.alpha[3 * 64 + 32] > 100 && through.alpha[45 * 64 + 32] > 100);
  // Wholly outside.
  const outside = draw(64, 48, [[-50, -50], [-10, 200]], [[0, 1]]);
  assert.equal(outside.alpha.reduce((s, v) => s + v, 0), 0);
  // A hidden end, a NaN position.
  const hidden = draw(64, 48, [[5.5, 5.5], [50.5, 40.5], [NaN, 3]], [[0, 1], [0, 2]], {}, new Uint8Array([1, 0, 1]));
  assert.equal(hidden.alpha.reduce((s, v) => s + v, 0), 0);
  // Ends on the image's very edges: drawn, nothing out of bounds.
  const edges = draw(16, 16, [[0, 0], [16, 16], [0, 16], [16, 0]], [[0, 1], [2, 3]], { alpha: 1 });
  assert.ok(edges.alpha[8 * 16 + 8] > 100);
});

test('many edges on one pixel saturate rather than wrap', () => {
  const pairs = Array.from({ length: 20_000 }, () => [0, 1]);
  const { alpha } = draw(16, 16, [[1.5, 8.5], [14.5, 8.5]], pairs, { alpha: 0.07 });
  assert.equal(alpha[8 * 16 + 8], 255);
});
