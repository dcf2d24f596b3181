// #/overview: network counts, breakdowns, history charts, release adoption, last crawl,
// live activity.

import { get } from '../api.js';
import { timeChart, barList } from '../charts.js';
import {
  el, fmtInt, fmtPercent, fmtMs, fmtAgo, fmtTime, uid, shortId, compareVersions,
  capabilityLabel, transportLabel, stateBadge,
} from '../util.js';

const RANGES = { '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };
const VERSION_SERIES = 7;

function section(title, testid, ...children) {
  const id = uid('h');
  return el('section', { class: 'card panel', testid, 'aria-labelledby': id },
    el('h2', { id, class: 'panel-title' }, title),
    children);
}

function stat(label, value, testid, sub, href) {
  const valueEl = el('span', { class: 'stat-value', testid, dataset: { value: String(value ?? 0) } }, fmtInt(value ?? 0));
  return el(href ? 'a' : 'div', { class: 'card stat', href },
    el('span', { class: 'stat-label' }, label),
    valueEl,
    sub ? el('span', { class: 'stat-sub muted' }, sub) : null);
}

function crawlFacts(o) {
  const c = o.last_crawl;
  const status = o.crawling
    ? el('span', { class: 'badge badge-running', testid: 'crawl-status', dataset: { crawling: 'true' } }, 'crawling now')
    : el('span', { class: 'badge', testid: 'crawl-status', dataset: { crawling: 'false' } }, 'idle');
  if (!c) {
    return [el('p', { class: 'muted', testid: 'crawl-none' }, 'No crawl has finished yet. ', status)];
  }
  const facts = [
    ['Crawl', `#${c.id}`, 'crawl-id'],
    ['Finished', fmtAgo(c.finished_at), 'crawl-finished'],
    ['Duration', fmtMs(c.duration_ms), 'crawl-duration'],
    ['Discovered', fmtInt(c.discovered), 'crawl-discovered'],
    ['Reached', fmtInt(c.reached), 'crawl-reached'],
    ['Failed', fmtInt(c.failed), 'crawl-failed'],
    ['Edges', fmtInt(c.edges), 'crawl-edges'],
    ['Source', c.source === 'sim' ? 'simulator' : 'crawl', 'crawl-source'],
  ];
  return [
    el('p', { class: 'panel-status' }, status, ' started ', fmtTime(c.started_at)),
    el('dl', { class: 'facts' }, facts.map(([t, v, id]) => el('div', { class: 'fact' }, el('dt', {}, t), el('dd', { testid: id }, v)))),
  ];
}

function historyCharts(points, range) {
  const times = points.map((p) => Number(p.at));
  const nodes = timeChart({
    title: 'Listed and up nodes over time',
    testid: 'chart-nodes',
    times,
    kind: 'area',
    series: [
      { name: 'Listed', values: points.map((p) => p.listed), cls: 's-1' },
      { name: 'Up', values: points.map((p) => p.up), cls: 's-3' },
    ],
  });
  const churn = timeChart({
    title: 'Churn: nodes joined and left per crawl',
    testid: 'chart-churn',
    times,
    kind: 'bars',
    series: [
      { name: 'Joined', values: points.map((p) => p.joined), cls: 's-3' },
      { name: 'Left', values: points.map((p) => -Math.abs(Number(p.left) || 0)), cls: 's-6' },
    ],
    format: (v) => fmtInt(Math.abs(v)),
  });
  const totals = new Map();
  for (const p of points) {
    for (const [v, count] of Object.entries(p.versions || {})) totals.set(v, (totals.get(v) || 0) + (Number(count) || 0));
  }
  const ranked = [...totals.keys()].sort((a, b) => compareVersions(b, a));
  const top = ranked.slice(0, VERSION_SERIES);
  const rest = ranked.slice(VERSION_SERIES);
  const series = top.map((v, i) => ({ name: v, values: points.map((p) => Number((p.versions || {})[v]) || 0), cls: `s-${i + 1}` }));
  if (rest.length) {
    series.push({
      name: 'other',
      values: points.map((p) => rest.reduce((sum, v) => sum + (Number((p.versions || {})[v]) || 0), 0)),
      cls: 's-8',
    });
  }
  const versions = timeChart({
    title: 'Nodes up by version over time',
    testid: 'chart-versions',
    times,
    kind: 'stacked',
    legend: true,
    series: series.length ? series : [{ name: 'nodes', values: points.map(() => 0) }],
  });
  return [
    section(`Nodes (${range})`, 'panel-nodes-chart', nodes),
    section(`Churn (${range})`, 'panel-churn-chart', churn),
    section(`Versions of nodes up (${range})`, 'panel-versions-chart', versions),
  ];
}

function adoptionTable(releases, byVersion, listed, up) {
  if (!releases.length) return el('p', { class: 'muted empty', testid: 'release-adoption-empty' }, 'No releases seen on the network yet.');
  const counts = new Map(byVersion.map((v) => [v.version, Number(v.count) || 0]));
  const sorted = [...releases].sort((a, b) => (Number(b.seen_at) || 0) - (Number(a.seen_at) || 0));
  return el('div', { class: 'table-wrap' },
    el('table', { testid: 'release-adoption', class: 'nowrap-table' },
      el('caption', { class: 'visually-hidden' }, 'Share of nodes running each release'),
      el('thead', {}, el('tr', {},
        ['Release', 'Seen', 'Nodes', 'Share'].map((h, i) => el('th', { scope: 'col', class: i >= 2 ? 'num' : undefined }, h)))),
      el('tbody', {}, sorted.map((r) => {
        // The explorer counts nodes whose agent is this release (up, at the last crawl);
        // without its numbers, the listed nodes reporting the version.
        const serverCount = Number.isFinite(Number(r.nodes)) && r.nodes !== null;
        const count = serverCount ? Number(r.nodes) : counts.get(r.version) || 0;
        const share = Number.isFinite(Number(r.share)) && r.share !== null
          ? Number(r.share)
          : ((serverCount ? up : listed) ? count / (serverCount ? up : listed) : 0);
        const fill = el('span', { class: 'bar-fill' });
        fill.style.width = `${Math.min(100, share * 100)}%`;
        return el('tr', { testid: 'release-row', dataset: { version: String(r.version) } },
          el('td', {}, `${r.package} `,
            el('a', { href: `#/nodes?version=${encodeURIComponent(r.version)}` }, r.version),
            el('span', { class: 'muted' }, ` · ${r.channel}`)),
          el('td', {}, fmtAgo(r.seen_at)),
          el('td', { class: 'num', testid: 'release-nodes' }, fmtInt(count)),
          el('td', { class: 'num share-cell' },
            el('span', { class: 'bar-track bar-inline', 'aria-hidden': 'true' }, fill),
            el('span', { testid: 'release-share' }, fmtPercent(share))));
      }))));
}

/** Nodes running each of the latest releases, crawl by crawl (from `releases[].adoption`). */
function adoptionChart(releases) {
  const latest = [...releases]
    .filter((r) => Array.isArray(r.adoption) && r.adoption.length > 1)
    .sort((a, b) => (Number(b.seen_at) || 0) - (Number(a.seen_at) || 0))
    .slice(0, 6);
  if (!latest.length) return null;
  const times = [...new Set(latest.flatMap((r) => r.adoption.map((p) => Number(p.at))))].sort((a, b) => a - b);
  const series = latest.map((r, i) => {
    const at = new Map(r.adoption.map((p) => [Number(p.at), Number(p.nodes) || 0]));
    return { name: `${r.package} ${r.version}`, values: times.map((t) => (at.has(t) ? at.get(t) : null)), cls: `s-${i + 1}` };
  });
  return timeChart({ title: 'Nodes running each release over time', testid: 'chart-adoption', times, series, legend: true, height: 180 });
}

function feedItem(entry) {
  if (entry.kind === 'node') {
    const n = entry.node;
    return el('li', { class: 'feed-item', testid: 'live-event', dataset: { nodeId: n.id, kind: 'node' } },
      stateBadge(n.up, 'live-event-state'),
      ' ',
      el('a', { href: `#/node/${encodeURIComponent(n.id)}`, class: 'mono', title: n.id }, shortId(n.id, 14)),
      ' ',
      el('span', { class: 'muted' }, n.version ? `v${n.version}` : ''),
      ' ',
      el('span', { class: 'muted feed-time' }, fmtAgo(entry.at)));
  }
  const c = entry.crawl || {};
  const text = entry.kind === 'crawl'
    ? `Crawl #${c.id} finished: ${fmtInt(c.reached)} reached, ${fmtInt(c.failed)} failed`
    : `Crawl #${c.id} started`;
  return el('li', { class: 'feed-item', testid: 'live-event', dataset: { kind: entry.kind } },
    el('span', { class: 'badge badge-running' }, 'crawl'), ' ', text, ' ',
    el('span', { class: 'muted feed-time' }, fmtAgo(entry.at)));
}

export async function renderOverview(ctx) {
  const rangeKey = RANGES[ctx.params.get('range')] ? ctx.params.get('range') : '7d';
  const since = Math.floor(Date.now() / 1000) - RANGES[rangeKey];
  const [o, history] = await Promise.all([
    ctx.app.ensureOverview(0),
    get(`/history?since=${since}`),
  ]);
  if (!o) throw new Error('the overview did not load');
  const net = o.network || {};
  const listed = Number(net.listed) || 0;
  const points = (Array.isArray(history.points) ? history.points : []).slice().sort((a, b) => a.at - b.at);
  const releases = Array.isArray(history.releases) ? history.releases : [];
  const byVersion = Array.isArray(o.by_version) ? o.by_version : [];
  const byTransport = Array.isArray(o.by_transport) ? o.by_transport : [];
  const byCapability = Array.isArray(o.by_capability) ? o.by_capability : [];

  const rangeNav = el('div', { class: 'segmented', role: 'group', 'aria-label': 'History period', testid: 'range' },
    Object.keys(RANGES).map((key) => el('a', {
      href: `#/overview?range=${key}`,
      class: 'segment',
      'aria-current': key === rangeKey ? 'true' : undefined,
      testid: `range-${key}`,
    }, key)));

  const feed = el('ol', { class: 'feed', testid: 'live-feed', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const fillFeed = () => {
    const entries = ctx.app.feed();
    feed.replaceChildren(...entries.slice(0, 12).map(feedItem));
    if (!entries.length) feed.append(el('li', { class: 'muted feed-empty' }, 'Changes appear here as the crawler sees them.'));
  };
  fillFeed();

  const sortedVersions = [...byVersion].sort((a, b) => (Number(b.count) || 0) - (Number(a.count) || 0));
  const element = el('section', { class: 'page', testid: 'page-overview', 'aria-labelledby': 'overview-title' },
    el('div', { class: 'page-head' },
      el('h1', { id: 'overview-title', class: 'page-title' }, 'Network overview'),
      rangeNav),
    el('div', { class: 'stats', testid: 'stats' },
      stat('Listed nodes', net.listed, 'stat-listed', 'valid records known', '#/nodes'),
      stat('Up', net.up, 'stat-up', listed ? `${fmtPercent((net.up || 0) / listed)} of listed` : null, '#/nodes?state=up'),
      stat('Down', net.down, 'stat-down', 'listed, not answering', '#/nodes?state=down'),
      stat('Known, never reached', net.known_unreached, 'stat-unreached', 'seen in routing tables only'),
      stat('Links', net.edges, 'stat-edges', 'routing-table edges', '#/graph')),
    el('div', { class: 'grid-2' },
      section('Last crawl', 'panel-crawl', crawlFacts(o)),
      section('Live activity', 'panel-live', feed)),
    el('div', { class: 'grid-3' },
      section('By version', 'panel-by-version', sortedVersions.length
        ? barList({
          label: 'Listed nodes by version',
          testid: 'by-version',
          itemTestid: 'by-version-row',
          total: listed,
          items: sortedVersions.map((v) => ({
            key: v.version ?? 'unknown',
            label: v.version ?? 'unknown',
            value: v.count,
            href: `#/nodes?version=${encodeURIComponent(v.version ?? 'unknown')}`,
          })),
        })
        : el('p', { class: 'muted' }, 'No nodes yet.')),
      section('By transport', 'panel-by-transport', byTransport.length
        ? [barList({
          label: 'Listed nodes by transport, with how many answered a probe',
          testid: 'by-transport',
          itemTestid: 'by-transport-row',
          total: listed,
          secondaryLabel: 'answered',
          items: byTransport.map((t) => ({
            key: t.transport,
            label: transportLabel(t.transport),
            value: t.count,
            secondary: t.answered,
            href: `#/nodes?transport=${encodeURIComponent(t.transport)}`,
          })),
        }), el('p', { class: 'muted small legend-note' }, el('span', { class: 'swatch swatch-secondary' }), 'answered the last probe')]
        : el('p', { class: 'muted' }, 'No nodes yet.')),
      section('By capability', 'panel-by-capability', byCapability.length
        ? barList({
          label: 'Listed nodes by capability',
          testid: 'by-capability',
          itemTestid: 'by-capability-row',
          total: listed,
          items: byCapability.map((c) => ({
            key: c.capability,
            label: capabilityLabel(c.capability),
            value: c.count,
            href: `#/nodes?capability=${encodeURIComponent(c.capability)}`,
          })),
        })
        : el('p', { class: 'muted' }, 'No node advertises a capability.'))),
    el('div', { class: 'grid-charts' },
      historyCharts(points, rangeKey),
      section('Release adoption', 'panel-adoption',
        el('p', { class: 'muted small' }, 'Releases the explorer has seen announced, and how many nodes (up at the last crawl) run each.'),
        adoptionTable(releases, byVersion, listed, Number(net.up) || 0),
        adoptionChart(releases))));

  return {
    element,
    title: 'Overview',
    live: {
      node: fillFeed,
      overview: (fresh) => {
        const n = fresh.network || {};
        const set = (testid, value) => {
          const target = element.querySelector(`[data-testid="${testid}"]`);
          if (target && value !== undefined) {
            target.textContent = fmtInt(value);
            target.dataset.value = String(value);
          }
        };
        set('stat-listed', n.listed);
        set('stat-up', n.up);
        set('stat-down', n.down);
        set('stat-unreached', n.known_unreached);
        set('stat-edges', n.edges);
      },
      crawl: () => ctx.app.refresh(),
      crawlStarted: fillFeed,
    },
  };
}
