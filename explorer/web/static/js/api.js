// The explorer's JSON API (/api/v1). Errors arrive as {"error": {"code", "message"}}.

export const API = '/api/v1';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * One API request. The answer is the parsed JSON, or with `bytes` (a successful answer
 * only) the body as an ArrayBuffer, for callers that parse it themselves.
 */
export async function api(method, path, { json, signal, bytes = false } = {}) {
  const headers = { Accept: 'application/json' };
  let body;
  if (json !== undefined) {
    body = JSON.stringify(json);
    headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, body, signal, cache: 'no-store', credentials: 'same-origin',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', `Could not reach the explorer (${err.message}).`);
  }
  if (bytes && response.ok) {
    try {
      return await response.arrayBuffer();
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network', `Could not reach the explorer (${err.message}).`);
    }
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = undefined;
    }
  }
  if (!response.ok) {
    const e = data && typeof data === 'object' ? data.error : null;
    const code = e && typeof e.code === 'string' ? e.code : `http_${response.status}`;
    const message = e && typeof e.message === 'string' && e.message
      ? e.message
      : (response.statusText || 'Request failed');
    throw new ApiError(response.status, code, message);
  }
  if (data === undefined) {
    throw new ApiError(response.status, 'bad_response', 'The explorer sent a response that is not JSON.');
  }
  return data;
}

export const get = (path, options) => api('GET', path, options);
export const post = (path, json, options) => api('POST', path, { ...options, json });
export const getBytes = (path, options) => api('GET', path, { ...options, bytes: true });

export function describeError(err) {
  if (err instanceof ApiError) {
    const status = err.status ? ` (HTTP ${err.status})` : '';
    return `${err.message}${status}`;
  }
  return `Unexpected error: ${err && err.message ? err.message : String(err)}`;
}

/** Builds a query string from the set (non-empty) values of `params`. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') continue;
    search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
