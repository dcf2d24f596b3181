// #/node/<id>: one node, like a relay page in Tor Relay Search: the verified record,
// addresses, capabilities, status, probes per transport, up/down history, neighbours, topics.

import { get, ApiError } from '../api.js';
import { sessionTimeline } from '../charts.js';
import {
  el, uid, fmtInt, fmtPercent, fmtMs, fmtAgo, fmtTime, fmtSize, fmtDuration, shortId, stateBadge,
  badgeList, transportLabel, NODE_ID_RE, normaliseNodeId,
} from '../util.js';

const HISTORY_DAYS = 7;

function panel(title, testid, ...children) {
  const id = uid('h');
  return el('section', { class: 'card panel', testid, 'aria-labelledby': id },
    el('h2', { id, class: 'panel-title' }, title),
    children);
}

function facts(items) {
  return el('dl', { class: 'facts' },
    items.filter(Boolean).map(([term, value, testid]) => el('div', { class: 'fact' },
      el('dt', {}, term),
      el('dd', { testid }, value))));
}

function copyButton(text, label) {
  const button = el('button', { type: 'button', class: 'btn btn-small btn-quiet', testid: 'copy-id' }, 'Copy');
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'Copied';
    } catch (_) {
      button.textContent = 'Select and copy';
    }
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  button.setAttribute('aria-label', `Copy ${label}`);
  return button;
}

function signatureView(hex) {
  const text = String(hex || '');
  if (!text) return el('span', { class: 'muted' }, '—');
  const short = el('code', { class: 'mono wrap', testid: 'node-record-signature' }, text.length > 32 ? `${text.slice(0, 32)}…` : text);
  if (text.length <= 32) return short;
  const toggle = el('button', { type: 'button', class: 'btn btn-small btn-quiet', 'aria-expanded': 'false' }, 'Show all');
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') === 'true';
    short.textContent = open ? `${text.slice(0, 32)}…` : text;
    toggle.setAttribute('aria-expanded', String(!open));
    toggle.textContent = open ? 'Show all' : 'Show less';
  });
  return el('span', { class: 'sig' }, short, ' ', toggle);
}

function notFound(id, err) {
  const malformed = err instanceof ApiError && err.status === 400;
  return {
    element: el('section', { class: 'page', testid: 'page-node-missing', 'aria-labelledby': 'node-missing-title' },
      el('h1', { id: 'node-missing-title', class: 'page-title' }, malformed ? 'Not a NodeId' : 'Node not listed'),
      el('p', {}, malformed
        ? 'A NodeId is 52 characters of base32 (a–z, 2–7).'
        : 'The explorer has no valid record for this node: it may never have been seen, or its record expired.'),
      el('p', {}, el('code', { class: 'mono wrap' }, id)),
      el('p', {}, el('a', { href: `#/nodes?q=${encodeURIComponent(id.slice(0, 16))}` }, 'Search the node list'), ' · ',
        el('a', { href: '#/lookup' + (NODE_ID_RE.test(id) ? `?target=${encodeURIComponent(id)}` : '') }, 'Trace a lookup'))),
    title: 'Node not found',
  };
}

