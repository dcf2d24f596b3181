// Headless-Chromium test of the meshara-authority dashboard.
//
//   AUTHORITY_URL=http://127.0.0.1:PORT ADMIN_TOKEN=... VIEWER_TOKEN=... \
//   EXPECT='{"package_hash":"<hex>","draft_id":7,"published_id":6,"server_key":"k1","threshold":2}' \
//   node authority-server/tests/browser/dashboard.mjs
//
// The server must be seeded with one uploaded package (package_hash), one
// published release (published_id) and one draft release (draft_id) that has
// exactly one signature, from a key that is not held by the server, while the
// server holds `server_key`. The draft gets signed and published by this test.
//
// Optional: CHROMIUM (browser binary, default /usr/bin/chromium),
// DASHBOARD_ARTIFACTS (a directory for a screenshot and the page HTML on failure).

import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const WAIT_MS = 10_000;
const TOTAL_MS = 55_000;
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

function config() {
  const missing = ['AUTHORITY_URL', 'ADMIN_TOKEN', 'VIEWER_TOKEN', 'EXPECT'].filter((k) => !process.env[k]);
  if (missing.length) {
    console.error(`dashboard.mjs: missing environment variable(s): ${missing.join(', ')}`);
    process.exit(2);
  }
  let expect;
  try {
    expect = JSON.parse(process.env.EXPECT);
  } catch (err) {
    console.error(`dashboard.mjs: EXPECT is not valid JSON: ${err.message}`);
    process.exit(2);
  }
  for (const key of ['package_hash', 'draft_id', 'published_id', 'server_key', 'threshold']) {
    if (expect[key] === undefined || expect[key] === null) {
      console.error(`dashboard.mjs: EXPECT lacks "${key}"`);
      process.exit(2);
    }
  }
  return {
    url: process.env.AUTHORITY_URL.replace(/\/+$/, ''),
    admin: process.env.ADMIN_TOKEN,
    viewer: process.env.VIEWER_TOKEN,
    expect,
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
    artifacts: process.env.DASHBOARD_ARTIFACTS || '',
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Retry `check` (which throws on failure) until it passes or WAIT_MS passes. */
async function eventually(what, check, timeout = WAIT_MS) {
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
    await sleep(100);
  }
}

const tid = (id) => `[data-testid="${id}"]`;

async function text(locator) {
  return ((await locator.textContent({ timeout: 1_000 })) ?? '').replace(/\s+/g, ' ').trim();
}

const results = [];

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
  } catch (err) {
    results.push({ name, ok: false });
    err.message = `step "${name}" failed: ${err.message}`;
    throw err;
  }
  results.push({ name, ok: true });
  console.log(`ok ${results.length} - ${name} (${Date.now() - started} ms)`);
}

