// #/nodes: the node list. Search (NodeId or fingerprint prefix, address, agent), filters,
// sortable columns and pages, all done by the server (GET /api/v1/nodes); the query lives in
// the URL (#/nodes?q=…&state=up&page=2) so a view can be linked and survives a reload.
// Live `node` events update rows in place and put new nodes at the top of the first page.

import { get, query, describeError } from '../api.js';
import {
  el, uid, fmtInt, fmtPercent, fmtMs, fmtAgo, shortId, stateBadge, badgeList, debounce,
  CAPABILITIES, TRANSPORTS, capabilityLabel, transportLabel, compareVersions,
} from '../util.js';

const DEFAULTS = { q: '', state: 'all', capability: '', transport: '', version: '', sort: 'last_seen', order: 'desc', page: '1', per_page: '50' };
const SORTS = ['last_seen', 'first_seen', 'id', 'rtt', 'version', 'uptime'];
const PER_PAGE = ['25', '50', '100', '200'];

const COLUMNS = [
  { key: 'id', label: 'Node', sort: 'id' },
  { key: 'state', label: 'State' },
  { key: 'version', label: 'Version', sort: 'version' },
  { key: 'capabilities', label: 'Capabilities' },
  { key: 'transports', label: 'Transports' },
  { key: 'rtt', label: 'RTT', sort: 'rtt', num: true },
  { key: 'uptime', label: 'Uptime 24 h', sort: 'uptime', num: true },
  { key: 'neighbours', label: 'Links', num: true },
  { key: 'last_seen', label: 'Last seen', sort: 'last_seen' },
  { key: 'first_seen', label: 'First seen', sort: 'first_seen' },
];

function readParams(params) {
  const s = { ...DEFAULTS };
  for (const key of Object.keys(DEFAULTS)) {
    const v = params.get(key);
    if (v !== null) s[key] = v;
  }
  if (!['all', 'up', 'down'].includes(s.state)) s.state = 'all';
  if (!SORTS.includes(s.sort)) s.sort = DEFAULTS.sort;
  if (!['asc', 'desc'].includes(s.order)) s.order = 'desc';
  if (!/^[1-9]\d{0,6}$/.test(s.page)) s.page = '1';
  if (!PER_PAGE.includes(s.per_page)) s.per_page = DEFAULTS.per_page;
  return s;
}

function toParams(s) {
  const p = new URLSearchParams();
  for (const [key, value] of Object.entries(s)) {
    if (value !== '' && value !== DEFAULTS[key]) p.set(key, value);
  }
  return p;
}

function apiQuery(s) {
  return query({
    q: s.q.trim(),
    state: s.state,
    capability: s.capability,
    transport: s.transport,
    version: s.version || undefined,
    sort: s.sort,
    order: s.order,
    page: s.page,
    per_page: s.per_page,
  });
}

/** Whether a node (from a live event) belongs in the list as currently filtered. */
function matches(node, s) {
  if (s.state === 'up' && !node.up) return false;
  if (s.state === 'down' && node.up) return false;
  if (s.capability && !(node.capabilities || []).includes(s.capability)) return false;
  if (s.transport && !(node.transports || []).includes(s.transport)) return false;
  if (s.version && (s.version === 'unknown' ? node.version : node.version !== s.version)) return false;
  const q = s.q.trim().toLowerCase();
  if (q) {
    const hay = [node.id, node.fingerprint, node.agent, ...(node.addresses || []).map((a) => `${a.host}:${a.port}`)]
      .filter(Boolean).map((x) => String(x).toLowerCase());
    const prefixOk = String(node.id).startsWith(q) || String(node.fingerprint || '').startsWith(q);
    if (!prefixOk && !hay.some((h) => h.includes(q))) return false;
  }
  return true;
}

function nodeRow(n, { fresh = false } = {}) {
  return el('tr', { testid: 'node-row', class: fresh ? 'row-fresh' : undefined, dataset: { nodeId: n.id, state: n.up ? 'up' : 'down' } },
    el('th', { scope: 'row' }, el('div', { class: 'node-cell' },
      el('a', { href: `#/node/${encodeURIComponent(n.id)}`, class: 'mono node-link', testid: 'node-link', title: n.id }, shortId(n.id, 16)),
      el('span', { class: 'mono muted small fingerprint', testid: 'node-fingerprint' }, n.fingerprint || ''))),
    el('td', {}, stateBadge(n.up)),
    el('td', { testid: 'node-version' }, n.version ? n.version : el('span', { class: 'muted', title: n.agent || '' }, 'unknown')),
    el('td', {}, badgeList(n.capabilities, 'Capabilities', 'badge-cap')),
    el('td', {}, badgeList(n.transports, 'Transports', 'badge-transport')),
    el('td', { class: 'num' }, fmtMs(n.rtt_ms)),
    el('td', { class: 'num' }, fmtPercent(n.uptime_24h, 0)),
    el('td', { class: 'num' }, fmtInt(n.neighbour_count)),
    el('td', {}, fmtAgo(n.last_seen)),
    el('td', {}, fmtAgo(n.first_seen)));
}

