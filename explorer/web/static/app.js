// Meshara Explorer: the page shell. Hash routing (#/overview, #/graph, #/nodes,
// #/node/<id>, #/lookup), the live connection, the header counters and error messages.
// Plain ES modules, no framework, no build step; server data is rendered with
// textContent and attributes only.

import { get, describeError, ApiError } from './js/api.js';
import { live } from './js/live.js';
import { $, el, fmtInt, shortId, agoText, debounce } from './js/util.js';
import { renderOverview } from './js/views/overview.js';
import { renderGraph } from './js/views/graph.js';
import { renderNodes } from './js/views/nodes.js';
import { renderNode } from './js/views/node.js';
import { renderLookup } from './js/views/lookup.js';

const VIEWS = {
  overview: { render: renderOverview, nav: 'overview', title: 'Overview' },
  graph: { render: renderGraph, nav: 'graph', title: 'Graph' },
  nodes: { render: renderNodes, nav: 'nodes', title: 'Nodes' },
  node: { render: renderNode, nav: 'nodes', title: 'Node' },
  lookup: { render: renderLookup, nav: 'lookup', title: 'Lookup' },
};
const DEFAULT_ROUTE = 'overview';
const FEED_KEPT = 50;

const app = {
  overview: null,
  overviewAt: 0,
  current: null, // { route, key, view: {element, destroy, live, update} }
  renderSeq: 0,
  feed: [], // recent live events, newest first: {at, kind, node|crawl}
  firstRender: true,
};

// ---------------------------------------------------------------- routing

export function parseHash(hash = location.hash) {
  const text = (hash || '').replace(/^#\/?/, '');
  const [pathPart, queryPart = ''] = text.split('?');
  const parts = pathPart.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch (_) {
      return p;
    }
  });
  return { route: parts[0] || '', arg: parts[1] || '', params: new URLSearchParams(queryPart) };
}

/** Replaces the query part of the current route without re-rendering it. */
export function replaceParams(params) {
  const { route, arg } = parseHash();
  const query = params.toString();
  const hash = `#/${route}${arg ? `/${encodeURIComponent(arg)}` : ''}${query ? `?${query}` : ''}`;
  if (hash !== location.hash) history.replaceState(null, '', hash);
}

