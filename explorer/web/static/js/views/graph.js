// #/graph: the overlay as a graph (canvas, laid out in a worker), with filters, colouring,
// find, and a side panel for the selected node. #/graph?focus=<id> selects a node.

import { get, describeError } from '../api.js';
import { ensureGraph, scheduleGraphRefresh, cancelGraphRefresh } from '../graph-data.js';
import {
  el, replace, uid, fmtInt, fmtMs, fmtPercent, fmtAgo, shortId, stateBadge, badgeList,
  CAPABILITIES, capabilityLabel, normaliseNodeId,
} from '../util.js';

function selectField(label, testid, options, value, onChange) {
  const id = uid(testid);
  const control = el('select', { id, testid },
    options.map(([v, text]) => el('option', { value: v, selected: v === value }, text)));
  control.addEventListener('change', () => onChange(control.value));
  return el('div', { class: 'field' }, el('label', { for: id }, label), control);
}

const STATE_TEXT = {
  running: 'laying out…',
  settled: 'layout settled',
  paused: 'layout paused',
  ring: 'key-space ring',
  idle: 'waiting for data',
};

export async function renderGraph(ctx) {
  const graph = await ensureGraph();
  const overview = await ctx.app.ensureOverview(60_000).catch(() => null);
  if (overview && overview.explorer) graph.setSelf(overview.explorer.node_id);
  let detailSeq = 0;

  // ---------------------------------------------------------------- controls
  const versions = graph.versionsList();
  // Pause / resume while the layout runs; run it again once it has settled.
  const pauseButton = el('button', { type: 'button', class: 'btn', testid: 'graph-layout-toggle' }, 'Pause layout');
  let layoutState = 'running';
  const syncPause = (state) => {
    layoutState = state;
    pauseButton.disabled = state === 'ring' || state === 'idle';
    pauseButton.textContent = state === 'paused' ? 'Resume layout' : state === 'settled' ? 'Run layout again' : 'Pause layout';
  };
  pauseButton.addEventListener('click', () => {
    if (layoutState === 'settled') graph.rerun();
    else graph.setRunning(!graph.running);
    syncPause(layoutState === 'settled' ? 'running' : graph.running ? 'running' : 'paused');
  });

  const findId = uid('find');
  const findInput = el('input', {
    type: 'search', id: findId, testid: 'graph-find', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'NodeId or fingerprint prefix',
  });
  const findMessage = el('p', { class: 'find-message small', testid: 'graph-find-message', role: 'status' });
  const findForm = el('form', { class: 'find', testid: 'graph-find-form', role: 'search', 'aria-label': 'Find a node on the graph' },
    el('div', { class: 'field' }, el('label', { for: findId }, 'Find a node'), findInput),
    el('button', { type: 'submit', class: 'btn' }, 'Find'));
  findForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const q = normaliseNodeId(findInput.value);
    findMessage.textContent = '';
    if (!q) return;
    let id = graph.data.ids.find((x) => x.startsWith(q));
    if (!id) {
      try {
        const found = await get(`/nodes?q=${encodeURIComponent(q)}&per_page=1`);
        const first = found && Array.isArray(found.nodes) ? found.nodes[0] : null;
        if (first) id = first.id;
      } catch (err) {
        findMessage.textContent = describeError(err);
        return;
      }
    }
    if (id && graph.selectId(id, { center: true })) {
      findMessage.textContent = '';
    } else {
      findMessage.textContent = id ? 'That node is listed but not in the drawn graph.' : 'No node matches.';
    }
  });

  const filters = el('div', { class: 'card toolbar graph-toolbar', testid: 'graph-controls', role: 'group', 'aria-label': 'Graph filters and display' },
    selectField('State', 'graph-filter-state', [['all', 'All'], ['up', 'Up'], ['down', 'Down']], graph.filter.state,
      (v) => graph.setFilter({ state: v })),
    selectField('Capability', 'graph-filter-capability', [['', 'Any'], ...CAPABILITIES.map((c) => [c, capabilityLabel(c)])], graph.filter.capability,
      (v) => graph.setFilter({ capability: v })),
    selectField('Version', 'graph-filter-version', [['', 'Any'], ...versions.map(([v, count]) => [v ?? 'unknown', `${v ?? 'unknown'} (${fmtInt(count)})`])], graph.filter.version,
      (v) => graph.setFilter({ version: v })),
    selectField('Colour by', 'graph-colour', [['state', 'State'], ['version', 'Version'], ['capability', 'Capability']], graph.colourMode,
      (v) => graph.setColourMode(v)),
    selectField('Layout', 'graph-layout', [['force', 'Force-directed'], ['ring', 'Key space (ring)']], graph.layoutMode,
      (v) => graph.setLayout(v)),
    el('div', { class: 'field field-button' }, pauseButton),
    el('div', { class: 'toolbar-end' }, findForm));

  const status = el('p', { class: 'graph-status muted small', testid: 'graph-status' });
  const updateStatus = (stats) => {
    const layout = stats.layout || {};
    if (layout.state) syncPause(layout.state);
    const parts = [
      `${fmtInt(stats.nodes)} nodes`,
      `${fmtInt(stats.edges)} links`,
      graph.data.crawlId !== null ? `crawl #${graph.data.crawlId}` : null,
      graph.data.simulated ? 'simulated' : null,
      layout.state === 'running' ? `${STATE_TEXT.running} (${fmtInt(layout.ticks)} steps)` : STATE_TEXT[layout.state] || '',
    ].filter(Boolean);
    status.textContent = parts.join(' · ');
  };

  // ---------------------------------------------------------------- side panel
  const panelTitleId = uid('panel');
  const panelBody = el('div', { class: 'graph-panel-body' });
  const closeButton = el('button', { type: 'button', class: 'btn btn-small btn-quiet', testid: 'graph-panel-close', 'aria-label': 'Close the node panel' }, '×');
  const panelEl = el('aside', { class: 'card graph-panel', testid: 'graph-panel', 'aria-labelledby': panelTitleId, hidden: true },
    el('div', { class: 'graph-panel-head' }, el('h2', { id: panelTitleId, class: 'panel-title' }, 'Selected node'), closeButton),
    panelBody);
  closeButton.addEventListener('click', () => {
    graph.select(-1);
    graph.canvas.focus();
  });
  const hint = el('aside', { class: 'card graph-panel graph-hint', testid: 'graph-hint' },
    el('h2', { class: 'panel-title' }, 'Explore'),
    el('ul', { class: 'plain small' },
      el('li', {}, 'Click a node to see it here; double-click opens its page.'),
      el('li', {}, 'Drag to pan, scroll or pinch to zoom.'),
      el('li', {}, 'Keyboard: focus the graph, then arrows, + and −, 0 to fit, Enter to pick the node at the centre.'),
      el('li', {}, el('span', { class: 'self-marker', 'aria-hidden': 'true' }, '◆'), ' marks this explorer\'s own node.')));

  const showPanel = (info) => {
    const seq = ++detailSeq;
    if (!info) {
      panelEl.hidden = true;
      hint.hidden = false;
      delete panelEl.dataset.nodeId;
      const params = new URLSearchParams(location.hash.split('?')[1] || '');
      params.delete('focus');
      ctx.app.replaceParams(params);
      return;
    }
    hint.hidden = true;
    panelEl.hidden = false;
    panelEl.dataset.nodeId = info.id;
    ctx.app.replaceParams(new URLSearchParams({ focus: info.id }));
    const details = el('div', { class: 'graph-panel-details', testid: 'graph-panel-details' }, el('p', { class: 'muted small' }, 'Loading details…'));
    const neighbourList = el('ul', { class: 'plain neighbour-buttons' },
      info.neighbours.slice(0, 12).map((nid) => el('li', {},
        el('button', { type: 'button', class: 'link-button mono', title: nid, onclick: () => graph.selectId(nid, { center: true }) }, shortId(nid, 14)))));
    replace(panelBody,
      el('p', { class: 'mono wrap graph-panel-id', testid: 'graph-panel-id' }, info.id),
      el('p', {}, stateBadge(info.up, 'graph-panel-state'), ' ', info.version ? `v${info.version}` : el('span', { class: 'muted' }, 'unknown version'),
        ' · ', `${fmtInt(info.degree)} links`),
      badgeList(info.capabilities, 'Capabilities', 'badge-cap'),
      details,
      el('p', { class: 'graph-panel-actions' },
        el('a', { class: 'btn btn-primary', href: `#/node/${encodeURIComponent(info.id)}`, testid: 'graph-panel-link' }, 'Open node page'),
        el('a', { class: 'btn', href: `#/lookup?target=${encodeURIComponent(info.id)}`, testid: 'graph-panel-lookup' }, 'Trace lookup')),
      info.neighbours.length ? el('h3', { class: 'small-heading' }, 'Neighbours') : null,
      info.neighbours.length ? neighbourList : null,
      info.neighbours.length > 12 ? el('p', { class: 'muted small' }, `and ${fmtInt(info.neighbours.length - 12)} more on the node page`) : null);
    get(`/nodes/${encodeURIComponent(info.id)}`).then((n) => {
      if (seq !== detailSeq) return;
      details.replaceChildren(el('dl', { class: 'facts facts-tight' },
        [['Fingerprint', el('code', { class: 'mono' }, n.fingerprint || '—')],
          ['Agent', n.agent || '—'],
          ['RTT', fmtMs(n.rtt_ms)],
          ['Uptime 24 h', fmtPercent(n.uptime_24h)],
          ['Last seen', fmtAgo(n.last_seen)]].map(([t, v]) => el('div', { class: 'fact' }, el('dt', {}, t), el('dd', {}, v)))));
    }).catch((err) => {
      if (seq !== detailSeq) return;
      details.replaceChildren(el('p', { class: 'muted small' }, `Details unavailable: ${describeError(err)}`));
    });
  };

  const stage = el('div', { class: 'graph-stage-wrap' });
  const element = el('section', { class: 'page page-wide', testid: 'page-graph', 'aria-labelledby': 'graph-title' },
    el('div', { class: 'page-head page-head-tight' },
      el('h1', { id: 'graph-title', class: 'page-title' }, 'Overlay graph'),
      status),
    filters,
    findMessage,
    el('div', { class: 'graph-layout' }, stage, el('div', { class: 'graph-side' }, panelEl, hint)),
    el('p', { class: 'muted small' }, 'Links are routing-table entries the crawler read; a node\'s position means nothing by itself. ',
      'The key-space ring places each node by its NodeId, so Kademlia neighbours in XOR distance sit close together. ',
      el('a', { href: '#/nodes' }, 'The node list'), ' has the same nodes as a table.'));

  const refreshGraph = () => scheduleGraphRefresh(() => updateStatus(window.__explorerGraphStats));

  // The stage takes the rest of the window, so the whole graph is on screen at once.
  const fitStage = () => {
    if (window.innerWidth < 1000) {
      graph.root.style.height = '';
      return;
    }
    const top = stage.getBoundingClientRect().top + window.scrollY;
    graph.root.style.height = `${Math.max(420, Math.floor(window.innerHeight - top - 16))}px`;
  };

  return {
    element,
    title: 'Graph',
    mounted: () => {
      window.addEventListener('resize', fitStage);
      graph.onSelect = showPanel;
      graph.onOpen = (id) => ctx.app.navigate(`#/node/${encodeURIComponent(id)}`);
      graph.onStats = updateStatus;
      // Size the stage before the graph measures it, so the engine's first image is made
      // for the stage as it will stay (not for a default height a moment later).
      fitStage();
      graph.mount(stage);
      updateStatus(window.__explorerGraphStats);
      const focus = ctx.params.get('focus');
      if (focus) {
        graph.whenPositioned(() => {
          if (!graph.selectId(normaliseNodeId(focus), { center: true })) ctx.app.showError('That node is not in the drawn graph.');
        });
      } else if (graph.selected >= 0) {
        showPanel(graph.nodeInfo(graph.selected));
      }
    },
    update: (params) => {
      const focus = params.get('focus');
      if (focus && (!panelEl.dataset.nodeId || panelEl.dataset.nodeId !== focus)) graph.selectId(normaliseNodeId(focus), { center: true });
    },
    destroy: () => {
      detailSeq += 1;
      cancelGraphRefresh();
      window.removeEventListener('resize', fitStage);
      graph.root.style.height = '';
      graph.unmount();
    },
    live: {
      node: (node) => {
        if (!graph.updateNode(node)) refreshGraph();
      },
      crawl: refreshGraph,
    },
  };
}
