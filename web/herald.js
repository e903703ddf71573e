/**
 * herald.js — the browser client of herald, an SSE event relay.
 *
 * A dependency-free ES module, served by herald itself at `/herald.js`.
 * It reads the stream with `fetch` (so it can send headers and see status
 * codes, which `EventSource` cannot), resumes from the last id it saw,
 * and backs off with jitter instead of giving up.
 *
 * ```js
 * import { HeraldClient } from "https://herald.example.com/herald.js";
 *
 * const client = new HeraldClient({
 *   url: "https://herald.example.com",
 *   map: "my-map",
 *   // Your backend calls POST /api/maps/{map}/sse-tokens with the map key
 *   // and returns the token: the map key never reaches the page.
 *   getToken: async () => {
 *     const r = await fetch("/my-backend/herald-token", { method: "POST" });
 *     if (!r.ok) throw Object.assign(new Error("token"), { status: r.status });
 *     return (await r.json()).token;
 *   },
 *   events: "map.system.*",
 * });
 * client.on("map.system.added", (e) => console.log(e.id, e.data.payload));
 * client.onStateChange(({ state, error }) => console.log(state, error));
 * client.start();
 * ```
 *
 * Options (`new HeraldClient(options)`):
 * - `url` — herald's base URL (default: this page's origin).
 * - `map` — a map's id or slug; omit for the admin firehose
 *   (`/api/events/stream`, admin token only).
 * - `token` — a Bearer credential (a map key held server-side, or the admin
 *   token), sent as the `Authorization` header. Never ship a map key to
 *   a public page: use `getToken`.
 * - `getToken` — `async () => string | {token}`: asked before every
 *   connection for a fresh single-use SSE token from your own backend,
 *   sent as `?token=`. If it throws an error with `status` 401, 403 or 404
 *   the client stops; with `retryAfter` (seconds) it waits that long;
 *   otherwise it backs off.
 * - `events`, `sources` — filters (a string or an array of strings).
 * - `lastEventId` — where to resume from (default: the server's newest).
 * - `minDelayMs` (1000), `maxDelayMs` (30000) — the backoff range; the
 *   server's `retry:` field replaces `minDelayMs` once seen.
 * - `idleTimeoutMs` (45000) — a stream silent this long (herald sends a
 *   keep-alive every 15 s) is treated as broken and reopened.
 * - `onStateChange` — the same as calling `client.onStateChange(fn)`.
 * - `fetch` — a `fetch` implementation (default: the global one).
 *
 * Methods and properties:
 * - `start()` — connects; returns the client. `close()` stops for good.
 * - `on(type, fn)` — `fn({type, id, data})` for each event of `type`
 *   (`data` is the parsed JSON: the event envelope with `payload`, or the
 *   body of `connected` / `backfill_truncated`); `"*"` gets every event.
 *   Returns a function that removes the listener; `off(type, fn)` too.
 * - `onStateChange(fn)` — `fn({state, error, delayMs, attempt})` at every
 *   change of state; returns a function that removes the listener.
 * - `state` — `"idle"` (not started), `"connecting"`, `"open"`, `"backoff"`
 *   (waiting `delayMs` before the next attempt) or `"closed"`.
 * - `lastError` — the last {@link HeraldError}: why it is in `backoff`,
 *   or why it `closed` by itself; null while open and after `close()`.
 *   `lastEventId` — the resume position.
 *
 * Behaviour:
 * - Resumes with the last id seen (`connected`'s id included) as
 *   `last_event_id=`, so nothing is lost and nothing repeats across
 *   reconnects, admin disconnects and herald restarts.
 * - Network errors, 5xx, 429 and 503: backoff with jitter, doubling up to
 *   `maxDelayMs`; a `Retry-After` is honoured (never retried earlier).
 * - 400, 401, 403, 404: closed, with the error in `lastError` (retrying
 *   cannot help). `close()` also ends in `closed`, without an error.
 * - `backfill_truncated` (events were pruned or too many to replay) is
 *   delivered to its listeners and to `"*"`: page through the gap with
 *   the history endpoint if you need it.
 *
 * @module herald
 */

