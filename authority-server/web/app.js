// Meshara Authority dashboard: plain ES2020, no framework, no build step.
// Every piece of server data is rendered with textContent / attributes,
// never parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'meshara-authority.token';
  const API = '/api/v1';
  const ROUTES = ['packages', 'releases', 'rollouts', 'queries', 'health', 'audit'];
  const DEFAULT_ROUTE = 'packages';
  const PERMISSIONS = {
    upload: ['admin', 'publisher'],
    publish: ['admin', 'publisher'],
    rollout: ['admin', 'publisher'],
    rollback: ['admin', 'publisher'],
    sign: ['admin', 'signer'],
  };

  const state = {
    token: null,
    me: null,
    renderSeq: 0,
    page: null,
  };

  // ---------------------------------------------------------------- DOM helpers

  const $ = (id) => document.getElementById(id);

  /**
   * el('tag', {attrs}, ...children). Strings become text nodes; `null`,
   * `undefined` and `false` children are skipped. Attribute keys:
   * `class`, `testid` (data-testid), `dataset` (object), `on<event>`
   * (listener), boolean properties (`disabled`, `hidden`, `required`),
   * anything else via setAttribute.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'testid') node.dataset.testid = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
      else if (key === 'disabled' || key === 'hidden' || key === 'required' || key === 'selected') node[key] = Boolean(value);
      else if (key === 'value') node.value = String(value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let idCounter = 0;
  const uid = (prefix) => `${prefix}-${++idCounter}`;

  // ---------------------------------------------------------------- formatting

  function fmtTime(secs) {
    if (secs === null || secs === undefined || !Number.isFinite(Number(secs))) {
      return el('span', { class: 'muted' }, '—');
    }
    const date = new Date(Number(secs) * 1000);
    const iso = date.toISOString();
    const text = date.toLocaleString(undefined, {
      year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
    });
    return el('time', { datetime: iso, title: iso }, text);
  }

  function fmtSize(bytes) {
    const n = Number(bytes);
    if (!Number.isFinite(n) || n < 0) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
  }

  function fmtDuration(secs) {
    let s = Math.max(0, Math.floor(Number(secs) || 0));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const parts = [];
    if (d) parts.push(`${d}d`);
    if (d || h) parts.push(`${h}h`);
    if (d || h || m) parts.push(`${m}m`);
    parts.push(`${s}s`);
    return parts.join(' ');
  }

  function shortText(value, length = 12) {
    const text = String(value ?? '');
    return text.length > length ? `${text.slice(0, length)}…` : text;
  }

  /** A monospace, truncated identifier with the full value in its tooltip. */
  function mono(value, length = 12, testid) {
    if (value === null || value === undefined || value === '') return el('span', { class: 'muted' }, '—');
    return el('code', { class: 'mono', title: String(value), testid }, shortText(value, length));
  }

  function percentOf(release) {
    const p = release.rollout_percent;
    return p === null || p === undefined ? 100 : Number(p);
  }

  function signatureCount(release) {
    return Array.isArray(release.signatures) ? release.signatures.length : 0;
  }

  function releaseTitle(release) {
    return `${release.package} / ${release.channel} ${release.semver}`;
  }

  function statusBadge(status, testid) {
    const known = ['draft', 'scheduled', 'published', 'revoked', 'ok'];
    const cls = known.includes(status) ? `badge badge-${status}` : 'badge';
    return el('span', { class: cls, testid }, String(status ?? 'unknown'));
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, { json, raw, contentType } = {}) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let body;
    if (raw !== undefined) {
      body = raw;
      headers['Content-Type'] = contentType || 'application/octet-stream';
    } else if (json !== undefined) {
      body = JSON.stringify(json);
      headers['Content-Type'] = 'application/json';
    }
    let response;
    try {
      response = await fetch(API + path, { method, headers, body, cache: 'no-store', credentials: 'same-origin' });
    } catch (err) {
      throw new ApiError(0, 'network', `Could not reach the server (${err.message}).`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = undefined;
      }
    }
    if (!response.ok) {
      const e = data && typeof data === 'object' ? data.error : null;
      const code = e && typeof e.code === 'string' ? e.code : `http_${response.status}`;
      const message = e && typeof e.message === 'string' && e.message
        ? e.message
        : (response.statusText || 'Request failed');
      throw new ApiError(response.status, code, message);
    }
    if (data === undefined) {
      throw new ApiError(response.status, 'bad_response', 'The server sent a response that is not JSON.');
    }
    return data;
  }

  const can = (action) => Boolean(state.me && (PERMISSIONS[action] || []).includes(state.me.role));

  // ---------------------------------------------------------------- messages

  function describeError(err) {
    if (err instanceof ApiError) {
      const status = err.status ? ` (HTTP ${err.status})` : '';
      return `${err.code}: ${err.message}${status}`;
    }
    return `Unexpected error: ${err && err.message ? err.message : String(err)}`;
  }

  function showError(text) {
    $('error-text').textContent = text;
    $('error').hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error-text').textContent = '';
  }

  function showNotice(text) {
    const notice = $('notice');
    notice.textContent = text;
    notice.hidden = false;
  }

  function clearNotice() {
    $('notice').hidden = true;
    $('notice').textContent = '';
  }

  function clearMessages() {
    clearError();
    clearNotice();
  }

  /** Central error handling: a 401 ends the session, anything else is shown. */
  function handleError(err) {
    if (err instanceof ApiError && err.status === 401) {
      endSession('Your session is no longer valid (the server rejected the token). Please sign in again.');
      return;
    }
    console.warn('dashboard:', err); // eslint-disable-line no-console
    showError(describeError(err));
  }

  // ---------------------------------------------------------------- session

  function showSignin(message) {
    state.me = null;
    state.page = null;
    state.renderSeq += 1;
    $('app').hidden = true;
    $('session').hidden = true;
    $('view').replaceChildren();
    clearMessages();
    $('signin').hidden = false;
    const error = $('signin-error');
    error.textContent = message || '';
    error.hidden = !message;
    const input = $('signin-token');
    input.value = '';
    input.focus();
  }

  function endSession(message) {
    state.token = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage unavailable */ }
    showSignin(message);
  }

  function showApp() {
    $('signin').hidden = true;
    $('signin-error').hidden = true;
    $('app').hidden = false;
    $('session').hidden = false;
    $('whoami').replaceChildren(
      el('span', { class: 'whoami-name', testid: 'whoami-name' }, state.me.name),
      ' ',
      el('span', { class: 'badge badge-role', testid: 'whoami-role' }, state.me.role),
    );
  }

  async function signIn(token, { restored = false } = {}) {
    state.token = token;
    const submit = $('signin-submit');
    submit.disabled = true;
    try {
      const me = await api('GET', '/me');
      if (!me || typeof me.name !== 'string' || typeof me.role !== 'string') {
        throw new ApiError(200, 'bad_response', 'The server did not say who this token belongs to.');
      }
      state.me = me;
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage unavailable */ }
      showApp();
      if (!ROUTES.includes(currentRoute())) location.replace(`#/${DEFAULT_ROUTE}`);
      await render();
    } catch (err) {
      state.token = null;
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage unavailable */ }
      let message;
      if (err instanceof ApiError && err.status === 401) {
        message = restored
          ? 'Your session is no longer valid (the server rejected the token). Please sign in again.'
          : 'That token was not accepted. Check it and try again.';
      } else {
        message = `Could not sign in: ${describeError(err)}`;
      }
      showSignin(message);
    } finally {
      submit.disabled = false;
    }
  }

  // ---------------------------------------------------------------- routing

  function currentRoute() {
    const match = /^#\/([a-z]+)/.exec(location.hash || '');
    return match ? match[1] : '';
  }

  function updateNav(route) {
    for (const link of document.querySelectorAll('.tabs a[data-route]')) {
      if (link.dataset.route === route) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
  }

  async function render({ keepMessages = false } = {}) {
    if (!state.me) return;
    let route = currentRoute();
    if (!ROUTES.includes(route)) {
      location.replace(`#/${DEFAULT_ROUTE}`);
      route = DEFAULT_ROUTE;
    }
    updateNav(route);
    const view = $('view');
    const seq = ++state.renderSeq;
    if (state.page !== route) {
      if (!keepMessages) clearMessages();
      view.replaceChildren(el('p', { class: 'muted loading', testid: 'loading' }, 'Loading…'));
      view.dataset.page = route;
      state.page = route;
    }
    view.setAttribute('aria-busy', 'true');
    try {
      const content = await PAGES[route]();
      if (seq !== state.renderSeq) return;
      view.replaceChildren(content);
    } catch (err) {
      if (seq !== state.renderSeq) return;
      handleError(err);
      if (state.me) {
        view.replaceChildren(el('p', { class: 'muted', testid: 'load-failed' }, 'This page could not be loaded.'));
      }
    } finally {
      if (seq === state.renderSeq) view.removeAttribute('aria-busy');
    }
  }

  /**
   * Run a user action: disable its control, call the server, show the
   * outcome, then reload the current page so what is shown is what the
   * server has.
   */
  async function runAction(control, work) {
    clearMessages();
    if (control) {
      control.disabled = true;
      control.setAttribute('aria-busy', 'true');
    }
    let success = null;
    try {
      success = await work();
    } catch (err) {
      handleError(err);
      if (!state.me) return;
    }
    if (control) control.removeAttribute('aria-busy');
    await render({ keepMessages: true });
    if (success) showNotice(success);
  }

  // ---------------------------------------------------------------- building blocks

  function pageSection(title, testid, ...children) {
    const headingId = uid('h');
    return el('section', { class: 'page', testid, 'aria-labelledby': headingId },
      el('h1', { id: headingId, class: 'page-title' }, title),
      children);
  }

  function subSection(title, ...children) {
    const headingId = uid('h');
    return el('section', { class: 'subsection', 'aria-labelledby': headingId },
      el('h2', { id: headingId }, title),
      children);
  }

  /** A table with a caption (visually hidden when `hideCaption`), headers and rows. */
  function table({ caption, headers, rows, empty, testid, hideCaption = true }) {
    if (!rows.length) return el('p', { class: 'empty muted', testid: testid ? `${testid}-empty` : undefined }, empty);
    return el('div', { class: 'table-wrap' },
      el('table', { testid },
        el('caption', { class: hideCaption ? 'visually-hidden' : undefined }, caption),
        el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rows)));
  }

  function dl(items, cls = 'facts') {
    return el('dl', { class: cls },
      items.map(([term, value, testid]) => el('div', { class: 'fact' },
        el('dt', {}, term),
        el('dd', { testid }, value))));
  }

  // ---------------------------------------------------------------- pages

  async function pagePackages() {
    const packages = await api('GET', '/packages');
    const list = Array.isArray(packages) ? [...packages] : [];
    list.sort((a, b) => (b.uploaded_at || 0) - (a.uploaded_at || 0));
    const rows = list.map((p) => el('tr', { testid: 'package-row', dataset: { hash: p.hash } },
      el('td', { testid: 'package-name' }, p.name),
      el('td', {}, mono(p.hash, 12, 'package-hash')),
      el('td', { class: 'num', testid: 'package-size', title: `${p.size} bytes` }, fmtSize(p.size)),
      el('td', { testid: 'package-uploaded-at' }, fmtTime(p.uploaded_at)),
      el('td', { testid: 'package-uploaded-by' }, p.uploaded_by)));
    return pageSection('Packages', 'page-packages',
      can('upload') ? uploadForm() : null,
      table({
        caption: 'Uploaded packages',
        headers: ['Name', 'Hash', 'Size', 'Uploaded', 'By'],
        rows,
        empty: 'No packages uploaded yet.',
        testid: 'packages-table',
      }));
  }

  function uploadForm() {
    const fileId = uid('upload-file');
    const nameId = uid('upload-name');
    const file = el('input', { type: 'file', id: fileId, testid: 'upload-file', required: true });
    const name = el('input', {
      type: 'text', id: nameId, testid: 'upload-name', placeholder: 'defaults to the file name',
      autocomplete: 'off', spellcheck: 'false',
    });
    const submit = el('button', { type: 'submit', class: 'btn btn-primary', testid: 'upload-submit' }, 'Upload');
    file.addEventListener('change', () => {
      if (file.files && file.files[0] && !name.value) name.placeholder = file.files[0].name;
    });
    const form = el('form', { class: 'card inline-form', testid: 'upload-form', 'aria-label': 'Upload a package' },
      el('div', { class: 'field' }, el('label', { for: fileId }, 'Package file'), file),
      el('div', { class: 'field' }, el('label', { for: nameId }, 'Name (optional)'), name),
      submit);
    const uploadLabel = (raw) => {
      const label = raw.replace(/[^A-Za-z0-9._+~-]/g, '_').replace(/^[^A-Za-z0-9]+/, '').slice(0, 255);
      return label || 'package';
    };
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const chosen = file.files && file.files[0];
      if (!chosen) {
        showError('Choose a file to upload first.');
        return;
      }
      // A typed name goes as typed (the server explains a refusal); a file's own name is
      // fitted to the upload-name character set: letters, digits, . _ - + ~, first a letter or digit.
      const fileName = name.value.trim() || uploadLabel(chosen.name);
      runAction(submit, async () => {
        const result = await api('PUT', `/packages?name=${encodeURIComponent(fileName)}`, { raw: chosen });
        return `Uploaded ${fileName} (${shortText(result && result.hash, 12)}, ${fmtSize(result && result.size)}).`;
      });
    });
    return form;
  }

  async function pageReleases() {
    const wantKeys = can('sign');
    const [releases, health] = await Promise.all([
      api('GET', '/releases'),
      wantKeys ? api('GET', '/health').catch((err) => {
        if (err instanceof ApiError && err.status === 401) throw err;
        showError(`Could not load the server-held keys: ${describeError(err)}`);
        return null;
      }) : Promise.resolve(null),
    ]);
    const keys = serverKeys(health);
    const list = Array.isArray(releases) ? [...releases] : [];
    list.sort((a, b) => b.id - a.id);
    const cards = list.map((r) => el('li', {}, releaseCard(r, keys)));
    return pageSection('Releases', 'page-releases',
      el('p', { class: 'muted' },
        'A release can be published once enough distinct keys have signed it.'),
      cards.length
        ? el('ol', { class: 'cards', testid: 'release-list' }, cards)
        : el('p', { class: 'empty muted', testid: 'release-list-empty' }, 'No releases yet.'));
  }

  function serverKeys(health) {
    const keys = health && health.root && Array.isArray(health.root.keys) ? health.root.keys : [];
    return keys.filter((k) => k && k.server_held
      && (!Array.isArray(k.roles) || k.roles.includes('release')));
  }

  function releaseCard(r, serverHeld) {
    const headingId = uid('release');
    const count = signatureCount(r);
    const threshold = Number(r.threshold) || 0;
    const enough = count >= threshold;
    const signatures = Array.isArray(r.signatures) ? r.signatures : [];

    const progress = el('div', { class: 'sig-progress', testid: 'sig-progress' },
      el('progress', {
        max: String(Math.max(threshold, 1)),
        value: String(Math.min(count, Math.max(threshold, 1))),
        'aria-label': `Signatures for release ${r.id}`,
      }),
      el('span', { class: 'sig-count', testid: 'sig-count' }, `${count} / ${threshold} signatures`));

    const signers = signatures.length
      ? el('ul', { class: 'signers', testid: 'sig-signers', 'aria-label': 'Signed by' },
        signatures.map((s) => el('li', { testid: 'sig-signer', title: s.key || '' },
          s.name ? s.name : shortText(s.key, 12))))
      : el('p', { class: 'muted small', testid: 'sig-signers' }, 'No signatures yet.');

    const facts = dl([
      ['Sequence', String(r.sequence), 'release-sequence'],
      ['Content', mono(r.content_hash, 12, 'release-hash'), null],
      ['Size', fmtSize(r.size), null],
      ['Rollout', `${percentOf(r)}%`, 'release-rollout'],
      ['Created', el('span', {}, fmtTime(r.created_at), ` by ${r.created_by ?? '—'}`), null],
      ['Publish at', fmtTime(r.publish_at), 'release-publish-at'],
      ['Published', fmtTime(r.published_at), 'release-published-at'],
      ['Expires', fmtTime(r.expires_at), null],
    ]);

    return el('article', {
      class: `card release release-${r.status}`,
      testid: 'release-row',
      dataset: { releaseId: String(r.id), status: String(r.status) },
      'aria-labelledby': headingId,
    },
    el('header', { class: 'release-head' },
      el('h2', { id: headingId, class: 'release-title' },
        el('span', { class: 'muted' }, `#${r.id} `),
        releaseTitle(r)),
      statusBadge(r.status, 'release-status')),
    el('div', { class: 'signatures' }, progress, signers),
    facts,
    releaseActions(r, serverHeld, enough, threshold - count));
  }

  function releaseActions(r, serverHeld, enough, missing) {
    const parts = [];
    const isDraft = r.status === 'draft';

    if (isDraft && can('sign')) {
      const signedKeys = new Set((r.signatures || []).flatMap((s) => [s.key, s.name]).filter(Boolean));
      const available = serverHeld.filter((k) => !signedKeys.has(k.name) && !signedKeys.has(k.key));
      const selectId = uid('sign-key');
      const select = el('select', { id: selectId, testid: 'sign-key', disabled: !available.length },
        available.length
          ? available.map((k) => el('option', { value: k.name }, k.name))
          : el('option', { value: '' }, 'no unused server-held key'));
      const button = el('button', {
        type: 'button', class: 'btn', testid: 'sign-button', disabled: !available.length,
      }, 'Sign');
      button.addEventListener('click', () => {
        const key = select.value;
        if (!key) return;
        runAction(button, async () => {
          await api('POST', `/releases/${r.id}/sign`, { json: { key } });
          return `Signed release #${r.id} with ${key}.`;
        });
      });
      parts.push(el('div', { class: 'action' },
        el('label', { for: selectId }, 'Key'), select, button));
    }

    if (isDraft && can('publish')) {
      const hintId = uid('publish-hint');
      const hint = enough
        ? null
        : el('p', { id: hintId, class: 'muted small', testid: 'publish-hint' },
          `Needs ${missing} more signature${missing === 1 ? '' : 's'} before it can be published.`);
      const publish = el('button', {
        type: 'button', class: 'btn btn-primary', testid: 'publish-button', disabled: !enough,
        'aria-describedby': enough ? undefined : hintId,
      }, 'Publish now');
      publish.addEventListener('click', () => runAction(publish, async () => {
        await api('POST', `/releases/${r.id}/publish`, { json: {} });
        return `Published release #${r.id}.`;
      }));

      const atId = uid('schedule-at');
      const at = el('input', {
        type: 'datetime-local', id: atId, testid: 'schedule-at', disabled: !enough,
        min: toLocalInput(new Date()),
      });
      const schedule = el('button', {
        type: 'button', class: 'btn', testid: 'schedule-button', disabled: !enough,
        'aria-describedby': enough ? undefined : hintId,
      }, 'Schedule');
      schedule.addEventListener('click', () => {
        const when = at.value ? new Date(at.value) : null;
        if (!when || Number.isNaN(when.getTime())) {
          clearNotice();
          showError('Choose a date and time to schedule the release.');
          at.focus();
          return;
        }
        const secs = Math.floor(when.getTime() / 1000);
        runAction(schedule, async () => {
          await api('POST', `/releases/${r.id}/publish`, { json: { at: secs } });
          return `Release #${r.id} scheduled for ${when.toLocaleString()}.`;
        });
      });
      parts.push(el('div', { class: 'action' }, publish));
      parts.push(el('div', { class: 'action' },
        el('label', { for: atId }, 'At'), at, schedule));
      if (hint) parts.push(hint);
    }

    if ((r.status === 'published' || r.status === 'revoked') && can('rollback')) {
      const rollback = el('button', {
        type: 'button', class: 'btn', testid: 'rollback-button',
        title: 'Create a new draft release that restores this release\'s content',
      }, 'Roll back to this');
      rollback.addEventListener('click', () => runAction(rollback, async () => {
        const created = await api('POST', `/releases/${r.id}/rollback`);
        const id = created && created.id !== undefined ? ` #${created.id}` : '';
        return `Created draft release${id} restoring the content of release #${r.id}; it needs signatures before it can be published.`;
      }));
      parts.push(el('div', { class: 'action' }, rollback));
    }

    if (!parts.length) return null;
    return el('div', { class: 'actions', testid: 'release-actions', role: 'group', 'aria-label': `Actions for release ${r.id}` }, parts);
  }

  function toLocalInput(date) {
    const pad = (n) => String(n).padStart(2, '0');
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function rolloutBar(percent) {
    return el('span', { class: 'rollout' },
      el('progress', { max: '100', value: String(percent), 'aria-hidden': 'true' }),
      el('span', { testid: 'rollout-percent' }, `${percent}%`));
  }

  async function pageRollouts() {
    const releases = await api('GET', '/releases');
    const list = Array.isArray(releases) ? [...releases] : [];
    list.sort((a, b) => b.id - a.id);
    const live = list.filter((r) => r.status === 'published' || r.status === 'scheduled');
    const drafts = list.filter((r) => r.status === 'draft');

    const liveRows = live.map((r) => el('tr', {
      testid: 'rollout-row', dataset: { releaseId: String(r.id), status: String(r.status) },
    },
    el('td', {}, `#${r.id}`),
    el('td', {}, `${r.package} / ${r.channel}`),
    el('td', {}, r.semver),
    el('td', { class: 'num' }, String(r.sequence)),
    el('td', {}, statusBadge(r.status, 'rollout-status')),
    el('td', {}, rolloutBar(percentOf(r))),
    el('td', { testid: 'rollout-time' },
      r.status === 'scheduled' ? fmtTime(r.publish_at) : fmtTime(r.published_at ?? r.publish_at))));

    const editable = can('rollout');
    const draftRows = drafts.map((r) => {
      const cells = [
        el('td', {}, `#${r.id}`),
        el('td', {}, `${r.package} / ${r.channel}`),
        el('td', {}, r.semver),
        el('td', {}, rolloutBar(percentOf(r))),
      ];
      if (editable) cells.push(el('td', {}, rolloutForm(r)));
      return el('tr', { testid: 'rollout-draft-row', dataset: { releaseId: String(r.id) } }, cells);
    });

    return pageSection('Rollouts', 'page-rollouts',
      subSection('Published and scheduled',
        table({
          caption: 'Published and scheduled releases',
          headers: ['Release', 'Package / channel', 'Version', 'Sequence', 'Status', 'Rollout', 'Publish time'],
          rows: liveRows,
          empty: 'Nothing is published or scheduled yet.',
          testid: 'rollouts-table',
        })),
      subSection('Drafts',
        el('p', { class: 'muted' }, 'The staged rollout percentage of a draft takes effect when it is published.'),
        table({
          caption: 'Draft releases',
          headers: ['Release', 'Package / channel', 'Version', 'Rollout', ...(editable ? ['Change'] : [])],
          rows: draftRows,
          empty: 'No draft releases.',
          testid: 'rollout-drafts-table',
        })));
  }

  function rolloutForm(r) {
    const inputId = uid('rollout');
    const input = el('input', {
      type: 'number', id: inputId, min: '1', max: '100', step: '1', required: true,
      value: String(percentOf(r)), testid: 'rollout-input', inputmode: 'numeric',
    });
    const submit = el('button', { type: 'submit', class: 'btn', testid: 'rollout-submit' }, 'Set');
    const form = el('form', { class: 'inline', testid: 'rollout-form', dataset: { releaseId: String(r.id) } },
      el('label', { for: inputId, class: 'visually-hidden' }, `Rollout percentage for release ${r.id}`),
      input, el('span', { 'aria-hidden': 'true' }, '%'), submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const percent = Number(input.value);
      if (!Number.isInteger(percent) || percent < 1 || percent > 100) {
        clearNotice();
        showError('The rollout percentage must be a whole number from 1 to 100.');
        input.focus();
        return;
      }
      runAction(submit, async () => {
        await api('POST', `/releases/${r.id}/rollout`, { json: { percent } });
        return `Release #${r.id} will roll out to ${percent}% of installations.`;
      });
    });
    return form;
  }

  async function pageQueries() {
    const q = await api('GET', '/queries');
    const byChannel = Array.isArray(q && q.by_channel) ? q.by_channel : [];
    const recent = Array.isArray(q && q.recent) ? q.recent : [];
    return pageSection('Queries', 'page-queries',
      el('div', { class: 'stats' },
        el('div', { class: 'card stat' },
          el('span', { class: 'stat-label', id: 'query-total-label' }, 'Update checks served'),
          el('span', { class: 'stat-value', testid: 'query-total', 'aria-describedby': 'query-total-label' },
            String(Number(q && q.total) || 0))),
        el('div', { class: 'card stat' },
          el('span', { class: 'stat-label' }, 'Channels queried'),
          el('span', { class: 'stat-value', testid: 'query-channels' }, String(byChannel.length)))),
      subSection('By channel',
        table({
          caption: 'Queries by channel',
          headers: ['Package', 'Channel', 'Queries', 'Last query'],
          rows: byChannel.map((c) => el('tr', { testid: 'query-channel-row' },
            el('td', {}, c.package),
            el('td', {}, c.channel),
            el('td', { class: 'num', testid: 'query-channel-count' }, String(c.count)),
            el('td', {}, fmtTime(c.last_at)))),
          empty: 'No queries yet.',
          testid: 'query-channels-table',
        })),
      subSection('Recent',
        table({
          caption: 'Recent queries',
          headers: ['Time', 'Package', 'Channel', 'Via', 'Peer'],
          rows: recent.map((r) => el('tr', { testid: 'query-recent-row' },
            el('td', {}, fmtTime(r.at)),
            el('td', {}, r.package),
            el('td', {}, r.channel),
            el('td', {}, r.via),
            el('td', {}, mono(r.peer, 16)))),
          empty: 'No recent queries.',
          testid: 'query-recent-table',
        })));
  }

  async function pageHealth() {
    const h = await api('GET', '/health');
    const root = (h && h.root) || {};
    const keys = Array.isArray(root.keys) ? root.keys : [];
    return pageSection('Health', 'page-health',
      dl([
        ['Status', statusBadge(h.status, 'health-status'), null],
        ['Node ID', el('code', { class: 'mono wrap', testid: 'health-node-id' }, h.node_id ?? '—'), null],
        ['Peers', String(h.peers ?? '—'), 'health-peers'],
        ['Database', String(h.database ?? '—'), 'health-database'],
        ['Published releases', String(h.published ?? '—'), 'health-published'],
        ['Uptime', el('span', { title: `${h.uptime_secs} s` }, fmtDuration(h.uptime_secs)), 'health-uptime'],
      ], 'facts facts-grid card'),
      subSection('Root of trust',
        dl([
          ['Root sequence', String(root.sequence ?? '—'), 'root-sequence'],
          ['Root expires', fmtTime(root.expires_at), 'root-expires'],
          ['Root threshold', String(root.root_threshold ?? '—'), 'root-threshold'],
          ['Release threshold', String(root.release_threshold ?? '—'), 'release-threshold'],
        ], 'facts facts-grid card'),
        table({
          caption: 'Root keys',
          headers: ['Name', 'Public key', 'Roles', 'Held by this server'],
          rows: keys.map((k) => el('tr', { testid: 'root-key-row', dataset: { keyName: String(k.name) } },
            el('td', {}, k.name),
            el('td', {}, mono(k.key, 16)),
            el('td', {}, Array.isArray(k.roles) ? k.roles.join(', ') : '—'),
            el('td', { testid: 'root-key-server-held' }, k.server_held ? 'yes' : 'no'))),
          empty: 'No root keys.',
          testid: 'root-keys-table',
        })));
  }

  async function pageAudit() {
    const entries = await api('GET', '/audit');
    const list = Array.isArray(entries) ? entries : [];
    const filterId = uid('audit-filter');
    const filter = el('input', {
      type: 'search', id: filterId, testid: 'audit-filter', placeholder: 'actor, action or target',
      autocomplete: 'off', spellcheck: 'false',
    });
    const rows = list.map((e) => el('tr', {
      testid: 'audit-row',
      dataset: { auditId: String(e.id), search: `${e.actor} ${e.action} ${e.target} ${e.detail}`.toLowerCase() },
    },
    el('td', { testid: 'audit-at' }, fmtTime(e.at)),
    el('td', { testid: 'audit-actor' }, e.actor),
    el('td', { testid: 'audit-action' }, el('code', {}, e.action)),
    el('td', { testid: 'audit-target' }, e.target ?? ''),
    el('td', { testid: 'audit-detail', class: 'detail' }, e.detail ?? '')));
    filter.addEventListener('input', () => {
      const needle = filter.value.trim().toLowerCase();
      for (const row of rows) row.hidden = Boolean(needle) && !row.dataset.search.includes(needle);
    });
    return pageSection('Audit log', 'page-audit',
      list.length ? el('div', { class: 'field filter' }, el('label', { for: filterId }, 'Filter'), filter) : null,
      table({
        caption: 'Audit log, newest first',
        headers: ['Time', 'Actor', 'Action', 'Target', 'Detail'],
        rows,
        empty: 'The audit log is empty.',
        testid: 'audit-table',
      }));
  }

  const PAGES = {
    packages: pagePackages,
    releases: pageReleases,
    rollouts: pageRollouts,
    queries: pageQueries,
    health: pageHealth,
    audit: pageAudit,
  };

  // ---------------------------------------------------------------- wiring

  function init() {
    $('signin-form').addEventListener('submit', (event) => {
      event.preventDefault();
      let token = $('signin-token').value.trim();
      if (/^bearer\s+/i.test(token)) token = token.replace(/^bearer\s+/i, '').trim();
      if (!token) {
        const error = $('signin-error');
        error.textContent = 'Paste a token first.';
        error.hidden = false;
        $('signin-token').focus();
        return;
      }
      signIn(token);
    });
    $('signout').addEventListener('click', () => endSession(''));
    $('refresh').addEventListener('click', () => {
      clearMessages();
      render();
    });
    $('error-dismiss').addEventListener('click', clearError);
    window.addEventListener('hashchange', () => {
      if (state.me) render();
    });
    document.querySelector('.tabs').addEventListener('click', (event) => {
      const link = event.target.closest('a[data-route]');
      // Clicking the tab that is already open reloads it.
      if (link && link.dataset.route === currentRoute()) {
        event.preventDefault();
        clearMessages();
        render();
      }
    });

    let saved = null;
    try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (_) { /* storage unavailable */ }
    if (saved) signIn(saved, { restored: true });
    else showSignin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
