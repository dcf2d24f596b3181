// Headless-Chromium test of the meshara-explorer web UI against a running explorer.
//
//   EXPLORER_URL=http://127.0.0.1:PORT \
//   EXPECT='{"listed_min":3,"search_id":"<nodeid>","search_fingerprint":"abcd-efgh-ijkl-mnop","lookup_target":"<nodeid>"}' \
//   ARTIFACTS=/tmp/artifacts JOIN_READY_FILE=/tmp/x/ready JOINED_FILE=/tmp/x/joined \
//   node explorer/tests/browser/explorer.mjs
//
// Checks, in one page load: the overview counts at least `listed_min` listed nodes and the
// live connection opens; the graph canvas draws (non-blank pixels) and a click on a node
// (`search_id`) opens its side panel; the node list finds `search_id` by a NodeId prefix and
// by a fingerprint prefix; the node page shows the record sequence and at least one probe;
// a lookup of `lookup_target` lists at least one round and highlights nodes on the graph.
//
// Then the live protocol: the script writes JOIN_READY_FILE, waits for JOINED_FILE (the
// caller starts a new node and writes its NodeId there), and waits up to JOIN_TIMEOUT_MS
// (default 90000) for that node to appear in the open node list without a reload.
// Without JOIN_READY_FILE and JOINED_FILE the live step is skipped.
//
// Throughout: no console errors, no page errors, no HTTP error responses, and no request
// to any origin but EXPLORER_URL's. Screenshots go to ARTIFACTS (overview.png, graph.png,
// nodes.png, node.png, lookup.png, live.png; failure.png and failure.html on failure).
//
// Prints `ok N - step` lines, then one line of JSON ({"ok":true,...}) on success; exits 1
// with "FAIL: ..." on the first failure, 2 on bad input.
// Optional: CHROMIUM (default /usr/bin/chromium), JOINED_WAIT_MS (how long to wait for
// JOINED_FILE to appear, default 180000), TOTAL_TIMEOUT_MS (default 420000).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const WAIT_MS = 15_000;
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
const NODE_ID = /^[a-z2-7]{52}$/;

function usage(message) {
  console.error(`explorer.mjs: ${message}`);
  process.exit(2);
}

function config() {
  const missing = ['EXPLORER_URL', 'EXPECT'].filter((k) => !process.env[k]);
  if (missing.length) usage(`missing environment variable(s): ${missing.join(', ')}`);
  let expect;
  try {
    expect = JSON.parse(process.env.EXPECT);
  } catch (err) {
    usage(`EXPECT is not valid JSON: ${err.message}`);
  }
  for (const key of ['listed_min', 'search_id', 'search_fingerprint', 'lookup_target']) {
    if (expect[key] === undefined || expect[key] === null) usage(`EXPECT lacks "${key}"`);
  }
  if (!NODE_ID.test(expect.search_id)) usage('EXPECT.search_id is not a NodeId');
  if (!NODE_ID.test(expect.lookup_target)) usage('EXPECT.lookup_target is not a NodeId');
  const ready = process.env.JOIN_READY_FILE || '';
  const joined = process.env.JOINED_FILE || '';
  if (Boolean(ready) !== Boolean(joined)) usage('set both JOIN_READY_FILE and JOINED_FILE, or neither');
  const url = process.env.EXPLORER_URL.replace(/\/+$/, '');
  return {
    url,
    origin: new URL(url).origin,
    expect,
    artifacts: process.env.ARTIFACTS || '',
    readyFile: ready,
    joinedFile: joined,
    joinTimeout: Number(process.env.JOIN_TIMEOUT_MS || 90_000),
    joinedWait: Number(process.env.JOINED_WAIT_MS || 180_000),
    total: Number(process.env.TOTAL_TIMEOUT_MS || 420_000),
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Retries `check` (which throws on failure) until it passes or `timeout` ms pass. */
async function eventually(what, check, timeout = WAIT_MS, every = 100) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const reason = lastError && lastError.message ? lastError.message : String(lastError);
      throw new Error(`timed out after ${timeout} ms waiting for ${what}: ${reason}`);
    }
    await sleep(every);
  }
}

