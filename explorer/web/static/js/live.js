// Live updates: one EventSource on /api/v1/events, fanned out to whoever listens.
// Events: `node` (a NodeSummary, new or changed up/down), `crawl` (a finished Crawl),
// `crawl_started` ({id, started_at}).

import { API } from './api.js';

const EVENT_TYPES = ['node', 'crawl', 'crawl_started'];

export class Live {
  constructor() {
    this.listeners = new Map(); // type -> Set(fn)
    this.state = 'idle'; // idle | connecting | open | retrying
    this.source = null;
    this.retryMs = 1000;
    this.retryTimer = null;
    this.lastEventAt = 0;
    this.count = 0;
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  emit(type, data) {
    for (const fn of this.listeners.get(type) || []) {
      try {
        fn(data);
      } catch (err) {
        console.warn('explorer: live listener failed', err); // eslint-disable-line no-console
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  connect() {
    if (typeof EventSource === 'undefined') {
      this.setState('unsupported');
      return;
    }
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.setState('connecting');
    const source = new EventSource(`${API}/events`);
    this.source = source;
    source.onopen = () => {
      this.retryMs = 1000;
      this.setState('open');
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status or a wrong content type): retry ourselves.
        source.close();
        this.setState('retrying');
        this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, 30_000);
      } else {
        this.setState('retrying');
      }
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        if (!data || typeof data !== 'object') return;
        this.lastEventAt = Date.now();
        this.count += 1;
        this.emit(type, data);
        this.emit('any', { type, data });
      });
    }
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState('idle');
  }
}

export const live = new Live();
