// Graph benchmark in headless Chromium: opens EXPLORER_URL#/graph, waits for the first
// render, drags the graph around for a few seconds, and prints one line of JSON:
//
//   {"nodes":10000,"edges":60000,"first_render_ms":…,"interactive_ms":…,
//    "frame_ms_pan_p50":…,"frame_ms_pan_p95":…, …}
//
//   EXPLORER_URL=http://127.0.0.1:PORT node explorer/tests/browser/graph-bench.mjs
//
// Optional: CHROMIUM (browser binary, default /usr/bin/chromium), ARTIFACTS (a directory
// for graph-bench.png), BENCH_PAN_MS (how long to pan, default 4000), BENCH_TIMEOUT_MS
// (how long to wait for the first render, default 60000).
//
// Every number is measured by the page itself (window.__explorerGraphStats, see
// explorer/web/static/js/graph-view.js); times are ms since navigation start:
//   first_render_ms   the first image with every node and edge drawn on the visible canvas
//   interactive_ms    the main thread free again after that, hit-testing and input ready
//   frame_ms_pan_*    intervals between consecutive animation frames while the pointer
//                     drags the graph (p50 and p95 over the whole drag); every frame moves
//                     the graph to the pointer's latest position. `pan_moves` says how many
//                     mouse moves the driver got in (CDP round trips bound it, ~40/s here).
// plus fetch_start_ms / data_ms (graph request sent / parsed), first_frame_ms (the layout
// worker's first image arrived), pan_work_ms_p50/p95 (main-thread drawing time of a pan
// frame), pan_frames, worker_render_ms (the worker's last full redraw), layout
// {state, ticks, layout_ms} and engine ("worker" or "main-thread").

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function fail(message) {
  console.error(`graph-bench.mjs: ${message}`);
  process.exit(1);
}

const url = (process.env.EXPLORER_URL || '').replace(/\/+$/, '');
if (!url) {
  console.error('graph-bench.mjs: missing environment variable EXPLORER_URL');
  process.exit(2);
}
const panMs = Number(process.env.BENCH_PAN_MS || 4000);
const timeoutMs = Number(process.env.BENCH_TIMEOUT_MS || 60_000);
const artifacts = process.env.ARTIFACTS || '';

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i] * 10) / 10;
}

const watchdog = setTimeout(() => fail(`exceeded ${timeoutMs + panMs + 30_000} ms`), timeoutMs + panMs + 30_000);
watchdog.unref();

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 20_000,
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console error: ${msg.text()}`);
  });
  const response = await page.goto(`${url}/#/graph`, { waitUntil: 'domcontentloaded', timeout: 20_000 });
  if (!response || !response.ok()) fail(`GET / answered ${response && response.status()}`);
  await page.waitForFunction(() => {
    const s = window.__explorerGraphStats;
    return s && s.interactive_ms !== null;
  }, null, { timeout: timeoutMs, polling: 50 });

  // Pan: hold the button down in the middle of the graph and move in a circle.
  const box = await page.locator('[data-testid="graph-stage"]').boundingBox();
  if (!box) fail('the graph is not on the page');
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  await page.evaluate(() => { window.__explorerGraphStats.pan_frames = []; });
  await page.mouse.move(cx, cy);
  await page.mouse.down();
  const started = Date.now();
  let step = 0;
  while (Date.now() - started < panMs) {
    step += 1;
    const angle = step / 12;
    const radius = Math.min(box.width, box.height) / 4;
    await page.mouse.move(cx + Math.cos(angle) * radius, cy + Math.sin(angle) * radius);
  }
  const framesBefore = await page.evaluate(() => window.__explorerGraphStats.frames);
  await page.mouse.up();
  // The image for the final view (and fresh layout numbers) follow once the input stops.
  await page.waitForFunction((n) => window.__explorerGraphStats.frames > n, framesBefore, { timeout: 10_000, polling: 50 })
    .catch(() => {});
  const stats = await page.evaluate(() => JSON.parse(JSON.stringify(window.__explorerGraphStats)));
  if (artifacts) {
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'graph-bench.png') });
  }
  const intervals = stats.pan_frames.map((f) => f.interval_ms);
  const work = stats.pan_frames.map((f) => f.work_ms);
  const out = {
    nodes: stats.nodes,
    edges: stats.edges,
    first_render_ms: stats.first_render_ms,
    interactive_ms: stats.interactive_ms,
    frame_ms_pan_p50: percentile(intervals, 50),
    frame_ms_pan_p95: percentile(intervals, 95),
    pan_frames: intervals.length,
    pan_moves: step,
    pan_work_ms_p50: percentile(work, 50),
    pan_work_ms_p95: percentile(work, 95),
    fetch_start_ms: stats.fetch_start_ms,
    data_ms: stats.data_ms,
    first_frame_ms: stats.first_frame_ms,
    worker_render_ms: stats.worker_render_ms,
    layout: stats.layout,
    engine: stats.engine,
    renderer: stats.renderer,
  };
  if (!intervals.length) fail(`no frames were drawn while panning: ${JSON.stringify(out)}`);
  if (errors.length) fail(`the page reported errors: ${JSON.stringify(errors)}`);
  console.log(JSON.stringify(out));
} catch (err) {
  fail(err && err.message ? err.message : String(err));
} finally {
  clearTimeout(watchdog);
  if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5_000))]);
}
