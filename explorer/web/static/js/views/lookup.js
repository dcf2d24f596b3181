// #/lookup: trace a Kademlia lookup from the explorer's node (POST /api/v1/lookups) and
// replay it round by round on the graph: who was queried, who answered or failed, whom the
// answers introduced, and how close the last round came to the target.
// #/lookup?target=<id> fills in (and runs) a lookup for that NodeId.

import { post, ApiError, describeError } from '../api.js';
import { ensureGraph } from '../graph-data.js';
import {
  el, uid, fmtInt, fmtMs, shortId, NODE_ID_RE, normaliseNodeId, keyFraction, prefersReducedMotion,
} from '../util.js';

const PLAY_STEP_MS = 1400;

function idLinks(ids, testid) {
  if (!ids.length) return el('span', { class: 'muted' }, 'none');
  return el('ul', { class: 'id-list', testid },
    ids.map((id) => el('li', {}, el('a', { href: `#/node/${encodeURIComponent(id)}`, class: 'mono', title: id, dataset: { nodeId: id } }, shortId(id, 12)))));
}

function legendItem(cls, text) {
  return el('li', {}, el('span', { class: `ring-swatch ${cls}`, 'aria-hidden': 'true' }), text);
}

export async function renderLookup(ctx) {
  let graph = null;
  let graphError = null;
  try {
    graph = await ensureGraph();
  } catch (err) {
    graphError = err;
  }
  const overview = await ctx.app.ensureOverview(60_000).catch(() => null);
  if (graph && overview && overview.explorer) graph.setSelf(overview.explorer.node_id);

  let result = null;
  let round = 1;
  let playTimer = null;
  let running = false;
  const saved = graph ? { layout: graph.layoutMode, filter: { ...graph.filter } } : null;

  // ---------------------------------------------------------------- form
  const inputId = uid('target');
  const input = el('input', {
    id: inputId, type: 'text', testid: 'lookup-target', autocomplete: 'off', spellcheck: 'false',
    maxlength: '64', class: 'mono input-id', placeholder: '52-character NodeId',
    value: ctx.params.get('target') || '', 'aria-describedby': 'lookup-target-hint',
  });
  const randomButton = el('button', { type: 'button', class: 'btn', testid: 'lookup-random', disabled: !graph || !graph.data.ids.length }, 'Pick a random node');
  const submit = el('button', { type: 'submit', class: 'btn btn-primary', testid: 'lookup-submit' }, 'Trace lookup');
  const error = el('p', { class: 'message message-error', testid: 'lookup-error', role: 'alert', hidden: true });
  const form = el('form', { class: 'card toolbar', testid: 'lookup-form', 'aria-label': 'Trace a lookup', novalidate: true },
    el('div', { class: 'field field-grow' },
      el('label', { for: inputId }, 'Target NodeId'),
      input,
      el('span', { id: 'lookup-target-hint', class: 'muted small' },
        'The explorer\'s node looks the target up in the DHT, as any node would. The target need not exist.')),
    randomButton,
    submit);
  randomButton.addEventListener('click', () => {
    const ids = graph.data.ids;
    input.value = ids[Math.floor(Math.random() * ids.length)];
    input.focus();
  });

  // ---------------------------------------------------------------- result
  const resultEl = el('div', { class: 'lookup-result', testid: 'lookup-result', hidden: true });
  const summary = el('dl', { class: 'facts', testid: 'lookup-summary' });
  const prev = el('button', { type: 'button', class: 'btn', testid: 'lookup-prev', 'aria-label': 'Previous round' }, '◀');
  const play = el('button', { type: 'button', class: 'btn', testid: 'lookup-play' }, '▶ Play');
  const next = el('button', { type: 'button', class: 'btn', testid: 'lookup-next', 'aria-label': 'Next round' }, '▶▶');
  const sliderId = uid('round');
  const slider = el('input', { type: 'range', id: sliderId, min: '1', max: '1', value: '1', step: '1', testid: 'lookup-round-slider' });
  const roundLabel = el('span', { class: 'round-label', testid: 'lookup-round-label', 'aria-live': 'polite' });
  const layoutId = uid('layout');
  const layoutSelect = el('select', { id: layoutId, testid: 'lookup-layout' },
    el('option', { value: 'ring', selected: true }, 'Key space (ring)'),
    el('option', { value: 'force' }, 'Force-directed'));
  layoutSelect.addEventListener('change', () => {
    if (!graph) return;
    graph.setLayout(layoutSelect.value);
    if (result) zoomToLookup();
  });
  const zoomButton = el('button', { type: 'button', class: 'btn', testid: 'lookup-zoom' }, 'Zoom to lookup');
  const wholeButton = el('button', { type: 'button', class: 'btn', testid: 'lookup-whole' }, 'Whole network');
  zoomButton.addEventListener('click', () => zoomToLookup());
  wholeButton.addEventListener('click', () => graph && graph.fitAll());
  const player = el('div', { class: 'player', role: 'group', 'aria-label': 'Replay rounds' },
    prev, play, next,
    el('label', { for: sliderId, class: 'visually-hidden' }, 'Round'), slider, roundLabel,
    graph ? el('span', { class: 'player-layout' }, zoomButton, wholeButton, el('label', { for: layoutId }, 'Layout'), layoutSelect) : null);
  const stage = el('div', { class: 'graph-stage-wrap graph-stage-lookup' });
  const roundsBody = el('tbody', {});
  const roundsTable = el('div', { class: 'table-wrap' },
    el('table', { testid: 'lookup-rounds' },
      el('caption', { class: 'visually-hidden' }, 'Lookup rounds'),
      el('thead', {}, el('tr', {},
        ['Round', 'Queried', 'Answered', 'Failed', 'Learned'].map((h, i) => el('th', { scope: 'col', class: i >= 1 ? 'num' : undefined }, h)),
        el('th', { scope: 'col' }, el('span', { class: 'visually-hidden' }, 'Node lists')))),
      roundsBody));
  const closestEl = el('div', { testid: 'lookup-closest-wrap' });
  const legend = el('ul', { class: 'lookup-legend small', 'aria-label': 'Legend' },
    legendItem('ring-answered', 'answered'), legendItem('ring-failed', 'failed'),
    legendItem('ring-queried', 'queried, no answer yet'), legendItem('ring-learned', 'learned this round'),
    legendItem('ring-past', 'queried earlier'), legendItem('ring-closest', 'closest at the end'),
    el('li', {}, el('span', { class: 'target-swatch', 'aria-hidden': 'true' }, '⊕'), 'target'));

  resultEl.append(
    el('section', { class: 'card panel', 'aria-label': 'Lookup result' }, summary),
    el('section', { class: 'card panel lookup-replay', 'aria-label': 'Replay on the graph' },
      player,
      graph ? stage : el('p', { class: 'muted' }, `The graph is unavailable (${describeError(graphError)}); the rounds are listed below.`),
      graph ? legend : null),
    el('section', { class: 'card panel', 'aria-labelledby': 'rounds-title' },
      el('h2', { id: 'rounds-title', class: 'panel-title' }, 'Rounds'),
      roundsTable),
    el('section', { class: 'card panel', 'aria-labelledby': 'closest-title' },
      el('h2', { id: 'closest-title', class: 'panel-title' }, 'Closest nodes found'),
      closestEl));

  function overlayFor(r) {
    if (!graph || !result) return null;
    const index = graph.data.index;
    const rounds = result.rounds;
    const toIdx = (ids) => ids.map((id) => index.get(id)).filter((i) => i !== undefined);
    const current = rounds[r - 1] || { queried: [], answered: [], failed: [], learned: [] };
    const answered = new Set(current.answered || []);
    const failed = new Set(current.failed || []);
    const pastIds = new Set();
    for (let i = 0; i < r - 1; i++) for (const id of rounds[i].queried || []) pastIds.add(id);
    for (const id of current.queried || []) pastIds.delete(id);
    const targetIndex = index.has(result.target) ? index.get(result.target) : -1;
    return {
      nodes: {
        past: toIdx([...pastIds]),
        queried: toIdx((current.queried || []).filter((id) => !answered.has(id) && !failed.has(id))),
        answered: toIdx([...answered]),
        failed: toIdx([...failed]),
        learned: toIdx((current.learned || []).filter((id) => !pastIds.has(id))),
        closest: r === rounds.length ? toIdx(result.closest || []) : [],
      },
      targetIndex,
      targetKey: keyFraction(result.target),
    };
  }

  function zoomToLookup() {
    if (!graph || !result) return;
    const index = graph.data.index;
    const ids = new Set([result.target, ...result.closest]);
    for (const x of result.rounds) for (const id of x.queried) ids.add(id);
    const indices = [...ids].map((id) => index.get(id)).filter((i) => i !== undefined);
    const points = graph.layoutMode === 'ring' ? [graph.ringPoint(keyFraction(result.target))] : [];
    graph.whenPositioned(() => graph.fitToNodes(indices, points));
  }

  function showRound(r) {
    if (!result) return;
    const total = result.rounds.length;
    round = Math.max(1, Math.min(total, r));
    slider.value = String(round);
    roundLabel.textContent = total ? `Round ${round} of ${total}` : 'No rounds';
    prev.disabled = round <= 1;
    next.disabled = round >= total;
    for (const row of roundsBody.querySelectorAll('tr[data-round]')) {
      row.classList.toggle('row-current', Number(row.dataset.round) === round);
      if (Number(row.dataset.round) === round) row.setAttribute('aria-current', 'step');
      else row.removeAttribute('aria-current');
    }
    if (graph) graph.setOverlay(overlayFor(round));
  }

  function stop() {
    clearInterval(playTimer);
    playTimer = null;
    play.textContent = '▶ Play';
  }

  function start() {
    if (!result || !result.rounds.length) return;
    if (round >= result.rounds.length) showRound(1);
    play.textContent = '❚❚ Pause';
    playTimer = setInterval(() => {
      if (round >= result.rounds.length) {
        stop();
        return;
      }
      showRound(round + 1);
    }, PLAY_STEP_MS);
  }

  prev.addEventListener('click', () => { stop(); showRound(round - 1); });
  next.addEventListener('click', () => { stop(); showRound(round + 1); });
  play.addEventListener('click', () => (playTimer ? stop() : start()));
  slider.addEventListener('input', () => { stop(); showRound(Number(slider.value)); });

  function showResult(r) {
    result = {
      target: String(r.target ?? ''),
      found: Boolean(r.found),
      duration_ms: r.duration_ms,
      rounds: (Array.isArray(r.rounds) ? r.rounds : []).map((x) => ({
        round: x.round,
        queried: Array.isArray(x.queried) ? x.queried : [],
        answered: Array.isArray(x.answered) ? x.answered : [],
        failed: Array.isArray(x.failed) ? x.failed : [],
        learned: Array.isArray(x.learned) ? x.learned : [],
      })),
      closest: Array.isArray(r.closest) ? r.closest : [],
    };
    const contacted = new Set();
    for (const x of result.rounds) for (const id of x.queried) contacted.add(id);
    const drawn = graph ? [...contacted].filter((id) => graph.data.index.has(id)).length : 0;
    summary.replaceChildren(...[
      ['Target', el('a', { href: `#/node/${encodeURIComponent(result.target)}`, class: 'mono', title: result.target }, shortId(result.target, 16)), 'lookup-result-target'],
      ['Found', el('span', { class: `badge ${result.found ? 'badge-up' : 'badge-down'}`, dataset: { found: String(result.found) } }, result.found ? 'yes' : 'no'), 'lookup-found'],
      ['Duration', fmtMs(result.duration_ms), 'lookup-duration'],
      ['Rounds', fmtInt(result.rounds.length), 'lookup-round-count'],
      ['Nodes queried', fmtInt(contacted.size), 'lookup-contacted'],
      graph ? ['On the graph', `${fmtInt(drawn)} of ${fmtInt(contacted.size)}`, 'lookup-drawn'] : null,
    ].filter(Boolean).map(([t, v, id]) => el('div', { class: 'fact' }, el('dt', {}, t), el('dd', { testid: id }, v))));
    roundsBody.replaceChildren(...result.rounds.map((x, i) => {
      const n = i + 1;
      const row = el('tr', { testid: 'lookup-round', dataset: { round: String(n) }, class: 'clickable' },
        el('th', { scope: 'row' }, el('button', { type: 'button', class: 'link-button', testid: 'lookup-round-show' }, `Round ${x.round ?? n}`)),
        el('td', { class: 'num' }, fmtInt(x.queried.length)),
        el('td', { class: 'num' }, fmtInt(x.answered.length)),
        el('td', { class: 'num' }, fmtInt(x.failed.length)),
        el('td', { class: 'num' }, fmtInt(x.learned.length)),
        el('td', {}, el('details', {}, el('summary', {}, 'Nodes'),
          el('div', { class: 'round-details' },
            el('h3', { class: 'small-heading' }, 'Queried'), idLinks(x.queried),
            el('h3', { class: 'small-heading' }, 'Failed'), idLinks(x.failed),
            el('h3', { class: 'small-heading' }, 'Learned'), idLinks(x.learned)))));
      row.querySelector('button').addEventListener('click', () => { stop(); showRound(n); });
      return row;
    }));
    closestEl.replaceChildren(idLinks(result.closest, 'lookup-closest'));
    slider.max = String(Math.max(1, result.rounds.length));
    resultEl.hidden = false;
    resultEl.dataset.rounds = String(result.rounds.length);
    // The stage was hidden until now: measure it before framing the lookup.
    if (graph) graph.resize();
    showRound(1);
    // Frame the lookup: it usually spans a small arc of the key space.
    zoomToLookup();
    if (!prefersReducedMotion() && result.rounds.length > 1) start();
  }

  async function run() {
    const target = normaliseNodeId(input.value);
    error.hidden = true;
    if (!NODE_ID_RE.test(target)) {
      error.textContent = 'Enter a NodeId: 52 characters of base32 (a–z and 2–7).';
      error.hidden = false;
      input.focus();
      return;
    }
    if (running) return;
    running = true;
    stop();
    submit.disabled = true;
    submit.setAttribute('aria-busy', 'true');
    submit.textContent = 'Tracing…';
    ctx.app.replaceParams(new URLSearchParams({ target }));
    try {
      const r = await post('/lookups', { target });
      if (!ctx.isCurrent()) return;
      showResult(r);
    } catch (err) {
      if (!ctx.isCurrent()) return;
      error.textContent = err instanceof ApiError && err.status === 429
        ? 'Too many lookups are running right now. Try again in a few seconds.'
        : `The lookup failed: ${describeError(err)}`;
      error.hidden = false;
    } finally {
      running = false;
      submit.disabled = false;
      submit.removeAttribute('aria-busy');
      submit.textContent = 'Trace lookup';
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    run();
  });

  const element = el('section', { class: 'page page-wide', testid: 'page-lookup', 'aria-labelledby': 'lookup-title' },
    el('div', { class: 'page-head' }, el('h1', { id: 'lookup-title', class: 'page-title' }, 'Lookup trace')),
    form, error, resultEl);

  return {
    element,
    title: 'Lookup',
    mounted: () => {
      if (graph) {
        graph.onOpen = (id) => ctx.app.navigate(`#/node/${encodeURIComponent(id)}`);
        graph.setFilter({ state: 'all', capability: '', version: '' });
        graph.select(-1, { announce: false });
        if (graph.layoutMode !== layoutSelect.value) graph.setLayout(layoutSelect.value);
        graph.mount(stage);
      }
      if (input.value) run();
      else input.focus();
    },
    update: (params) => {
      const target = params.get('target');
      if (target && normaliseNodeId(target) !== normaliseNodeId(input.value)) {
        input.value = target;
        run();
      }
    },
    destroy: () => {
      stop();
      if (graph) {
        graph.unmount();
        if (saved) {
          graph.setFilter(saved.filter);
          if (graph.layoutMode !== saved.layout) graph.setLayout(saved.layout);
        }
      }
    },
  };
}
