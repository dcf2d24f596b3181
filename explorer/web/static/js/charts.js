// Small SVG charts built with createElementNS from numbers (never from markup), redrawn at
// their container's width. Each comes with its data as a table for screen readers and
// keyboard users, and a crosshair that follows the pointer or the arrow keys.

import { el, svg, fmtInt, uid } from './util.js';

const MARGIN = { top: 10, right: 14, bottom: 26, left: 52 };

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  const unit = raw / power;
  const nice = unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10;
  return Math.max(nice * power, 1e-9);
}

function yTicks(min, max, count = 4) {
  if (max <= min) max = min + 1;
  const step = niceStep(max - min, count);
  const start = Math.floor(min / step) * step;
  const end = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = start; v <= end + step / 2; v += step) ticks.push(Math.round(v * 1e6) / 1e6);
  return { ticks, min: start, max: end };
}

const TIME_STEPS = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];

function timeTicks(t0, t1, width) {
  const want = Math.max(2, Math.floor(width / 110));
  const span = Math.max(1, t1 - t0);
  const step = TIME_STEPS.find((s) => span / s <= want) || TIME_STEPS[TIME_STEPS.length - 1];
  const offset = step >= 86400 ? new Date().getTimezoneOffset() * 60 : 0;
  const ticks = [];
  for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1; t += step) ticks.push(t);
  return { ticks, step };
}

function timeLabel(t, step) {
  const d = new Date(t * 1000);
  if (step >= 86400) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  const hm = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  if (d.getHours() === 0 && d.getMinutes() === 0) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  return hm;
}