function updateNav(navRoute) {
  for (const link of document.querySelectorAll('.tabs a[data-route]')) {
    if (link.dataset.route === navRoute) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function render({ refresh = false } = {}) {
  let { route, arg, params } = parseHash();
  if (!VIEWS[route]) {
    location.replace(`#/${DEFAULT_ROUTE}`);
    route = DEFAULT_ROUTE;
    arg = '';
    params = new URLSearchParams();
  }
  const spec = VIEWS[route];
  updateNav(spec.nav);
  const viewEl = $('view');
  const seq = ++app.renderSeq;
  const key = `${route}/${arg}`;
  const sameView = app.current && app.current.key === key;
  // Views that manage their own query state (filters, pages) take the new params in place.
  if (sameView && !refresh && app.current.view && typeof app.current.view.update === 'function') {
    app.current.view.update(params);
    return;
  }
  if (!sameView) {
    clearError();
    if (app.current && app.current.view && app.current.view.destroy) app.current.view.destroy();
    app.current = null;
    viewEl.replaceChildren(el('p', { class: 'muted loading', testid: 'loading' }, 'Loading…'));
    viewEl.dataset.page = route;
  }
  viewEl.setAttribute('aria-busy', 'true');
  const ctx = {
    arg,
    params,
    app: shell,
    isCurrent: () => seq === app.renderSeq,
  };
  try {
    const view = await spec.render(ctx);
    if (seq !== app.renderSeq) {
      if (view && view.destroy) view.destroy();
      return;
    }
    if (sameView && app.current && app.current.view && app.current.view.destroy) app.current.view.destroy();
    viewEl.replaceChildren(view.element);
    app.current = { route, key, view };
    document.title = `${view.title || spec.title} · Meshara Explorer`;
    if (view.mounted) view.mounted();
    if (!app.firstRender && !sameView) viewEl.focus({ preventScroll: true });
    if (!sameView) window.scrollTo(0, 0);
  } catch (err) {
    if (seq !== app.renderSeq) return;
    console.warn('explorer:', err); // eslint-disable-line no-console
    app.current = { route, key, view: null };
    viewEl.replaceChildren(el('section', { class: 'page', testid: 'load-failed' },
      el('h1', { class: 'page-title' }, `${spec.title} could not be loaded`),
      el('p', {}, describeError(err)),
      el('button', { type: 'button', class: 'btn', onclick: () => render({ refresh: true }) }, 'Try again')));
  } finally {
    if (seq === app.renderSeq) viewEl.removeAttribute('aria-busy');
    app.firstRender = false;
  }
}

// ---------------------------------------------------------------- messages

function showError(text) {
  $('error-text').textContent = text;
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
}

// ---------------------------------------------------------------- overview & header

async function loadOverview() {
  try {
    const overview = await get('/overview');
    app.overview = overview;
    app.overviewAt = Date.now();
    applyOverview(overview);
    return overview;
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 0) console.warn('explorer: overview', err); // eslint-disable-line no-console
    return app.overview;
  }
}

function applyOverview(o) {
  if (!o) return;
  const net = o.network || {};
  $('live-up').textContent = fmtInt(net.up ?? 0);
  $('live-listed').textContent = fmtInt(net.listed ?? 0);
  $('live-counts').hidden = false;
  $('live-counts').dataset.up = String(net.up ?? 0);
  $('live-counts').dataset.listed = String(net.listed ?? 0);
  $('sim-badge').hidden = !o.simulated;
  $('sim-banner').hidden = !o.simulated;
  const view = app.current && app.current.view;
  if (view && view.live && view.live.overview) view.live.overview(o);
  const info = $('explorer-info');
  if (o.explorer) {
    info.replaceChildren(
      `Explorer ${o.explorer.version ?? ''} · node `,
      el('a', { href: `#/node/${encodeURIComponent(o.explorer.node_id ?? '')}`, class: 'mono', title: o.explorer.node_id ?? '' },
        shortId(o.explorer.node_id, 12)),
    );
  }
}

const refreshOverviewSoon = debounce(() => loadOverview(), 2500);

// ---------------------------------------------------------------- live

function setLiveState(state) {
  const indicator = $('live');
  indicator.dataset.state = state;
  const text = {
    idle: 'Offline',
    connecting: 'Connecting…',
    open: 'Live',
    retrying: 'Reconnecting…',
    unsupported: 'No live updates',
  }[state] || state;
  $('live-text').textContent = text;
  indicator.title = state === 'open'
    ? 'Receiving live updates from the crawler'
    : 'Live updates are not flowing; pages still load on demand';
}

function pushFeed(entry) {
  app.feed.unshift(entry);
  if (app.feed.length > FEED_KEPT) app.feed.length = FEED_KEPT;
}

function onLiveNode(node) {
  if (!node || typeof node.id !== 'string') return;
  pushFeed({ at: Date.now() / 1000, kind: 'node', node });
  refreshOverviewSoon();
  const view = app.current && app.current.view;
  if (view && view.live && view.live.node) view.live.node(node);
}

function onLiveCrawl(crawl) {
  pushFeed({ at: Date.now() / 1000, kind: 'crawl', crawl });
  loadOverview();
  const view = app.current && app.current.view;
  if (view && view.live && view.live.crawl) view.live.crawl(crawl);
}

function onLiveCrawlStarted(started) {
  pushFeed({ at: Date.now() / 1000, kind: 'crawl_started', crawl: started });
  if (app.overview) app.overview.crawling = true;
  const view = app.current && app.current.view;
  if (view && view.live && view.live.crawlStarted) view.live.crawlStarted(started);
}

// ---------------------------------------------------------------- shell API for views

const shell = {
  get overview() {
    return app.overview;
  },
  /** The overview, fetched if missing or older than maxAgeMs. */
  async ensureOverview(maxAgeMs = 15_000) {
    if (app.overview && Date.now() - app.overviewAt < maxAgeMs) return app.overview;
    return loadOverview();
  },
  feed: () => app.feed.slice(),
  showError,
  clearError,
  refresh: () => render({ refresh: true }),
  navigate: (hash) => {
    location.hash = hash;
  },
  replaceParams,
  agoText,
};

// ---------------------------------------------------------------- wiring

function init() {
  $('error-dismiss').addEventListener('click', clearError);
  $('skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    $('view').focus();
  });
  window.addEventListener('hashchange', () => render());
  document.querySelector('.tabs').addEventListener('click', (event) => {
    const link = event.target.closest('a[data-route]');
    // Clicking the open tab reloads it (and leaves a node page for the list).
    if (link && `#/${link.dataset.route}` === location.hash) {
      event.preventDefault();
      render({ refresh: true });
    }
  });
  live.on('state', setLiveState);
  live.on('node', onLiveNode);
  live.on('crawl', onLiveCrawl);
  live.on('crawl_started', onLiveCrawlStarted);
  setLiveState('connecting');
  live.connect();
  loadOverview();
  // Relative times ("3 min ago") stay true.
  setInterval(() => {
    const now = Date.now() / 1000;
    for (const t of document.querySelectorAll('time[data-ago]')) t.textContent = agoText(Number(t.dataset.ago), now);
  }, 15_000);
  render();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