export async function renderNode(ctx) {
  const id = normaliseNodeId(ctx.arg);
  let n;
  try {
    n = await get(`/nodes/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 400)) return notFound(id, err);
    throw err;
  }
  const now = Math.floor(Date.now() / 1000);
  const record = n.record || {};
  const status = n.status || null;
  const probes = Array.isArray(n.probes) ? n.probes : [];
  const sessions = Array.isArray(n.sessions) ? n.sessions : [];
  const neighbours = Array.isArray(n.neighbours) ? n.neighbours : [];
  const addresses = Array.isArray(n.addresses) ? n.addresses : [];
  const topics = Array.isArray(n.topics) ? n.topics : [];

  const expires = Number(record.expires_at);
  const expiresNote = Number.isFinite(expires)
    ? el('span', { class: expires < now ? 'danger' : 'muted' }, ` (${expires < now ? 'expired' : 'valid'})`)
    : null;

  const from = Math.max(Number(n.first_seen) || now - HISTORY_DAYS * 86400, now - HISTORY_DAYS * 86400);
  const timeline = sessionTimeline({ sessions, from, to: now, testid: 'node-uptime-chart' });

  const head = el('div', { class: 'node-head' },
    el('div', { class: 'node-title' },
      el('h1', { id: 'node-title', class: 'page-title' }, 'Node ', stateBadge(n.up, 'node-state')),
      el('p', { class: 'node-id' },
        el('code', { class: 'mono wrap', testid: 'node-id' }, n.id), ' ', copyButton(n.id, 'NodeId')),
      el('p', { class: 'muted' }, 'Fingerprint ', el('code', { class: 'mono', testid: 'node-fingerprint' }, n.fingerprint || '—'))),
    el('div', { class: 'node-actions' },
      el('a', { class: 'btn', href: `#/graph?focus=${encodeURIComponent(n.id)}`, testid: 'node-show-graph' }, 'Show on graph'),
      el('a', { class: 'btn', href: `#/lookup?target=${encodeURIComponent(n.id)}`, testid: 'node-trace-lookup' }, 'Trace a lookup to it')));

  const summaryPanel = panel('Summary', 'node-summary', facts([
    ['Agent', n.agent || '—', 'node-agent'],
    ['Version', n.version || 'unknown', 'node-version'],
    ['Round trip', fmtMs(n.rtt_ms), 'node-rtt'],
    ['Uptime (24 h)', fmtPercent(n.uptime_24h), 'node-uptime'],
    ['Links', fmtInt(n.neighbour_count), 'node-neighbour-count'],
    ['First seen', fmtAgo(n.first_seen), 'node-first-seen'],
    ['Last seen', fmtAgo(n.last_seen), 'node-last-seen'],
  ]),
  el('div', { class: 'fact-row' },
    el('span', { class: 'fact-label' }, 'Capabilities'), badgeList(n.capabilities, 'Capabilities', 'badge-cap', 'node-capabilities')),
  el('div', { class: 'fact-row' },
    el('span', { class: 'fact-label' }, 'Transports'), badgeList(n.transports, 'Transports', 'badge-transport', 'node-transports')));

  const recordPanel = panel(record.simulated ? 'Record (simulated)' : 'Verified record', 'node-record',
    el('p', { class: 'muted small', testid: 'node-record-note' }, record.simulated
      ? 'This node comes from a simulated topology: its record was made by the simulator, not verified on a live network.'
      : 'The signed node record the explorer verified: the node\'s own statement of how to reach it.'),
    facts([
      ['Sequence', String(record.sequence ?? '—'), 'node-record-sequence'],
      ['Issued', fmtTime(record.issued_at), 'node-record-issued'],
      ['Expires', el('span', {}, fmtTime(record.expires_at), expiresNote), 'node-record-expires'],
      ['Size', fmtSize(record.size), 'node-record-size'],
    ]),
    el('div', { class: 'fact-row' }, el('span', { class: 'fact-label' }, 'Signature'), signatureView(record.signature)));

  const addressPanel = panel('Addresses', 'node-addresses', addresses.length
    ? el('div', { class: 'table-wrap' }, el('table', { testid: 'node-address-table' },
      el('caption', { class: 'visually-hidden' }, 'Advertised addresses'),
      el('thead', {}, el('tr', {}, ['Transport', 'Host', 'Port'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, addresses.map((a) => el('tr', { testid: 'node-address' },
        el('td', {}, transportLabel(a.transport)),
        el('td', { class: 'mono wrap' }, a.host),
        el('td', { class: 'num' }, String(a.port ?? '')))))))
    : el('p', { class: 'muted' }, 'No addresses advertised.'));

  const probePanel = panel('Probes', 'node-probes', probes.length
    ? el('div', { class: 'table-wrap' }, el('table', { testid: 'node-probe-table' },
      el('caption', { class: 'visually-hidden' }, 'The crawler\'s last probe of each address'),
      el('thead', {}, el('tr', {}, ['Transport', 'Address', 'Answered', 'RTT', 'Error', 'When'].map((h, i) => el('th', { scope: 'col', class: i === 3 ? 'num' : undefined }, h)))),
      el('tbody', {}, probes.map((p) => el('tr', { testid: 'probe-row', dataset: { transport: String(p.transport), ok: String(Boolean(p.ok)) } },
        el('td', {}, transportLabel(p.transport)),
        el('td', { class: 'mono wrap' }, p.address ?? ''),
        el('td', {}, el('span', { class: `badge ${p.ok ? 'badge-up' : 'badge-down'}`, testid: 'probe-ok' }, p.ok ? 'yes' : 'no')),
        el('td', { class: 'num', testid: 'probe-rtt' }, fmtMs(p.rtt_ms)),
        el('td', { class: 'detail' }, p.error ? p.error : el('span', { class: 'muted' }, '—')),
        el('td', {}, fmtAgo(p.at)))))))
    : el('p', { class: 'muted', testid: 'node-probes-empty' }, 'Not probed yet.'));

  const statusPanel = panel('Reported status', 'node-status', status
    ? facts([
      ['Uptime', el('span', { title: `${status.uptime_s} s` }, fmtDuration(status.uptime_s)), 'node-status-uptime'],
      ['Peers', fmtInt(status.peer_count), 'node-status-peers'],
      ['Messages in', fmtInt(status.messages_in), null],
      ['Messages out', fmtInt(status.messages_out), null],
      ['Bytes in', fmtSize(status.bytes_in), null],
      ['Bytes out', fmtSize(status.bytes_out), null],
    ])
    : el('p', { class: 'muted' }, 'This node does not report its status to the crawler.'));

  const upShare = timeline.upShare;
  const historyPanel = panel(`Up and down, last ${HISTORY_DAYS} days`, 'node-history',
    el('div', { class: 'timeline-wrap' }, timeline.element,
      el('div', { class: 'timeline-axis muted small' },
        el('span', {}, new Date(from * 1000).toLocaleDateString(undefined, { month: 'short', day: 'numeric' })),
        el('span', {}, 'now'))),
    el('p', { class: 'small' },
      el('span', { class: 'swatch swatch-up' }), 'up ', el('span', { class: 'swatch swatch-down' }), 'down ',
      el('span', { class: 'swatch swatch-unknown' }), 'not yet known',
      upShare !== null ? el('span', { class: 'muted' }, ` · up ${fmtPercent(upShare)} of the observed time`) : null),
    sessions.length
      ? el('details', { class: 'chart-data' }, el('summary', {}, `Sessions (${sessions.length})`),
        el('div', { class: 'table-wrap table-scroll' }, el('table', { testid: 'node-sessions' },
          el('caption', { class: 'visually-hidden' }, 'Sessions'),
          el('thead', {}, el('tr', {}, ['State', 'From', 'Until', 'Length'].map((h) => el('th', { scope: 'col' }, h)))),
          el('tbody', {}, [...sessions].reverse().map((s) => el('tr', {},
            el('td', {}, stateBadge(s.up, 'session-state')),
            el('td', {}, fmtTime(s.start)),
            el('td', {}, s.end ? fmtTime(s.end) : 'now'),
            el('td', {}, fmtDuration((s.end || now) - s.start))))))))
      : null);

  const neighbourPanel = panel(`Neighbours (${fmtInt(neighbours.length)})`, 'node-neighbours', neighbours.length
    ? el('ul', { class: 'neighbours', testid: 'node-neighbour-list' },
      neighbours.map((nb) => el('li', {},
        el('span', { class: `dot ${nb.up ? 'dot-up' : 'dot-down'}`, title: nb.up ? 'up' : 'down' }),
        el('span', { class: 'visually-hidden' }, nb.up ? 'up: ' : 'down: '),
        el('a', { href: `#/node/${encodeURIComponent(nb.id)}`, class: 'mono', testid: 'neighbour-link', title: nb.id, dataset: { nodeId: nb.id } }, shortId(nb.id, 14)),
        ' ',
        el('span', { class: 'mono muted small' }, nb.fingerprint || ''))))
    : el('p', { class: 'muted' }, 'No neighbours known: the crawler has not read this node\'s routing table.'));

  const topicPanel = panel('Topics', 'node-topics', topics.length
    ? el('ul', { class: 'badges', testid: 'node-topic-list' }, topics.map((t) => el('li', { class: 'badge badge-topic' }, t)))
    : el('p', { class: 'muted' }, 'No topics advertised.'));

  const element = el('section', { class: 'page', testid: 'page-node', 'aria-labelledby': 'node-title', dataset: { nodeId: n.id } },
    el('p', { class: 'crumbs' }, el('a', { href: '#/nodes' }, 'Nodes'), ' / ', el('span', { class: 'mono' }, shortId(n.id, 16))),
    head,
    el('div', { class: 'grid-2' }, summaryPanel, recordPanel),
    historyPanel,
    probePanel,
    el('div', { class: 'grid-3' }, addressPanel, statusPanel, topicPanel),
    neighbourPanel);

  return {
    element,
    title: `Node ${shortId(n.id, 10)}`,
    live: {
      node: (summary) => {
        if (summary.id !== n.id) return;
        const badge = element.querySelector('[data-testid="node-state"]');
        if (badge) badge.replaceWith(stateBadge(summary.up, 'node-state'));
      },
    },
  };
}