/** An error from herald or from the network, as seen by the client. */
export class HeraldError extends Error {
  /**
   * @param {string} message a human sentence
   * @param {{status?: number, code?: string, retryAfter?: number|null}} [details]
   *   `status` is 0 for a network error; `code` is herald's error code;
   *   `retryAfter` is in seconds.
   */
  constructor(message, { status = 0, code = "NETWORK_ERROR", retryAfter = null } = {}) {
    super(message);
    this.name = "HeraldError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Statuses after which retrying cannot help. */
const FATAL = new Set([400, 401, 403, 404]);

/** Seconds from a `Retry-After` value (delta-seconds or an HTTP date). */
function retryAfterSeconds(value) {
  if (value == null || value === "") return null;
  const n = Number(value);
  if (Number.isFinite(n) && n >= 0) return n;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

/**
 * The error of a non-200 answer. herald exposes `Retry-After` to pages of
 * other origins (`Access-Control-Expose-Headers`).
 */
async function errorOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const message = typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
  return new HeraldError(message, {
    status: response.status,
    code: typeof body.code === "string" ? body.code : `HTTP_${response.status}`,
    retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
  });
}

/**
 * Splits a text stream into SSE events (the WHATWG rules: `\n`, `\r\n` or
 * `\r` line ends, `data` lines joined, comments ignored).
 */
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr < 0 && lf < 0) break;
      let end;
      let next;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        // A lone `\r` at the end may be the first half of `\r\n`.
        if (cr === this.buffer.length - 1) break;
        end = cr;
        next = this.buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0 || this.type !== "") {
        this.onEvent({ type: this.type || "message", data: this.data.join("\n"), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.onEvent({ retry: Number(value) });
  }
}

/** Subscribes to a herald map (or the firehose) and stays subscribed. */
export class HeraldClient {
  /** @param {object} options see the module header */
  constructor(options = {}) {
    if (options.token && options.getToken) {
      throw new TypeError("herald: give either token or getToken, not both");
    }
    if (!options.map && options.getToken) {
      throw new TypeError("herald: SSE tokens are per map; the firehose needs the admin token");
    }
    this.options = options;
    const origin = typeof location === "undefined" ? "" : location.origin;
    this.url = String(options.url || origin).replace(/\/+$/, "");
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.minDelayMs = options.minDelayMs ?? 1000;
    this.maxDelayMs = options.maxDelayMs ?? 30000;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 45000;
    this.state = "idle";
    this.lastError = null;
    this.lastEventId = options.lastEventId || null;
    this.serverRetryMs = null;
    this.attempt = 0;
    this.listeners = new Map();
    this.stateListeners = new Set();
    this.abort = null;
    this.timer = null;
    if (options.onStateChange) this.onStateChange(options.onStateChange);
  }

  /** Listens to events of `type` (`"*"`: all); returns the remover. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  /** Removes a listener added with `on`. */
  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  /** Listens to state changes; returns the remover. */
  onStateChange(fn) {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  /** Connects (once); returns the client. */
  start() {
    if (this.state === "idle") this.connect();
    return this;
  }

  /** Stops for good: no more events, no reconnect. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort?.abort();
    if (this.state !== "closed") this.setState("closed", { error: null });
  }

  setState(state, { error = this.lastError, delayMs = null } = {}) {
    this.state = state;
    this.lastError = error;
    const change = { state, error, delayMs, attempt: this.attempt };
    for (const fn of this.stateListeners) {
      try {
        fn(change);
      } catch (e) {
        report(e);
      }
    }
  }

  emit(type, id, raw) {
    let data = raw;
    try {
      data = JSON.parse(raw);
    } catch {
      // Not JSON: handed over as text.
    }
    const event = { type, id, data };
    for (const key of [type, "*"]) {
      for (const fn of this.listeners.get(key) ?? []) {
        try {
          fn(event);
        } catch (e) {
          report(e);
        }
      }
    }
  }

  streamUrl(token) {
    const path = this.options.map
      ? `/api/maps/${encodeURIComponent(this.options.map)}/events/stream`
      : "/api/events/stream";
    const query = new URLSearchParams();
    const list = (v) => (Array.isArray(v) ? v.join(",") : v);
    if (this.options.events) query.set("events", list(this.options.events));
    if (this.options.sources) query.set("sources", list(this.options.sources));
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    if (token) query.set("token", token);
    const q = query.toString();
    return `${this.url}${path}${q ? `?${q}` : ""}`;
  }

  async connect() {
    if (this.stopped) return;
    this.setState("connecting");
    const abort = new AbortController();
    this.abort = abort;
    let error;
    try {
      const headers = {};
      let token = null;
      if (this.options.getToken) {
        token = await this.options.getToken();
        if (token && typeof token === "object") token = token.token;
        if (!token) throw new HeraldError("getToken gave no token", { code: "NO_TOKEN" });
      } else if (this.options.token) {
        headers.Authorization = `Bearer ${this.options.token}`;
      }
      if (this.stopped) return;
      const response = await this.fetch(this.streamUrl(token), {
        headers,
        cache: "no-store",
        signal: abort.signal,
      });
      if (response.status !== 200) throw await errorOf(response);
      await this.read(response, abort);
      error = new HeraldError("the stream ended", { code: "STREAM_ENDED" });
    } catch (e) {
      if (this.stopped) return;
      error = this.normalise(e);
    }
    if (this.stopped) return;
    if (FATAL.has(error.status)) {
      this.stopped = true;
      this.setState("closed", { error });
      return;
    }
    this.scheduleRetry(error);
  }

  normalise(e) {
    if (e instanceof HeraldError) return e;
    // An error thrown by getToken may carry `status` and `retryAfter`.
    if (e && typeof e.status === "number") {
      return new HeraldError(e.message || `HTTP ${e.status}`, {
        status: e.status,
        code: e.code || `HTTP_${e.status}`,
        retryAfter: retryAfterSeconds(e.retryAfter),
      });
    }
    const message = e?.name === "AbortError" ? "the stream was silent too long" : e?.message;
    return new HeraldError(message || "network error");
  }

  async read(response, abort) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((event) => {
      if (event.retry != null) {
        this.serverRetryMs = event.retry;
        return;
      }
      if (event.id) this.lastEventId = event.id;
      if (event.type === "connected") {
        this.attempt = 0;
        this.setState("open", { error: null });
      }
      this.emit(event.type, event.id, event.data);
    });
    let idle = setTimeout(() => abort.abort(), this.idleTimeoutMs);
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || this.stopped) break;
        clearTimeout(idle);
        idle = setTimeout(() => abort.abort(), this.idleTimeoutMs);
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearTimeout(idle);
      reader.cancel().catch(() => {});
    }
  }

  scheduleRetry(error) {
    const base = this.serverRetryMs ?? this.minDelayMs;
    const ceiling = Math.min(this.maxDelayMs, base * 2 ** this.attempt);
    // Half fixed, half random: clients cut at once do not return at once.
    let delayMs = ceiling / 2 + Math.random() * (ceiling / 2);
    if (error.retryAfter != null) {
      delayMs = Math.max(delayMs, error.retryAfter * 1000 + Math.random() * 1000);
    }
    delayMs = Math.round(delayMs);
    this.attempt += 1;
    this.setState("backoff", { error, delayMs });
    this.timer = setTimeout(() => this.connect(), delayMs);
  }
}

/** A listener's exception goes to the console, not into the client. */
function report(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else setTimeout(() => { throw e; });
}

/** `new HeraldClient(options).start()`. */
export function subscribe(options) {
  return new HeraldClient(options).start();
}