export async function renderNodes(ctx) {
  let s = readParams(ctx.params);
  let data = null;
  let loadSeq = 0;
  let pendingLive = 0;
  const overview = await ctx.app.ensureOverview(60_000).catch(() => null);

  // ---------------------------------------------------------------- controls
  const searchId = uid('q');
  const search = el('input', {
    type: 'search', id: searchId, testid: 'nodes-search', value: s.q, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'NodeId or fingerprint prefix, address, agent', 'aria-describedby': 'nodes-search-hint',
  });
  const select = (label, testid, key, options) => {
    const id = uid(key);
    const control = el('select', { id, testid },
      options.map(([value, text]) => el('option', { value, selected: value === s[key] }, text)));
    control.addEventListener('change', () => setState({ [key]: control.value, page: '1' }));
    return { control, field: el('div', { class: 'field' }, el('label', { for: id }, label), control) };
  };
  const stateSel = select('State', 'nodes-state', 'state', [['all', 'All'], ['up', 'Up'], ['down', 'Down']]);
  const capSel = select('Capability', 'nodes-capability', 'capability', [['', 'Any'], ...CAPABILITIES.map((c) => [c, capabilityLabel(c)])]);
  const transSel = select('Transport', 'nodes-transport', 'transport', [['', 'Any'], ...TRANSPORTS.map((t) => [t, transportLabel(t)])]);
  const versions = (overview && Array.isArray(overview.by_version) ? overview.by_version : [])
    .map((v) => v.version ?? 'unknown').sort((a, b) => compareVersions(b, a));
  if (s.version && !versions.includes(s.version)) versions.unshift(s.version);
  const versionSel = select('Version', 'nodes-version', 'version', [['', 'Any'], ...versions.map((v) => [v, v])]);
  const perSel = select('Per page', 'nodes-per-page', 'per_page', PER_PAGE.map((p) => [p, p]));

  const form = el('form', { class: 'card toolbar', role: 'search', testid: 'nodes-form', 'aria-label': 'Search and filter nodes' },
    el('div', { class: 'field field-grow' },
      el('label', { for: searchId }, 'Search'),
      search,
      el('span', { id: 'nodes-search-hint', class: 'visually-hidden' }, 'Results update as you type.')),
    stateSel.field, capSel.field, transSel.field, versionSel.field, perSel.field,
    el('button', { type: 'submit', class: 'btn btn-primary', testid: 'nodes-submit' }, 'Search'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    typing.cancel();
    setState({ q: search.value, page: '1' });
  });
  const typing = debounce(() => setState({ q: search.value, page: '1' }), 300);
  search.addEventListener('input', typing);

  // ---------------------------------------------------------------- results
  const summary = el('p', { class: 'results-summary', testid: 'nodes-total', role: 'status' });
  const liveBanner = el('div', { class: 'banner banner-live', testid: 'nodes-live-banner', hidden: true },
    el('span', { testid: 'nodes-live-count' }),
    el('button', { type: 'button', class: 'btn btn-small', testid: 'nodes-live-refresh', onclick: () => load() }, 'Refresh list'));
  const tbody = el('tbody', { testid: 'nodes-body' });
  const headRow = el('tr', {});
  const table = el('div', { class: 'table-wrap' },
    el('table', { class: 'nodes-table', testid: 'nodes-table' },
      el('caption', { class: 'visually-hidden' }, 'Listed nodes. Column headers with buttons sort the list.'),
      el('thead', {}, headRow),
      tbody));
  const empty = el('p', { class: 'empty muted', testid: 'nodes-empty', hidden: true }, 'No node matches.');
  const prev = el('button', { type: 'button', class: 'btn', testid: 'nodes-prev' }, '← Previous');
  const next = el('button', { type: 'button', class: 'btn', testid: 'nodes-next' }, 'Next →');
  const pageLabel = el('span', { class: 'page-label', testid: 'nodes-page' });
  prev.addEventListener('click', () => setState({ page: String(Math.max(1, Number(s.page) - 1)) }));
  next.addEventListener('click', () => setState({ page: String(Number(s.page) + 1) }));
  const pager = el('nav', { class: 'pager', 'aria-label': 'Pages', testid: 'nodes-pager' }, prev, pageLabel, next);

  function renderHead() {
    headRow.replaceChildren(...COLUMNS.map((col) => {
      const th = el('th', { scope: 'col', class: col.num ? 'num' : undefined });
      if (!col.sort) {
        th.textContent = col.label;
        return th;
      }
      const active = s.sort === col.sort;
      if (active) th.setAttribute('aria-sort', s.order === 'asc' ? 'ascending' : 'descending');
      const button = el('button', {
        type: 'button', class: `sort${active ? ' sort-active' : ''}`, testid: `sort-${col.sort}`,
        dataset: { order: active ? s.order : '' },
      }, col.label, el('span', { class: 'sort-arrow', 'aria-hidden': 'true' }, active ? (s.order === 'asc' ? '▲' : '▼') : '↕'));
      button.addEventListener('click', () => {
        const order = active ? (s.order === 'asc' ? 'desc' : 'asc') : (col.sort === 'id' || col.sort === 'rtt' ? 'asc' : 'desc');
        setState({ sort: col.sort, order, page: '1' });
      });
      th.append(button);
      return th;
    }));
  }

  function renderResults() {
    const total = Number(data.total) || 0;
    const page = Number(data.page) || 1;
    const per = Number(data.per_page) || Number(s.per_page);
    const pages = Math.max(1, Math.ceil(total / per));
    const list = Array.isArray(data.nodes) ? data.nodes : [];
    tbody.replaceChildren(...list.map((n) => nodeRow(n)));
    empty.hidden = list.length > 0;
    table.hidden = list.length === 0;
    const from = total ? (page - 1) * per + 1 : 0;
    const to = (page - 1) * per + list.length;
    summary.textContent = total
      ? `Showing ${fmtInt(from)}–${fmtInt(to)} of ${fmtInt(total)} node${total === 1 ? '' : 's'}`
      : 'No nodes match these filters.';
    summary.dataset.total = String(total);
    pageLabel.textContent = `Page ${fmtInt(page)} of ${fmtInt(pages)}`;
    prev.disabled = page <= 1;
    next.disabled = page >= pages;
    pager.hidden = pages <= 1;
    pendingLive = 0;
    liveBanner.hidden = true;
  }

  async function load() {
    const seq = ++loadSeq;
    element.setAttribute('aria-busy', 'true');
    try {
      const result = await get(`/nodes${apiQuery(s)}`);
      if (seq !== loadSeq) return;
      data = result;
      ctx.app.clearError();
      renderResults();
    } catch (err) {
      if (seq !== loadSeq) return;
      ctx.app.showError(`Could not load nodes: ${describeError(err)}`);
    } finally {
      if (seq === loadSeq) element.removeAttribute('aria-busy');
    }
  }

  function setState(change, { push = true } = {}) {
    s = { ...s, ...change };
    if (push) ctx.app.replaceParams(toParams(s));
    renderHead();
    load();
  }

  const element = el('section', { class: 'page', testid: 'page-nodes', 'aria-labelledby': 'nodes-title' },
    el('div', { class: 'page-head' }, el('h1', { id: 'nodes-title', class: 'page-title' }, 'Nodes')),
    form, liveBanner, summary, table, empty, pager);

  renderHead();
  const first = await get(`/nodes${apiQuery(s)}`);
  data = first;
  renderResults();

  function onLiveNode(node) {
    if (!data) return;
    const rows = tbody.querySelectorAll('tr[data-testid="node-row"]');
    for (const row of rows) {
      if (row.dataset.nodeId === node.id) {
        const fresh = nodeRow(node, { fresh: true });
        row.replaceWith(fresh);
        const i = data.nodes.findIndex((n) => n.id === node.id);
        if (i >= 0) data.nodes[i] = node;
        return;
      }
    }
    if (!matches(node, s)) return;
    const newestFirst = s.sort === 'last_seen' && s.order === 'desc' && s.page === '1';
    if (newestFirst) {
      tbody.prepend(nodeRow(node, { fresh: true }));
      data.nodes.unshift(node);
      data.total = (Number(data.total) || 0) + 1;
      const per = Number(s.per_page);
      while (tbody.children.length > per) tbody.lastElementChild.remove();
      if (data.nodes.length > per) data.nodes.length = per;
      table.hidden = false;
      empty.hidden = true;
      summary.textContent = `Showing 1–${fmtInt(tbody.children.length)} of ${fmtInt(data.total)} node${data.total === 1 ? '' : 's'}`;
      summary.dataset.total = String(data.total);
    } else {
      pendingLive += 1;
      liveBanner.querySelector('[data-testid="nodes-live-count"]').textContent =
        `${fmtInt(pendingLive)} node${pendingLive === 1 ? ' has' : 's have'} joined or changed since this list was loaded.`;
      liveBanner.hidden = false;
    }
  }

  return {
    element,
    title: 'Nodes',
    mounted: () => {
      if (s.q) search.focus();
    },
    update: (params) => {
      const next = readParams(params);
      if (JSON.stringify(next) === JSON.stringify(s)) return;
      s = next;
      search.value = s.q;
      stateSel.control.value = s.state;
      capSel.control.value = s.capability;
      transSel.control.value = s.transport;
      versionSel.control.value = s.version;
      perSel.control.value = s.per_page;
      renderHead();
      load();
    },
    live: {
      node: onLiveNode,
      // A crawl finished: the first page of the newest nodes reloads itself (which also
      // catches any `node` event missed while the connection was down); other views say so.
      crawl: () => {
        if (s.sort === 'last_seen' && s.order === 'desc' && s.page === '1') load();
        else {
          pendingLive += 1;
          liveBanner.querySelector('[data-testid="nodes-live-count"]').textContent = 'A crawl finished since this list was loaded.';
          liveBanner.hidden = false;
        }
      },
    },
  };
}
