// DOM and formatting helpers shared by every view. Server data only ever reaches the page
// through textContent and attributes set here, never through HTML parsing.

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * el('tag', {attrs}, ...children). Strings become text nodes; null, undefined and false
 * children are skipped. Attribute keys: `class`, `testid` (data-testid), `dataset`
 * (object), `on<event>` (listener), boolean properties (`disabled`, `hidden`, `required`,
 * `selected`, `checked`), `value`, anything else via setAttribute.
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** The same for SVG elements (charts built from trusted numbers). */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'testid') node.dataset.testid = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (['disabled', 'hidden', 'required', 'selected', 'checked'].includes(key)) node[key] = Boolean(value);
    else if (key === 'value') node.value = String(value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces a node's children, with el()'s rules (null, undefined and false are skipped). */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export const $ = (id) => document.getElementById(id);

let idCounter = 0;
export const uid = (prefix) => `${prefix}-${++idCounter}`;

// ---------------------------------------------------------------- formatting

const numberFormat = new Intl.NumberFormat(undefined);
export const fmtInt = (n) => (Number.isFinite(Number(n)) ? numberFormat.format(Number(n)) : '—');

export function fmtPercent(fraction, digits = 1) {
  const f = Number(fraction);
  if (fraction === null || fraction === undefined || !Number.isFinite(f)) return '—';
  return `${(f * 100).toFixed(digits)}%`;
}

export function fmtMs(ms) {
  const n = Number(ms);
  if (ms === null || ms === undefined || !Number.isFinite(n)) return '—';
  if (n >= 10_000) return `${(n / 1000).toFixed(1)} s`;
  if (n >= 100) return `${Math.round(n)} ms`;
  return `${n.toFixed(1)} ms`;
}

export function fmtSize(bytes) {
  const n = Number(bytes);
  if (bytes === null || bytes === undefined || !Number.isFinite(n) || n < 0) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function fmtDuration(secs) {
  let s = Math.max(0, Math.floor(Number(secs) || 0));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
});

/** A <time> element with an absolute date; the ISO form in the tooltip. */
export function fmtTime(secs) {
  const n = Number(secs);
  if (secs === null || secs === undefined || !Number.isFinite(n) || n <= 0) {
    return el('span', { class: 'muted' }, '—');
  }
  const date = new Date(n * 1000);
  return el('time', { datetime: date.toISOString(), title: date.toISOString() }, dateFormat.format(date));
}

/** "3 min ago" / "in 2 days", as a <time> with the absolute date in its tooltip. */
export function fmtAgo(secs, now = Date.now() / 1000) {
  const n = Number(secs);
  if (secs === null || secs === undefined || !Number.isFinite(n) || n <= 0) {
    return el('span', { class: 'muted' }, '—');
  }
  const date = new Date(n * 1000);
  return el('time', {
    datetime: date.toISOString(),
    title: dateFormat.format(date),
    dataset: { ago: String(n) },
  }, agoText(n, now));
}

export function agoText(secs, now = Date.now() / 1000) {
  const delta = Math.round(now - secs);
  const abs = Math.abs(delta);
  let text;
  if (abs < 45) text = `${abs}s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86400)} d`;
  return delta >= 0 ? `${text} ago` : `in ${text}`;
}

export function shortId(id, length = 10) {
  const text = String(id ?? '');
  return text.length > length ? `${text.slice(0, length)}…` : text;
}

/** A monospace, truncated identifier with the full value in its tooltip. */
export function mono(value, length = 12, testid) {
  if (value === null || value === undefined || value === '') return el('span', { class: 'muted' }, '—');
  return el('code', { class: 'mono', title: String(value), testid }, shortId(value, length));
}

export const CAPABILITY_LABELS = {
  relay: 'Relay',
  bridge_tor: 'Tor bridge',
  bridge_i2p: 'I2P bridge',
  authority: 'Authority',
  store_forward: 'Store & forward',
  update_mirror: 'Update mirror',
};
export const CAPABILITIES = Object.keys(CAPABILITY_LABELS);

export const TRANSPORT_LABELS = { quic: 'QUIC', tcp: 'TCP', tor: 'Tor', i2p: 'I2P' };
export const TRANSPORTS = Object.keys(TRANSPORT_LABELS);

export const capabilityLabel = (c) => CAPABILITY_LABELS[c] || String(c);
export const transportLabel = (t) => TRANSPORT_LABELS[t] || String(t);

export function stateBadge(up, testid = 'node-state') {
  return el('span', {
    class: `badge ${up ? 'badge-up' : 'badge-down'}`,
    testid,
    dataset: { state: up ? 'up' : 'down' },
  }, up ? 'up' : 'down');
}

export function badgeList(items, label, cls = 'badge-cap', testid) {
  if (!Array.isArray(items) || !items.length) return el('span', { class: 'muted' }, '—');
  return el('ul', { class: 'badges', 'aria-label': label, testid },
    items.map((item) => el('li', { class: `badge ${cls}` }, label === 'Transports' ? transportLabel(item) : capabilityLabel(item))));
}

/** NodeIds are 52 characters of lowercase base32 (RFC 4648 alphabet, no padding). */
export const NODE_ID_RE = /^[a-z2-7]{52}$/;

export function normaliseNodeId(text) {
  return String(text || '').trim().toLowerCase();
}

/**
 * Position of a NodeId in the 256-bit key space, as a fraction in [0, 1) taken from its first
 * 30 bits (six base32 characters): Kademlia's XOR metric keeps ids with a common prefix close.
 */
export function keyFraction(id) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  let value = 0;
  const text = String(id || '');
  for (let i = 0; i < 6; i++) {
    const digit = alphabet.indexOf(text[i]);
    value = value * 32 + (digit < 0 ? 0 : digit);
  }
  return value / 2 ** 30;
}

/** Stable, readable colour classes for versions: index into a palette of 8. */
export function hashString(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

/** Compares version strings numerically where they are numbers (0.10.0 after 0.9.1). */
export function compareVersions(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  const pa = String(a).split(/[.+-]/);
  const pb = String(b).split(/[.+-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    if (!Number.isNaN(nx) && !Number.isNaN(ny)) {
      if (nx !== ny) return nx - ny;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

export function prefersReducedMotion() {
  return window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
}

/** Reads a CSS custom property from :root (theme colours for canvas drawing). */
export function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}