async function main() {
  const cfg = config();
  const { expect } = cfg;
  const threshold = Number(expect.threshold);
  const hashPrefix = String(expect.package_hash).slice(0, 12);
  const draftId = String(expect.draft_id);
  const publishedId = String(expect.published_id);

  const pageErrors = [];
  const consoleErrors = [];
  let browser;
  let page;

  const watchdog = setTimeout(async () => {
    console.error(`FAIL: dashboard test exceeded ${TOTAL_MS} ms`);
    try {
      await Promise.race([browser?.close(), sleep(3_000)]);
    } finally {
      process.exit(1);
    }
  }, TOTAL_MS);
  watchdog.unref();

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
      // The browser itself logs every non-2xx response ("Failed to load
      // resource"); the test provokes 401s on purpose, so only count errors
      // the page's own code reports.
      if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) {
        consoleErrors.push(msg.text());
      }
    });

    const signinForm = page.locator(tid('signin-form'));
    const signinError = page.locator(tid('signin-error'));
    const app = page.locator(tid('app'));

    async function signIn(token, role) {
      await signinForm.waitFor({ state: 'visible' });
      await page.locator(tid('signin-token')).fill(token);
      await page.locator(tid('signin-submit')).click();
      await app.waitFor({ state: 'visible' });
      await eventually(`the signed-in role "${role}"`, async () => {
        assert.equal(await text(page.locator(tid('whoami-role'))), role);
      });
    }

    async function open(route) {
      await page.locator(tid(`nav-${route}`)).click();
      await page.locator(tid(`page-${route}`)).waitFor({ state: 'visible' });
      assert.equal(await page.locator(tid(`nav-${route}`)).getAttribute('aria-current'), 'page',
        `the ${route} tab is marked current`);
    }

    const releaseRow = (id) => page.locator(`${tid('release-row')}[data-release-id="${id}"]`);

    await step('sign-in form shows; a wrong token is refused', async () => {
      const response = await page.goto(`${cfg.url}/`, { waitUntil: 'domcontentloaded' });
      assert.ok(response && response.ok(), `GET / answered ${response && response.status()}`);
      await signinForm.waitFor({ state: 'visible' });
      assert.equal(await app.isVisible(), false, 'the dashboard must stay hidden before sign-in');
      assert.equal(await signinError.isVisible(), false, 'no sign-in error before trying');
      await page.locator(tid('signin-token')).fill(`wrong-${Date.now()}`);
      await page.locator(tid('signin-submit')).click();
      await signinError.waitFor({ state: 'visible' });
      assert.match(await text(signinError), /\S/, 'the sign-in error says something');
      assert.equal(await app.isVisible(), false, 'a wrong token must not open the dashboard');
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 0,
        'a refused token must not be stored');
    });

    await step('admin signs in and sees the uploaded package', async () => {
      await signIn(cfg.admin, 'admin');
      assert.ok(await page.evaluate(() => Object.values(sessionStorage).length === 1),
        'the token is kept in sessionStorage');
      await open('packages');
      const row = page.locator(`${tid('package-row')}[data-hash="${expect.package_hash}"]`);
      await row.waitFor({ state: 'visible' });
      assert.ok((await text(row)).includes(hashPrefix), `package row shows the hash prefix ${hashPrefix}`);
      assert.equal(await text(row.locator(tid('package-hash'))), `${hashPrefix}…`, 'the short hash');
      assert.ok(await page.locator(tid('upload-form')).isVisible(), 'admin sees the upload form');
    });

    await step('draft is signed with the server key and published', async () => {
      await open('releases');
      const row = releaseRow(draftId);
      await row.waitFor({ state: 'visible' });
      assert.equal(await text(row.locator(tid('release-status'))), 'draft', `release ${draftId} starts as a draft`);
      assert.ok((await text(row.locator(tid('sig-progress')))).includes(`1 / ${threshold}`),
        `draft shows 1 / ${threshold} signatures, got "${await text(row.locator(tid('sig-progress')))}"`);
      assert.equal(await row.locator(tid('publish-button')).isDisabled(), true,
        'Publish is disabled below the threshold');
      const published = releaseRow(publishedId);
      await published.waitFor({ state: 'visible' });
      assert.equal(await text(published.locator(tid('release-status'))), 'published',
        `release ${publishedId} is shown as published`);

      await row.locator(tid('sign-key')).selectOption(String(expect.server_key));
      await row.locator(tid('sign-button')).click();
      await eventually(`release ${draftId} to show 2 / ${threshold} signatures`, async () => {
        assert.ok((await text(releaseRow(draftId).locator(tid('sig-progress')))).includes(`2 / ${threshold}`));
      });
      await eventually('the signer list to name the server key', async () => {
        assert.ok((await text(releaseRow(draftId).locator(tid('sig-signers')))).includes(String(expect.server_key)));
      });
      await eventually('Publish to become enabled', async () => {
        assert.equal(await releaseRow(draftId).locator(tid('publish-button')).isEnabled(), true);
      });
      assert.equal(await page.locator(tid('error')).isVisible(), false, 'no error after signing');

      await releaseRow(draftId).locator(tid('publish-button')).click();
      await eventually(`release ${draftId} to be published`, async () => {
        assert.equal(await text(releaseRow(draftId).locator(tid('release-status'))), 'published');
      });
      assert.equal(await page.locator(tid('error')).isVisible(), false, 'no error after publishing');
      assert.equal(await releaseRow(draftId).locator(tid('publish-button')).count(), 0,
        'a published release offers no Publish button');
    });

    await step('rollouts list the published releases with a percentage', async () => {
      await open('rollouts');
      for (const id of [publishedId, draftId]) {
        const row = page.locator(`${tid('rollout-row')}[data-release-id="${id}"]`);
        await row.waitFor({ state: 'visible' });
        assert.match(await text(row.locator(tid('rollout-percent'))), /^(100|[1-9][0-9]?)%$/,
          `rollout percentage of release ${id}`);
        assert.equal(await text(row.locator(tid('rollout-status'))), 'published', `rollout status of release ${id}`);
      }
    });

    await step('queries show a numeric total', async () => {
      await open('queries');
      const total = page.locator(tid('query-total'));
      await total.waitFor({ state: 'visible' });
      assert.match(await text(total), /^\d+$/, 'the query total is a number');
    });

    await step('health shows status ok', async () => {
      await open('health');
      const status = page.locator(tid('health-status'));
      await status.waitFor({ state: 'visible' });
      assert.equal(await text(status), 'ok', 'health status');
      assert.match(await text(page.locator(tid('health-node-id'))), /\S/, 'the node id is shown');
      assert.ok(await page.locator(`${tid('root-key-row')}[data-key-name="${expect.server_key}"]`).isVisible(),
        'the server key is listed among the root keys');
    });

    await step('audit log records the signature', async () => {
      await open('audit');
      await page.locator(tid('audit-row')).first().waitFor({ state: 'visible' });
      const actions = await page.locator(`${tid('audit-row')} ${tid('audit-action')}`).allTextContents();
      assert.ok(actions.some((a) => a.includes('release.sign')),
        `an audit row with release.sign, got: ${JSON.stringify(actions.slice(0, 20))}`);
    });

    await step('sign out; a stale token returns to the sign-in form', async () => {
      await page.locator(tid('signout')).click();
      await signinForm.waitFor({ state: 'visible' });
      assert.equal(await app.isVisible(), false, 'sign-out hides the dashboard');
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 0,
        'sign-out forgets the token');
      // A token that stops working (revoked, server restarted) sends the
      // operator back to the sign-in form with a message.
      await page.evaluate(() => sessionStorage.setItem('meshara-authority.token', 'revoked-token'));
      await page.reload({ waitUntil: 'domcontentloaded' });
      await signinError.waitFor({ state: 'visible' });
      assert.match(await text(signinError), /sign in again/i, 'a rejected stored token explains itself');
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 0,
        'a rejected stored token is forgotten');
    });

    await step('viewer sees releases without Sign or Publish buttons', async () => {
      await signIn(cfg.viewer, 'viewer');
      await open('releases');
      await releaseRow(draftId).waitFor({ state: 'visible' });
      await releaseRow(publishedId).waitFor({ state: 'visible' });
      for (const control of ['sign-button', 'sign-key', 'publish-button', 'schedule-button', 'rollback-button']) {
        assert.equal(await page.locator(tid(control)).count(), 0, `a viewer must not see ${control}`);
      }
      await open('packages');
      assert.equal(await page.locator(tid('upload-form')).count(), 0, 'a viewer must not see the upload form');
    });

    await step('no page errors', async () => {
      assert.deepEqual(pageErrors, [], 'uncaught page errors');
      assert.deepEqual(consoleErrors, [], 'console errors');
    });
  } catch (err) {
    if (page && cfg.artifacts) {
      try {
        mkdirSync(cfg.artifacts, { recursive: true });
        await page.screenshot({ path: join(cfg.artifacts, 'dashboard-failure.png'), fullPage: true, timeout: 5_000 });
        writeFileSync(join(cfg.artifacts, 'dashboard-failure.html'), await page.content());
        console.error(`artifacts written to ${cfg.artifacts}`);
      } catch (artifactErr) {
        console.error(`could not write failure artifacts: ${artifactErr.message}`);
      }
    }
    if (page) {
      try {
        console.error(`page URL: ${page.url()}`);
        const shown = page.locator(tid('error'));
        if (await shown.isVisible()) console.error(`dashboard error message: ${await text(shown)}`);
      } catch (_) { /* best effort */ }
    }
    if (pageErrors.length) console.error(`page errors: ${JSON.stringify(pageErrors)}`);
    if (consoleErrors.length) console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
    throw err;
  } finally {
    clearTimeout(watchdog);
    if (browser) await Promise.race([browser.close(), sleep(5_000)]);
  }
}

try {
  await main();
  console.log(`${results.length} passed, 0 failed`);
} catch (err) {
  console.error(`FAIL: ${err && err.message ? err.message : err}`);
  console.log(`${results.filter((r) => r.ok).length} passed, 1 failed`);
  process.exitCode = 1;
}
