// Parses GET /api/v1/graph's body. Plain functions, no DOM: also run by
// explorer/tests/browser/graph-units.mjs under Node.
//
// The body is {"crawl_id":…,"edges":[[i,j],…],"nodes":[…],"simulated":…} (serde_json
// writes an object's keys sorted and no spaces). For 10,000 nodes the edges are ~800,000
// pairs, ~9 MB of the ~11 MB: JSON.parse made an array per pair (~0.25 s) and the page
// then copied them into typed arrays (~0.15 s). They are read here straight from the
// bytes into one Uint32Array instead, and only the rest goes through JSON.parse.

import { ApiError } from './api.js';

const EDGES_KEY = Array.from('"edges":[', (c) => c.charCodeAt(0));
const EDGES_KEY_WITHIN = 1024; // bytes from the start: only crawl_id comes before it

/**
 * Where the top-level key `"edges":[` starts among the first bytes, or -1: the scan keeps
 * track of strings and nesting, so the same text inside a string does not count.
 */
function findEdgesKey(bytes) {
  const end = Math.min(bytes.length, EDGES_KEY_WITHIN);
  let depth = 0;
  let inString = false;
  for (let i = 0; i < end; i++) {
    const c = bytes[i];
    if (inString) {
      if (c === 92) i += 1; // "\": skip the escaped character
      else if (c === 34) inString = false;
      continue;
    }
    if (c === 34) {
      if (depth === 1 && EDGES_KEY.every((k, j) => bytes[i + j] === k)) return i;
      inString = true;
    } else if (c === 123 || c === 91) {
      depth += 1;
    } else if (c === 125 || c === 93) {
      depth -= 1;
    }
  }
  return -1;
}

/**
 * Reads the edges array that starts at `start` (just after its `[`) as [a,b] pairs of
 * non-negative integers written without spaces: {edges (flat pairs), end (the index just
 * after its `]`)}, or null for anything else (then the caller parses the whole body).
 */
function readEdges(bytes, start) {
  // Each pair takes at least 6 bytes ("[0,1],"): that bounds how many there can be.
  const out = new Uint32Array(2 * Math.floor((bytes.length - start) / 6) + 2);
  let m = 0;
  let p = start;
  let c = bytes[p];
  if (c === 93) return { edges: out.slice(0, 0), end: p + 1 }; // "]": no edges
  for (;;) {
    if (c !== 91) return null; // "["
    c = bytes[++p];
    if (!(c >= 48 && c <= 57)) return null;
    let a = c - 48;
    while ((c = bytes[++p]) >= 48 && c <= 57) a = a * 10 + (c - 48);
    if (c !== 44) return null; // ","
    c = bytes[++p];
    if (!(c >= 48 && c <= 57)) return null;
    let b = c - 48;
    while ((c = bytes[++p]) >= 48 && c <= 57) b = b * 10 + (c - 48);
    if (c !== 93) return null; // "]"
    // Indices past any node are dropped by the view; past 32 bits they would wrap.
    out[m++] = a > 0xffffffff ? 0xffffffff : a;
    out[m++] = b > 0xffffffff ? 0xffffffff : b;
    c = bytes[++p];
    if (c === 44) {
      c = bytes[++p];
    } else if (c === 93) {
      return { edges: out.slice(0, m), end: p + 1 };
    } else {
      return null;
    }
  }
}

/**
 * GET /api/v1/graph's body (an ArrayBuffer) as {crawl_id, simulated, nodes, edges}, with
 * `edges` a Uint32Array of index pairs; if the body is not laid out as expected, all of it
 * goes through JSON.parse (and `edges` is the array of pairs that GraphView also takes).
 */
export function parseGraph(buffer) {
  const bytes = new Uint8Array(buffer);
  const decoder = new TextDecoder();
  try {
    const at = findEdgesKey(bytes);
    const read = at >= 0 ? readEdges(bytes, at + EDGES_KEY.length) : null;
    if (read) {
      // The rest of the object, with an empty edges array in the place of the real one.
      const rest = JSON.parse(`${decoder.decode(bytes.subarray(0, at))}"edges":[]${decoder.decode(bytes.subarray(read.end))}`);
      // The spliced `[]` must be what JSON.parse took for the edges, else parse it all.
      if (rest && Array.isArray(rest.edges) && rest.edges.length === 0) {
        rest.edges = read.edges;
        return rest;
      }
    }
  } catch (_) {
    // Fall through to the plain parse, which reports what is wrong.
  }
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch (_) {
    throw new ApiError(200, 'bad_response', 'The explorer sent a response that is not JSON.');
  }
}
