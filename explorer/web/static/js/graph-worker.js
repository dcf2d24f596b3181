// Module worker: runs the graph engine (layout + base image) off the page's main thread.
import { GraphEngine } from './graph-engine.js';

const engine = new GraphEngine(
  (msg, transfer) => self.postMessage(msg, transfer),
  (w, h) => new OffscreenCanvas(w, h),
  true,
);

self.onmessage = (event) => {
  try {
    engine.handle(event.data);
  } catch (err) {
    self.postMessage({ type: 'error', message: err && err.message ? err.message : String(err) });
  }
};