function fullTime(t) {
  return new Date(t * 1000).toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/**
 * A time-series chart.
 * @param {object} o
 * @param {string} o.title accessible name
 * @param {number[]} o.times unix seconds, ascending
 * @param {{name: string, values: number[], cls?: string}[]} o.series
 * @param {'line'|'area'|'stacked'|'bars'} [o.kind]
 * @param {(v: number) => string} [o.format]
 * @param {number} [o.height]
 * @param {string} [o.testid]
 */
export function timeChart(o) {
  const kind = o.kind || 'line';
  const format = o.format || fmtInt;
  const height = o.height || 220;
  const series = o.series.map((s, i) => ({ ...s, cls: s.cls || `s-${(i % 8) + 1}` }));
  const times = o.times;
  const figure = el('figure', { class: 'chart', testid: o.testid, dataset: { points: String(times.length) } });
  const captionId = uid('chart');
  const legend = series.length > 1 || o.legend
    ? el('ul', { class: 'chart-legend', 'aria-hidden': 'true' },
      series.map((s) => el('li', {}, el('span', { class: `swatch ${s.cls}` }), s.name)))
    : null;
  const plot = el('div', { class: 'chart-plot' });
  const tip = el('div', { class: 'chart-tip', hidden: true, 'aria-hidden': 'true' });
  plot.append(tip);
  const table = el('details', { class: 'chart-data' },
    el('summary', {}, 'Data table'),
    el('div', { class: 'table-wrap table-scroll' },
      el('table', {},
        el('caption', { class: 'visually-hidden' }, o.title),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Time'), series.map((s) => el('th', { scope: 'col', class: 'num' }, s.name)))),
        el('tbody', {}, times.map((t, i) => el('tr', {},
          el('th', { scope: 'row' }, fullTime(t)),
          series.map((s) => el('td', { class: 'num' }, format(s.values[i]))))).reverse()))));
  figure.append(el('figcaption', { id: captionId, class: 'visually-hidden' }, o.title), legend, plot, table);

  if (!times.length) {
    plot.append(el('p', { class: 'muted empty' }, 'No data for this period yet.'));
    return figure;
  }

  let lastWidth = 0;
  let cursor = -1;
  let geometry = null;
  const draw = (width) => {
    lastWidth = width;
    const w = Math.max(200, width);
    const innerW = w - MARGIN.left - MARGIN.right;
    const innerH = height - MARGIN.top - MARGIN.bottom;
    const t0 = times[0];
    const t1 = times[times.length - 1] === t0 ? t0 + 1 : times[times.length - 1];
    const x = (t) => MARGIN.left + ((t - t0) / (t1 - t0)) * innerW;
    let lo = 0;
    let hi = 0;
    const stackedTop = times.map(() => 0);
    if (kind === 'stacked') {
      for (let i = 0; i < times.length; i++) {
        for (const s of series) stackedTop[i] += Number(s.values[i]) || 0;
      }
      hi = Math.max(...stackedTop);
    } else if (kind === 'bars') {
      for (const s of series) {
        for (const v of s.values) {
          hi = Math.max(hi, Number(v) || 0);
          lo = Math.min(lo, Number(v) || 0);
        }
      }
    } else {
      for (const s of series) for (const v of s.values) hi = Math.max(hi, Number(v) || 0);
    }
    const yt = yTicks(lo, hi || 1);
    const y = (v) => MARGIN.top + innerH - ((v - yt.min) / (yt.max - yt.min)) * innerH;
    const root = svg('svg', {
      class: 'chart-svg', width: w, height, viewBox: `0 0 ${w} ${height}`,
      role: 'img', 'aria-labelledby': captionId, tabindex: '0', focusable: 'true',
    });
    const grid = svg('g', { class: 'chart-grid' });
    for (const v of yt.ticks) {
      grid.append(svg('line', { x1: MARGIN.left, x2: w - MARGIN.right, y1: y(v), y2: y(v) }));
      grid.append(svg('text', { x: MARGIN.left - 6, y: y(v), 'text-anchor': 'end', 'dominant-baseline': 'middle' }, format(v)));
    }
    const tt = timeTicks(t0, t1, innerW);
    for (const t of tt.ticks) {
      grid.append(svg('text', { x: x(t), y: height - 8, 'text-anchor': 'middle' }, timeLabel(t, tt.step)));
    }
    root.append(grid);
    const layer = svg('g', { class: 'chart-series' });
    if (kind === 'stacked') {
      const base = times.map(() => 0);
      for (const s of series) {
        const top = times.map((_, i) => base[i] + (Number(s.values[i]) || 0));
        let d = `M${x(times[0])},${y(top[0])}`;
        for (let i = 1; i < times.length; i++) d += `L${x(times[i])},${y(top[i])}`;
        for (let i = times.length - 1; i >= 0; i--) d += `L${x(times[i])},${y(base[i])}`;
        layer.append(svg('path', { d: `${d}Z`, class: `area ${s.cls}` }));
        for (let i = 0; i < times.length; i++) base[i] = top[i];
      }
    } else if (kind === 'bars') {
      const slot = innerW / Math.max(1, times.length);
      const bw = Math.max(1, Math.min(14, slot * 0.8 / series.length));
      series.forEach((s, si) => {
        let d = '';
        for (let i = 0; i < times.length; i++) {
          const v = Number(s.values[i]) || 0;
          if (!v) continue;
          const bx = x(times[i]) - (bw * series.length) / 2 + si * bw;
          const y0 = y(0);
          const y1 = y(v);
          d += `M${bx},${Math.min(y0, y1)}h${bw}v${Math.max(0.5, Math.abs(y1 - y0))}h${-bw}Z`;
        }
        if (d) layer.append(svg('path', { d, class: `bar ${s.cls}` }));
      });
      layer.append(svg('line', { class: 'chart-zero', x1: MARGIN.left, x2: w - MARGIN.right, y1: y(0), y2: y(0) }));
    } else {
      for (const s of series) {
        let d = '';
        for (let i = 0; i < times.length; i++) {
          const v = s.values[i];
          if (v === null || v === undefined || !Number.isFinite(Number(v))) continue;
          d += `${d ? 'L' : 'M'}${x(times[i])},${y(Number(v))}`;
        }
        if (kind === 'area' && d) {
          layer.append(svg('path', { d: `${d}L${x(times[times.length - 1])},${y(0)}L${x(times[0])},${y(0)}Z`, class: `area area-soft ${s.cls}` }));
        }
        layer.append(svg('path', { d, class: `line ${s.cls}` }));
      }
    }
    root.append(layer);
    const crosshair = svg('line', { class: 'chart-cursor', y1: MARGIN.top, y2: MARGIN.top + innerH, visibility: 'hidden' });
    root.append(crosshair);
    geometry = { x, crosshair, w };
    plot.querySelector('svg')?.remove();
    plot.prepend(root);

    const show = (i) => {
      cursor = i;
      if (i < 0) {
        crosshair.setAttribute('visibility', 'hidden');
        tip.hidden = true;
        return;
      }
      const cx = x(times[i]);
      crosshair.setAttribute('x1', cx);
      crosshair.setAttribute('x2', cx);
      crosshair.setAttribute('visibility', 'visible');
      tip.replaceChildren(
        el('strong', {}, fullTime(times[i])),
        ...series.map((s) => el('span', {}, el('span', { class: `swatch ${s.cls}` }), `${s.name}: ${format(s.values[i])}`)),
      );
      tip.hidden = false;
      const left = cx + 12 + 180 > w ? cx - 12 - 180 : cx + 12;
      tip.style.left = `${Math.max(0, left)}px`;
      tip.style.top = `${MARGIN.top}px`;
    };
    const nearest = (px) => {
      let best = 0;
      let bestD = Infinity;
      for (let i = 0; i < times.length; i++) {
        const d = Math.abs(x(times[i]) - px);
        if (d < bestD) {
          bestD = d;
          best = i;
        }
      }
      return best;
    };
    root.addEventListener('pointermove', (event) => {
      const rect = root.getBoundingClientRect();
      show(nearest(event.clientX - rect.left));
    });
    root.addEventListener('pointerleave', () => show(-1));
    root.addEventListener('blur', () => show(-1));
    root.addEventListener('keydown', (event) => {
      if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
        event.preventDefault();
        const next = cursor < 0 ? times.length - 1 : cursor + (event.key === 'ArrowRight' ? 1 : -1);
        show(Math.max(0, Math.min(times.length - 1, next)));
      } else if (event.key === 'Escape') {
        show(-1);
      }
    });
    if (cursor >= 0) show(Math.min(cursor, times.length - 1));
  };

  // Drawn at the plot's width, in the next frame (changing the layout inside the observer's
  // callback would make it fire again in the same frame).
  let pendingWidth = 0;
  const observer = new ResizeObserver((entries) => {
    const width = Math.floor(entries[0].contentRect.width);
    if (width <= 0 || Math.abs(width - lastWidth) <= 1) return;
    if (!pendingWidth) {
      requestAnimationFrame(() => {
        const w = pendingWidth;
        pendingWidth = 0;
        if (plot.isConnected) draw(w);
      });
    }
    pendingWidth = width;
  });
  observer.observe(plot);
  return figure;
}