const tid = (id) => `[data-testid="${id}"]`;

async function text(locator) {
  return ((await locator.textContent({ timeout: 2_000 })) ?? '').replace(/\s+/g, ' ').trim();
}

const results = [];
const summary = { ok: false };

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
  } catch (err) {
    results.push({ name, ok: false });
    err.message = `step "${name}" failed: ${err.message}`;
    throw err;
  }
  results.push({ name, ok: true, ms: Date.now() - started });
  console.log(`ok ${results.length} - ${name} (${Date.now() - started} ms)`);
}

async function main() {
  const cfg = config();
  const { expect } = cfg;
  const pageErrors = [];
  const consoleErrors = [];
  const httpErrors = [];
  const foreignRequests = [];
  let requests = 0;
  let browser;
  let page;

  const watchdog = setTimeout(async () => {
    console.error(`FAIL: explorer test exceeded ${cfg.total} ms`);
    try {
      await Promise.race([browser?.close(), sleep(3_000)]);
    } finally {
      process.exit(1);
    }
  }, cfg.total);
  watchdog.unref();

  const shot = async (name, fullPage = false) => {
    if (!cfg.artifacts) return;
    mkdirSync(cfg.artifacts, { recursive: true });
    await page.screenshot({ path: join(cfg.artifacts, name), fullPage, timeout: 10_000 });
  };

  try {
    browser = await chromium.launch({
      executablePath: cfg.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 20_000,
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.setDefaultNavigationTimeout(WAIT_MS);
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') consoleErrors.push(msg.text());
    });
    page.on('request', (req) => {
      requests += 1;
      let origin = null;
      try {
        origin = new URL(req.url()).origin;
      } catch (_) { /* unparsable: foreign */ }
      if (origin !== cfg.origin) foreignRequests.push(req.url());
    });
    page.on('response', (res) => {
      if (res.status() >= 400) httpErrors.push(`${res.status()} ${res.request().method()} ${res.url()}`);
    });
    let mainNavigations = 0;
    page.on('framenavigated', (frame) => {
      if (frame === page.mainFrame()) mainNavigations += 1;
    });

    const open = async (route) => {
      await page.locator(tid(`nav-${route}`)).click();
      await page.locator(tid(`page-${route}`)).waitFor({ state: 'visible' });
      assert.equal(await page.locator(tid(`nav-${route}`)).getAttribute('aria-current'), 'page',
        `the ${route} tab is marked current`);
    };

    await step('overview lists at least listed_min nodes; live updates connect', async () => {
      const response = await page.goto(`${cfg.url}/#/overview`, { waitUntil: 'domcontentloaded' });
      assert.ok(response && response.ok(), `GET / answered ${response && response.status()}`);
      await page.locator(tid('page-overview')).waitFor({ state: 'visible' });
      // A crawl may still be filling the database: the overview refreshes itself on events.
      const listed = await eventually(`at least ${expect.listed_min} listed nodes`, async () => {
        const value = Number(await page.locator(tid('stat-listed')).getAttribute('data-value', { timeout: 2_000 }));
        assert.ok(value >= Number(expect.listed_min), `the overview shows ${value} listed`);
        return value;
      }, 60_000, 250);
      summary.listed = listed;
      for (const id of ['stat-up', 'stat-down', 'stat-unreached', 'stat-edges']) {
        assert.match(await page.locator(tid(id)).getAttribute('data-value'), /^\d+$/, `${id} is a number`);
      }
      await page.locator(tid('chart-nodes')).waitFor({ state: 'visible' });
      assert.equal(await page.locator(tid('snapshot-link')).getAttribute('href'), '/api/v1/snapshot');
      assert.equal(await page.locator(tid('openapi-link')).getAttribute('href'), '/api/v1/openapi.json');
      await eventually('the live indicator to connect', async () => {
        assert.equal(await page.locator(tid('live-indicator')).getAttribute('data-state'), 'open');
      }, 20_000);
      await shot('overview.png', true);
    });

    await step('graph canvas draws, and clicking a node opens its panel', async () => {
      await open('graph');
      const stage = page.locator(tid('graph-stage'));
      await eventually('the graph to render', async () => {
        assert.equal(await stage.getAttribute('data-rendered'), 'true');
        assert.equal(await stage.getAttribute('data-interactive'), 'true');
      }, 30_000);
      const nodes = Number(await stage.getAttribute('data-node-count'));
      assert.ok(nodes >= 1, `the graph has ${nodes} nodes`);
      summary.graph_nodes = nodes;
      summary.graph_edges = Number(await stage.getAttribute('data-edge-count'));
      // Non-blank: pixels the graph drew on the visible canvas.
      const pixels = await eventually('non-blank pixels on the graph canvas', async () => {
        const count = await page.evaluate(() => {
          const canvas = document.querySelector('[data-testid="graph-canvas"]');
          const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let drawn = 0;
          for (let i = 3; i < data.length; i += 4) if (data[i] > 0) drawn += 1;
          return drawn;
        });
        assert.ok(count >= 20, `only ${count} pixels drawn`);
        return count;
      }, 20_000, 250);
      summary.graph_pixels = pixels;

      // Hold the layout still, then click the node we know.
      const toggle = page.locator(tid('graph-layout-toggle'));
      let pausedByTest = false;
      for (let attempt = 0; attempt < 3; attempt++) {
        const state = await stage.getAttribute('data-layout-state');
        if (state !== 'running') break;
        await toggle.click();
        pausedByTest = true;
        await eventually('the layout to stop', async () => {
          assert.notEqual(await stage.getAttribute('data-layout-state'), 'running');
        }, 5_000).catch(() => {});
      }
      assert.match(await stage.getAttribute('data-layout-state'), /^(paused|settled)$/, 'the layout holds still');
      await stage.scrollIntoViewIfNeeded();
      const viewport = page.viewportSize();
      let target = null;
      for (let attempt = 0; attempt < 12; attempt++) {
        const b = await stage.boundingBox();
        assert.ok(b, 'the graph stage has a box');
        // The part of the graph on screen, less the zoom buttons' column.
        const area = {
          left: Math.max(b.x, 0) + 10,
          top: Math.max(b.y, 0) + 10,
          right: Math.min(b.x + b.width, viewport.width) - 60,
          bottom: Math.min(b.y + b.height, viewport.height) - 10,
        };
        target = await page.evaluate((id) => {
          const g = window.__explorerGraph;
          const p = g && g.pagePosition(id);
          if (!p) return null;
          // Distance on screen to the nearest other visible node.
          let nearest = Infinity;
          for (const other of g.nodeIds()) {
            if (other === id) continue;
            const q = g.pagePosition(other);
            if (!q || !q.visible) continue;
            nearest = Math.min(nearest, Math.hypot(q.x - p.x, q.y - p.y));
          }
          return { ...p, nearest };
        }, expect.search_id);
        assert.ok(target, `node ${expect.search_id} is not in the drawn graph`);
        assert.ok(target.visible, 'the node to click is hidden by a filter');
        const inside = target.x > area.left && target.x < area.right && target.y > area.top && target.y < area.bottom;
        if (inside && target.nearest > 4) break;
        if (inside) {
          // Zoom in on it with the wheel, as a user would.
          await page.mouse.move(target.x, target.y);
          await page.mouse.wheel(0, -500);
        } else {
          // Drag it to the middle of the visible canvas.
          const cx = (area.left + area.right) / 2;
          const cy = (area.top + area.bottom) / 2;
          const fromX = Math.min(Math.max(target.x, area.left), area.right);
          const fromY = Math.min(Math.max(target.y, area.top), area.bottom);
          await page.mouse.move(fromX, fromY);
          await page.mouse.down();
          await page.mouse.move(cx + (fromX - target.x), cy + (fromY - target.y), { steps: 8 });
          await page.mouse.up();
        }
        await sleep(250);
      }
      await page.mouse.click(target.x, target.y);
      const panel = page.locator(tid('graph-panel'));
      await panel.waitFor({ state: 'visible' });
      assert.equal(await panel.getAttribute('data-node-id'), expect.search_id, 'the panel shows the clicked node');
      assert.equal(await text(panel.locator(tid('graph-panel-id'))), expect.search_id);
      assert.equal(await panel.locator(tid('graph-panel-link')).getAttribute('href'), `#/node/${expect.search_id}`);
      await eventually('the panel details', async () => {
        assert.match(await text(panel.locator(tid('graph-panel-details'))), /Fingerprint/);
      });
      await shot('graph.png');
      if (pausedByTest && (await stage.getAttribute('data-layout-state')) === 'paused') await toggle.click();
    });

    await step('the node list finds the node by NodeId prefix and by fingerprint prefix', async () => {
      await open('nodes');
      await page.locator(tid('nodes-table')).or(page.locator(tid('nodes-empty'))).first().waitFor({ state: 'visible' });
      const search = page.locator(tid('nodes-search'));
      const row = page.locator(`${tid('node-row')}[data-node-id="${expect.search_id}"]`);
      await search.fill(expect.search_id.slice(0, 10));
      await row.waitFor({ state: 'visible' });
      assert.match(await text(row.locator(tid('node-fingerprint'))), new RegExp(`^${expect.search_fingerprint}$`),
        'the row shows the fingerprint');
      await search.fill('');
      const fpPrefix = String(expect.search_fingerprint).slice(0, 9);
      await search.fill(fpPrefix);
      await eventually(`the list filtered by "${fpPrefix}"`, async () => {
        assert.equal(new URL(page.url()).hash.includes(`q=${encodeURIComponent(fpPrefix)}`), true);
        await row.waitFor({ state: 'visible', timeout: 1_000 });
        const ids = await page.locator(tid('node-row')).evaluateAll((rows) => rows.map((r) => r.dataset.nodeId));
        assert.ok(ids.includes(expect.search_id), `rows: ${ids.join(', ')}`);
      });
      await shot('nodes.png');
    });

    await step('the node page shows the record sequence and probes', async () => {
      const row = page.locator(`${tid('node-row')}[data-node-id="${expect.search_id}"]`);
      await row.locator(tid('node-link')).click();
      const nodePage = page.locator(`${tid('page-node')}[data-node-id="${expect.search_id}"]`);
      await nodePage.waitFor({ state: 'visible' });
      assert.equal(await text(nodePage.locator(tid('node-id'))), expect.search_id);
      assert.equal(await text(nodePage.locator(tid('node-fingerprint'))), expect.search_fingerprint);
      assert.match(await text(nodePage.locator(tid('node-record-sequence'))), /^\d+$/, 'the record sequence is a number');
      const probes = await nodePage.locator(tid('probe-row')).count();
      assert.ok(probes >= 1, 'at least one probe is listed');
      summary.probes = probes;
      await nodePage.locator(tid('node-uptime-chart')).waitFor({ state: 'attached' });
      await shot('node.png', true);
    });

    await step('a lookup trace lists rounds and highlights them on the graph', async () => {
      await open('lookup');
      await page.locator(tid('lookup-target')).fill(expect.lookup_target);
      await page.locator(tid('lookup-submit')).click();
      const error = page.locator(tid('lookup-error'));
      await eventually('the lookup result', async () => {
        if (await error.isVisible()) throw new Error(`the page says: ${await text(error)}`);
        await page.locator(tid('lookup-result')).waitFor({ state: 'visible', timeout: 1_000 });
      }, 60_000, 250);
      const rounds = await page.locator(tid('lookup-round')).count();
      assert.ok(rounds >= 1, `the lookup lists ${rounds} rounds`);
      summary.lookup_rounds = rounds;
      const stage = page.locator(`${tid('page-lookup')} ${tid('graph-stage')}`);
      await eventually('lookup highlights on the graph', async () => {
        assert.equal(await stage.getAttribute('data-rendered'), 'true');
        const n = Number(await stage.getAttribute('data-highlighted'));
        assert.ok(n >= 1, `${n} highlighted`);
      }, 30_000, 250);
      await page.locator(tid('lookup-round-show')).first().click();
      assert.match(await text(page.locator(tid('lookup-round-label'))), /^Round 1 of \d+$/);
      summary.lookup_highlighted = Number(await stage.getAttribute('data-highlighted'));
      // The page frames the lookup; let the graph draw that view before the screenshot.
      await eventually('the graph image for the lookup view', async () => {
        assert.equal(await stage.getAttribute('data-crisp'), 'true');
      }, 10_000, 100).catch(() => {});
      await shot('lookup.png', true);
    });

    if (cfg.readyFile) {
      await step('a node that joins appears without a reload', async () => {
        await open('nodes');
        const search = page.locator(tid('nodes-search'));
        if (await search.inputValue()) {
          await search.fill('');
          await eventually('the unfiltered list', async () => {
            assert.equal(new URL(page.url()).hash.includes('q='), false);
          });
        }
        await page.locator(tid('nodes-table')).waitFor({ state: 'visible' });
        await page.evaluate(() => { window.__explorerNoReload = true; });
        const navigationsBefore = mainNavigations;
        writeFileSync(cfg.readyFile, 'ready\n');
        const id = await eventually(`${cfg.joinedFile} to name the joined node`, async () => {
          assert.ok(existsSync(cfg.joinedFile), 'not written yet');
          const value = readFileSync(cfg.joinedFile, 'utf8').trim();
          assert.match(value, NODE_ID, `JOINED_FILE holds "${value.slice(0, 80)}"`);
          return value;
        }, cfg.joinedWait, 200);
        const started = Date.now();
        const row = page.locator(`${tid('node-row')}[data-node-id="${id}"]`);
        await eventually(`node ${id} in the open node list`, async () => {
          await row.waitFor({ state: 'visible', timeout: 1_000 });
        }, cfg.joinTimeout, 250);
        summary.joined_after_ms = Date.now() - started;
        assert.equal(await page.evaluate(() => window.__explorerNoReload === true), true, 'the page was not reloaded');
        assert.equal(mainNavigations, navigationsBefore, 'the page did not navigate');
        await shot('live.png');
      });
    }

    await step('no errors, and every request stayed on the explorer\'s origin', async () => {
      assert.deepEqual(pageErrors, [], 'uncaught page errors');
      assert.deepEqual(consoleErrors, [], 'console errors');
      assert.deepEqual(httpErrors, [], 'HTTP error responses');
      assert.deepEqual(foreignRequests, [], `requests outside ${cfg.origin}`);
      summary.requests = requests;
    });
  } catch (err) {
    if (page && cfg.artifacts) {
      try {
        mkdirSync(cfg.artifacts, { recursive: true });
        await page.screenshot({ path: join(cfg.artifacts, 'failure.png'), fullPage: true, timeout: 5_000 });
        writeFileSync(join(cfg.artifacts, 'failure.html'), await page.content());
        console.error(`artifacts written to ${cfg.artifacts}`);
      } catch (artifactErr) {
        console.error(`could not write failure artifacts: ${artifactErr.message}`);
      }
    }
    if (page) {
      try {
        console.error(`page URL: ${page.url()}`);
        const shown = page.locator(tid('error'));
        if (await shown.isVisible()) console.error(`explorer error message: ${await text(shown)}`);
      } catch (_) { /* best effort */ }
    }
    if (pageErrors.length) console.error(`page errors: ${JSON.stringify(pageErrors)}`);
    if (consoleErrors.length) console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
    if (httpErrors.length) console.error(`HTTP errors: ${JSON.stringify(httpErrors)}`);
    if (foreignRequests.length) console.error(`foreign requests: ${JSON.stringify(foreignRequests)}`);
    throw err;
  } finally {
    clearTimeout(watchdog);
    if (browser) await Promise.race([browser.close(), sleep(5_000)]);
  }
}

try {
  await main();
  summary.ok = true;
  summary.steps = results.length;
  console.log(JSON.stringify(summary));
} catch (err) {
  console.error(`FAIL: ${err && err.message ? err.message : err}`);
  process.exitCode = 1;
}