/**
 * Horizontal bars: [{label, value, secondary?, href?, testid?, title?}] out of `total`.
 * `secondary` (≤ value) is drawn inside the bar, e.g. the share that answered a probe.
 */
export function barList({ items, total, label, secondaryLabel, testid, itemTestid, format = fmtInt }) {
  const max = Math.max(1, ...items.map((i) => Number(i.value) || 0));
  return el('ul', { class: 'bar-list', 'aria-label': label, testid },
    items.map((item) => {
      const value = Number(item.value) || 0;
      const bar = el('span', { class: 'bar-fill' });
      bar.style.width = `${(value / max) * 100}%`;
      const track = el('span', { class: 'bar-track', 'aria-hidden': 'true' }, bar);
      if (item.secondary !== undefined && item.secondary !== null) {
        const inner = el('span', { class: 'bar-fill bar-secondary' });
        inner.style.width = `${(Math.min(value, Number(item.secondary) || 0) / max) * 100}%`;
        track.append(inner);
      }
      const share = total ? ` (${((value / total) * 100).toFixed(1)}%)` : '';
      const name = item.href ? el('a', { href: item.href }, item.label) : item.label;
      return el('li', { class: 'bar-row', testid: itemTestid, dataset: { key: String(item.key ?? item.label) }, title: item.title },
        el('span', { class: 'bar-label' }, name),
        track,
        el('span', { class: 'bar-value num' }, format(value), el('span', { class: 'muted' }, share),
          item.secondary !== undefined && item.secondary !== null
            ? el('span', { class: 'bar-secondary-text muted' }, ` · ${format(item.secondary)} ${secondaryLabel || ''}`)
            : null));
    }));
}

/**
 * A node's up/down history as a horizontal timeline of sessions between `from` and `to`.
 * sessions: [{up, start, end|null}]
 */
export function sessionTimeline({ sessions, from, to, testid }) {
  const w = 1000;
  const h = 28;
  const span = Math.max(1, to - from);
  const root = svg('svg', {
    class: 'timeline', viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': 'Up and down periods', testid,
  });
  root.append(svg('rect', { class: 'timeline-unknown', x: 0, y: 0, width: w, height: h }));
  let upSecs = 0;
  let knownSecs = 0;
  for (const s of sessions) {
    const start = Math.max(from, Number(s.start) || from);
    const end = Math.min(to, s.end === null || s.end === undefined ? to : Number(s.end));
    if (end <= start) continue;
    knownSecs += end - start;
    if (s.up) upSecs += end - start;
    const rect = svg('rect', {
      class: s.up ? 'timeline-up' : 'timeline-down',
      x: ((start - from) / span) * w,
      y: 0,
      width: Math.max(1, ((end - start) / span) * w),
      height: h,
    });
    rect.append(svg('title', {}, `${s.up ? 'Up' : 'Down'} ${fullTime(start)} – ${s.end ? fullTime(end) : 'now'}`));
    root.append(rect);
  }
  return { element: root, upShare: knownSecs ? upSecs / knownSecs : null };
}
