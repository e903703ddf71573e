// herald admin dashboard: plain DOM, no dependencies, no build step.
//
// Every number comes from the admin API with the admin token as a Bearer
// header; the token lives in this tab's sessionStorage and never in a URL.
// A refresh loop reads nodes, stats, maps, connections and the selected map
// about every second; rows are updated in place, so focus and half-typed
// input survive a refresh. The live tail uses herald's own browser client.

import { HeraldClient } from "/herald.js";

const TOKEN_KEY = "herald.adminToken";
const REFRESH_MS = 1000;
const CHART_WINDOW_MS = 120_000;
const MAPS_PAGE = 20;
const CONNS_PAGE = 25;
const TAIL_CAP = 300;

const $ = (id) => document.getElementById(id);

/** Builds an element: `h("td", {text: "x", "data-label": "Map"}, child...)`. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  el.append(...children.flat().filter((c) => c != null));
  return el;
}

// ---- API ------------------------------------------------------------------

/** An answer other than 2xx, with herald's `{error, code}`. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  describe() {
    return this.status ? `${this.message} (${this.status} ${this.code})` : this.message;
  }
}

const state = {
  token: null,
  mapsOffset: 0,
  connsOffset: 0,
  connsMap: "",
  selected: null, // a map id
  maps: new Map(), // id -> map, from the pages seen
  samples: [],
  timer: null,
  refreshing: false,
  again: false,
  generation: 0,
  limitsDirty: false,
  tail: null,
};

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: {
        Authorization: `Bearer ${state.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, "NETWORK_ERROR", `herald is unreachable (${e.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: reported below by status.
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      json?.code ?? `HTTP_${response.status}`,
      json?.error ?? (text.slice(0, 200) || response.statusText),
    );
  }
  return json;
}

// ---- messages -------------------------------------------------------------

let alertFromRefresh = false;

function showError(what, error, { fromRefresh = false } = {}) {
  const detail = error instanceof ApiError ? error.describe() : String(error?.message ?? error);
  $("alert-text").textContent = `${what}: ${detail}`;
  $("alert").hidden = false;
  alertFromRefresh = fromRefresh;
}

function clearError() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
  alertFromRefresh = false;
}

function say(text) {
  $("status").textContent = text;
}

/** Runs an operator's action, showing its error. */
async function act(what, fn) {
  try {
    await fn();
    if (!alertFromRefresh) clearError();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut("The admin token was refused");
    showError(what, e);
  }
}

// ---- formatting -----------------------------------------------------------

const num = (n) => (typeof n === "number" ? n.toLocaleString("en") : "–");
const short = (id) => (id ? `${id.slice(0, 6)}…${id.slice(-4)}` : "–");
const rate = (r) => (typeof r === "number" ? (r >= 100 ? r.toFixed(0) : r.toFixed(1)) : "–");

function ago(iso) {
  const ms = Date.now() - Date.parse(iso);
  if (!Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const clock = (iso) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : d.toLocaleString();
};

const mapLabel = (id) => (id ? state.maps.get(id)?.slug ?? short(id) : "every map");
/** What an input naming this map should hold: its slug, else its id. */
const mapRef = (id) => state.maps.get(id)?.slug ?? id;

/** `events=a.*&sources=b` as "a.* · from b"; no filter as "all". */
function describeFilter(filter) {
  const params = new URLSearchParams(filter ?? "");
  const parts = [];
  if (params.get("events")) parts.push(params.get("events"));
  if (params.get("sources")) parts.push(`from ${params.get("sources")}`);
  return parts.join(" · ") || "all";
}

// ---- tables ---------------------------------------------------------------

/**
 * Makes `tbody` show one row per item, reusing rows by key (focus and
 * selection survive); `build(item)` makes a row, `update(row, item)` fills it.
 */
function syncRows(tbody, items, keyOf, build, update, empty) {
  const old = new Map();
  for (const row of [...tbody.children]) {
    if (row.dataset.key) old.set(row.dataset.key, row);
    else row.remove();
  }
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    let row = old.get(key);
    if (row) old.delete(key);
    else {
      row = build(item);
      row.dataset.key = key;
    }
    update(row, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (row !== want) tbody.insertBefore(row, want);
    prev = row;
  }
  for (const row of old.values()) row.remove();
  if (items.length === 0) {
    const cols = tbody.closest("table").querySelectorAll("thead th").length;
    tbody.append(h("tr", { class: "empty" }, h("td", { colspan: cols, text: empty })));
  }
}

const cell = (label, testid) => h("td", { "data-label": label, "data-testid": testid });

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderPager(prefix, offset, size, total) {
  const end = Math.min(total, offset + size);
  setText($(`${prefix}-page`), total ? `${offset + 1}–${end} of ${total}` : "none");
  $(`${prefix}-prev`).disabled = offset === 0;
  $(`${prefix}-next`).disabled = end >= total;
}

// ---- overview -------------------------------------------------------------

function renderStats(stats, limits) {
  setText($("stat-connections"), num(stats.connections));
  const max = limits?.global?.max_connections;
  setText($("stat-connections-max"), max ? num(max) : "unlimited");
  $("usage-meter").max = max || 1;
  $("usage-meter").value = max ? stats.connections : 0;
  $("usage-meter").high = max ? max * 0.8 : 1;
  setText($("stat-maps"), num(stats.maps));
  setText($("stat-nodes"), num(stats.nodes));
  setText($("stat-published"), num(stats.published));
  setText($("stat-delivered"), num(stats.delivered));
  setText($("rate-published"), rate(stats.published_per_sec));
  setText($("rate-delivered"), rate(stats.delivered_per_sec));
  const now = Date.now();
  state.samples.push({ t: now, published: stats.published_per_sec, delivered: stats.delivered_per_sec });
  while (state.samples.length && state.samples[0].t < now - CHART_WINDOW_MS) state.samples.shift();
  drawChart($("chart-published"), "published", now);
  drawChart($("chart-delivered"), "delivered", now);
}

const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs) => {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
};

/** A small line chart of the last two minutes of one rate. */
function drawChart(box, field, now) {
  const W = 300;
  const H = 80;
  const points = state.samples.filter((s) => typeof s[field] === "number");
  const peak = Math.max(1, ...points.map((s) => s[field]));
  const top = niceCeil(peak);
  const x = (t) => ((t - (now - CHART_WINDOW_MS)) / CHART_WINDOW_MS) * W;
  const y = (v) => H - (v / top) * (H - 4);
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${field} events per second over the last two minutes, peak ${rate(peak)}`,
  });
  for (const f of [0.5, 1]) {
    chart.append(svg("line", { x1: 0, x2: W, y1: y(top * f), y2: y(top * f), class: "grid" }));
  }
  if (points.length > 0) {
    const line = points.map((s) => `${x(s.t).toFixed(1)},${y(s[field]).toFixed(1)}`);
    const first = x(points[0].t).toFixed(1);
    const last = x(points[points.length - 1].t).toFixed(1);
    chart.append(svg("polygon", { points: `${first},${H} ${line.join(" ")} ${last},${H}`, class: "area" }));
    chart.append(svg("polyline", { points: line.join(" "), class: "line" }));
  }
  const scale = h("span", { class: "chart-scale", text: `max ${num(top)}/s · 2 min` });
  box.replaceChildren(chart, scale);
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderNodes(nodes) {
  syncRows(
    $("nodes-body"),
    nodes.items,
    (n) => n.id,
    () => h("tr", { "data-testid": "node-row" }, cell("Name"), cell("Started"), cell("Last seen"), cell("Connections", "node-connections")),
    (row, n) => {
      setText(row.cells[0], n.name || short(n.id));
      setText(row.cells[1], clock(n.started_at));
      setText(row.cells[2], ago(n.last_seen));
      setText(row.cells[3], num(n.connections));
    },
    "No node has reported yet.",
  );
}

// ---- maps -----------------------------------------------------------------

function renderMaps(page) {
  for (const m of page.items) state.maps.set(m.id, m);
  syncRows(
    $("maps-body"),
    page.items,
    (m) => m.id,
    (m) => {
      const manage = h("button", {
        type: "button",
        class: "small",
        "data-testid": "manage-map",
        "aria-controls": "map-detail",
        onclick: () => selectMap(m.id, { focus: true }),
      }, "Manage");
      const conns = cell("Connections");
      conns.append(
        h("span", { "data-testid": "map-connections" }),
        h("span", { class: "muted" }, " / ", h("span", { "data-testid": "map-max-connections" })),
        h("meter", { min: 0, max: 1, value: 0, "aria-label": `Connections of ${m.slug} against its limit` }),
      );
      return h("tr", { "data-testid": "map-row", "data-map-id": m.id, "data-map-slug": m.slug },
        cell("Map"), conns, cell("Per key", "map-max-per-key"), cell("Keys"), h("td", { class: "actions-cell" }, manage));
    },
    (row, m) => {
      const name = m.name && m.name !== m.slug ? ` — ${m.name}` : "";
      setText(row.cells[0], `${m.slug}${name}`);
      const [count, , meter] = row.cells[1].children;
      setText(count, String(m.connections));
      setText(row.cells[1].querySelector('[data-testid="map-max-connections"]'), num(m.limits.max_connections));
      meter.max = Math.max(1, m.limits.max_connections);
      meter.value = m.connections;
      meter.high = m.limits.max_connections * 0.8;
      setText(row.cells[2], num(m.limits.max_connections_per_key));
      setText(row.cells[3], String(m.keys.length));
      row.classList.toggle("selected", m.id === state.selected);
    },
    "No maps yet: create one below.",
  );
  renderPager("maps", state.mapsOffset, MAPS_PAGE, page.total);
}

function selectMap(id, { focus = false } = {}) {
  if (state.selected !== id) {
    state.selected = id;
    state.limitsDirty = false;
    hideNewKey();
    $("limit-max-connections").value = "";
    $("limit-max-per-key").value = "";
    $("keys-body").replaceChildren();
    $("detail-meta").textContent = "";
  }
  $("map-detail").hidden = false;
  setText($("detail-title"), `Map ${mapRef(id)}`);
  if (focus) $("detail-title").focus();
  refreshSoon();
}

function renderDetail(map) {
  state.maps.set(map.id, map);
  setText($("detail-title"), `Map ${map.slug}`);
  $("detail-title").dataset.mapId = map.id;
  setText($("detail-meta"), `${map.name && map.name !== map.slug ? `${map.name} · ` : ""}id ${map.id} · created ${clock(map.created_at)} · ${map.connections} connection(s)`);
  const inputs = [$("limit-max-connections"), $("limit-max-per-key")];
  const editing = state.limitsDirty || inputs.includes(document.activeElement);
  if (!editing) {
    inputs[0].value = String(map.limits.max_connections);
    inputs[1].value = String(map.limits.max_connections_per_key);
  }
  syncRows(
    $("keys-body"),
    map.keys,
    (k) => k.key_id,
    (k) => {
      const revoke = h("button", {
        type: "button",
        class: "small danger",
        "data-testid": "revoke",
        onclick: () => revokeKey(map.id, k.key_id),
      }, "Revoke");
      return h("tr", { "data-testid": "key-row", "data-key-id": k.key_id },
        cell("Key id"), cell("Created"), cell("Connections", "key-connections"), h("td", { class: "actions-cell" }, revoke));
    },
    (row, k) => {
      setText(row.cells[0], k.key_id);
      setText(row.cells[1], clock(k.created_at));
      setText(row.cells[2], String(k.connections));
    },
    "No keys: nobody can subscribe with a map key.",
  );
}

async function saveLimits(event) {
  event.preventDefault();
  const id = state.selected;
  const value = (input) => {
    const text = input.value.trim();
    return text === "" ? null : Number(text);
  };
  const body = {
    max_connections: value($("limit-max-connections")),
    max_connections_per_key: value($("limit-max-per-key")),
  };
  await act("Saving limits failed", async () => {
    const saved = await api("PUT", `/api/admin/maps/${encodeURIComponent(id)}/limits`, body);
    state.limitsDirty = false;
    $("limit-max-connections").value = String(saved.max_connections);
    $("limit-max-per-key").value = String(saved.max_connections_per_key);
    say(`Limits of ${mapLabel(id)} saved: ${saved.max_connections} connections, ${saved.max_connections_per_key} per key.`);
    refreshSoon();
  });
}

async function createKey() {
  const id = state.selected;
  await act("Creating a key failed", async () => {
    const key = await api("POST", `/api/admin/maps/${encodeURIComponent(id)}/keys`);
    showNewKey(key.key_id, key.api_key);
    say(`Key ${key.key_id} created for ${mapLabel(id)}.`);
    refreshSoon();
  });
}

async function revokeKey(mapId, keyId) {
  if (!window.confirm(`Revoke key ${keyId}? Its streams close at once.`)) return;
  await act("Revoking the key failed", async () => {
    await api("DELETE", `/api/admin/maps/${encodeURIComponent(mapId)}/keys/${encodeURIComponent(keyId)}`);
    if ($("new-key").dataset.keyId === keyId) hideNewKey();
    say(`Key ${keyId} revoked.`);
    $("create-key").focus();
    refreshSoon();
  });
}

function showNewKey(keyId, apiKey) {
  $("new-key").hidden = false;
  $("new-key").dataset.keyId = keyId;
  $("new-key-value").value = apiKey;
  $("new-key-value").focus();
  $("new-key-value").select();
}

function hideNewKey() {
  $("new-key").hidden = true;
  delete $("new-key").dataset.keyId;
  $("new-key-value").value = "";
}

async function copyKey() {
  const input = $("new-key-value");
  try {
    await navigator.clipboard.writeText(input.value);
    say("Key copied to the clipboard.");
  } catch {
    // No clipboard API (a page not served over HTTPS): copy the selection.
    input.select();
    const ok = document.execCommand("copy");
    say(ok ? "Key copied to the clipboard." : "Copy failed: the key is selected, copy it by hand.");
  }
}

async function createMap(event) {
  event.preventDefault();
  const slug = $("new-map-slug").value.trim();
  const name = $("new-map-name").value.trim();
  await act("Creating the map failed", async () => {
    const created = await api("POST", "/api/admin/maps", name ? { slug, name } : { slug });
    $("create-map-form").reset();
    say(`Map ${created.slug} created.`);
    state.maps.set(created.id, { id: created.id, slug: created.slug });
    selectMap(created.id);
    showNewKey(created.key_id, created.api_key);
  });
}

// ---- connections ----------------------------------------------------------

function renderConnections(page) {
  setText($("conns-total"), `(${page.total})`);
  syncRows(
    $("conns-body"),
    page.items,
    (c) => c.id,
    (c) => {
      const button = h("button", {
        type: "button",
        class: "small danger",
        "data-testid": "disconnect",
        "aria-label": `Disconnect ${c.id}`,
        onclick: (e) => disconnect(c.id, e.currentTarget),
      }, "Disconnect");
      return h("tr", { "data-testid": "conn-row", "data-conn-id": c.id },
        cell("Connection"), cell("Map"), cell("Key"), cell("Address"), cell("Since"), cell("Sent"), cell("Filter"),
        h("td", { class: "actions-cell" }, button));
    },
    (row, c) => {
      setText(row.cells[0], short(c.id));
      row.cells[0].title = c.id;
      setText(row.cells[1], mapLabel(c.map_id));
      setText(row.cells[2], c.key_id ? short(c.key_id) : "admin");
      setText(row.cells[3], c.node ? `${c.remote_addr} → ${c.node}` : c.remote_addr);
      setText(row.cells[4], ago(c.connected_at));
      setText(row.cells[5], num(c.events_sent));
      setText(row.cells[6], describeFilter(c.filter));
    },
    state.connsMap ? "No open connection on this map." : "No open connection.",
  );
  renderPager("conns", state.connsOffset, CONNS_PAGE, page.total);
}

async function disconnect(id, button) {
  button.disabled = true;
  await act("Disconnecting failed", async () => {
    await api("DELETE", `/api/admin/connections/${encodeURIComponent(id)}`);
    say(`Connection ${id} closed.`);
    refreshSoon();
  });
  button.disabled = false;
}

// ---- refresh --------------------------------------------------------------

/** One round of reads; each part shows its own data, the first error wins. */
async function refresh() {
  const { generation, selected } = state;
  const connsQuery = new URLSearchParams({ limit: CONNS_PAGE, offset: state.connsOffset });
  if (state.connsMap) connsQuery.set("map", state.connsMap);
  const reads = {
    stats: api("GET", "/api/admin/stats"),
    limits: api("GET", "/api/admin/limits"),
    nodes: api("GET", "/api/admin/nodes"),
    maps: api("GET", `/api/admin/maps?limit=${MAPS_PAGE}&offset=${state.mapsOffset}`),
    conns: api("GET", `/api/admin/connections?${connsQuery}`),
    detail: selected ? api("GET", `/api/admin/maps/${encodeURIComponent(selected)}`) : null,
  };
  const names = Object.keys(reads);
  const results = await Promise.allSettled(names.map((n) => reads[n]));
  if (generation !== state.generation) return; // signed out meanwhile
  const got = {};
  let failure = null;
  names.forEach((name, i) => {
    if (results[i].status === "fulfilled") got[name] = results[i].value;
    else failure ??= { name, error: results[i].reason };
  });
  if (failure?.error instanceof ApiError && failure.error.status === 401) {
    signOut("The admin token was refused");
    return;
  }
  if (got.stats) renderStats(got.stats, got.limits);
  if (got.nodes) renderNodes(got.nodes);
  if (got.maps) {
    if (got.maps.items.length === 0 && state.mapsOffset > 0) {
      state.mapsOffset = Math.max(0, state.mapsOffset - MAPS_PAGE);
    }
    renderMaps(got.maps);
  }
  if (got.conns) renderConnections(got.conns);
  if (got.detail && selected === state.selected) renderDetail(got.detail);
  if (failure) {
    showError(`Reading ${failure.name} failed`, failure.error, { fromRefresh: true });
  } else {
    if (alertFromRefresh) clearError();
    setText($("refresh-status"), `Updated ${new Date().toLocaleTimeString()}`);
  }
}

async function loop() {
  state.timer = null;
  if (!state.token || state.refreshing) return;
  state.refreshing = true;
  const started = Date.now();
  try {
    await refresh();
  } catch (e) {
    showError("Refresh failed", e, { fromRefresh: true });
  } finally {
    state.refreshing = false;
  }
  if (state.token && !state.timer) {
    const wait = state.again ? 0 : Math.max(0, REFRESH_MS - (Date.now() - started));
    state.again = false;
    state.timer = setTimeout(loop, wait);
  }
}

/** Refreshes now (after an action) instead of at the next tick. */
function refreshSoon() {
  if (!state.token) return;
  if (state.refreshing) {
    state.again = true;
    return;
  }
  clearTimeout(state.timer);
  state.timer = setTimeout(loop, 0);
}

// ---- live tail ------------------------------------------------------------

function startTail(event) {
  event.preventDefault();
  stopTail();
  const map = $("tail-map-input").value.trim();
  const events = $("tail-events").value.trim();
  const sources = $("tail-sources").value.trim();
  const client = new HeraldClient({
    url: location.origin,
    map: map || undefined,
    token: state.token,
    events: events || undefined,
    sources: sources || undefined,
  });
  client.on("*", (e) => addTailLine(e));
  client.onStateChange(({ state: s, error, delayMs }) => {
    let text = s;
    if (s === "backoff") text = `reconnecting in ${Math.round(delayMs / 1000)} s (${error.message}${error.status ? `, ${error.status} ${error.code}` : ""})`;
    if (s === "closed" && error) {
      text = `stopped: ${error.message} (${error.status} ${error.code})`;
      if (error.status === 401) signOut("The admin token was refused");
      else showError("The tail stopped", new ApiError(error.status, error.code, error.message));
    }
    if (s === "closed") setTailRunning(false);
    setText($("tail-state"), text);
    $("tail-state").dataset.state = s;
  });
  state.tail = client;
  setTailRunning(true);
  client.start();
}

function stopTail() {
  const client = state.tail;
  state.tail = null;
  client?.close();
  setTailRunning(false);
}

function setTailRunning(running) {
  $("tail-start").disabled = running;
  $("tail-stop").disabled = !running;
  if (!running && document.activeElement === $("tail-stop")) $("tail-start").focus();
}

function addTailLine({ type, id, data }) {
  const list = $("tail-list");
  const system = type === "connected" || type === "backfill_truncated";
  const time = data?.created_at ?? data?.server_time ?? new Date().toISOString();
  let detail;
  if (system) detail = JSON.stringify(data);
  else detail = JSON.stringify(data?.payload ?? data);
  if (detail && detail.length > 400) detail = `${detail.slice(0, 400)}…`;
  const li = h("li", { class: system ? "system" : null, "data-testid": "tail-line", "data-type": type, "data-id": id },
    h("time", { datetime: time, text: new Date(time).toLocaleTimeString() }),
    h("span", { class: "type", text: type }),
    system ? null : h("span", { class: "muted", text: `${mapLabel(data?.map_id)}${data?.source ? ` · ${data.source}` : ""}` }),
    h("code", { text: detail ?? "" }),
  );
  list.prepend(li);
  while (list.children.length > TAIL_CAP) list.lastElementChild.remove();
}

// ---- sign in / out --------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  state.token = token;
  $("sign-in").disabled = true;
  try {
    await api("GET", "/api/admin/stats");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    clearError();
    showDashboard();
  } catch (e) {
    state.token = null;
    const refused = e instanceof ApiError && e.status === 401;
    showError(refused ? "Sign-in failed: the admin token was refused" : "Sign-in failed", e);
    $("token-input").focus();
    $("token-input").select();
  } finally {
    $("sign-in").disabled = false;
  }
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  state.generation += 1;
  loop();
}

function signOut(reason) {
  stopTail();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.generation += 1;
  clearTimeout(state.timer);
  state.timer = null;
  state.selected = null;
  state.samples = [];
  state.maps.clear();
  hideNewKey();
  for (const id of ["nodes-body", "maps-body", "keys-body", "conns-body", "tail-list"]) $(id).replaceChildren();
  $("map-detail").hidden = true;
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  setText($("refresh-status"), "");
  say(reason ? "" : "Signed out.");
  if (reason) showError(reason, new ApiError(401, "UNAUTHORIZED", "sign in again"));
  else clearError();
  $("token-input").focus();
}

// ---- wiring ---------------------------------------------------------------

function page(prefix, delta) {
  const key = `${prefix}Offset`;
  state[key] = Math.max(0, state[key] + delta);
  refreshSoon();
}

function init() {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("alert-dismiss").addEventListener("click", clearError);
  $("maps-prev").addEventListener("click", () => page("maps", -MAPS_PAGE));
  $("maps-next").addEventListener("click", () => page("maps", MAPS_PAGE));
  $("conns-prev").addEventListener("click", () => page("conns", -CONNS_PAGE));
  $("conns-next").addEventListener("click", () => page("conns", CONNS_PAGE));
  $("create-map-form").addEventListener("submit", createMap);
  $("limits-form").addEventListener("submit", saveLimits);
  $("limits-form").addEventListener("input", () => (state.limitsDirty = true));
  $("create-key").addEventListener("click", createKey);
  $("copy-key").addEventListener("click", copyKey);
  $("dismiss-key").addEventListener("click", () => {
    hideNewKey();
    $("create-key").focus();
  });
  $("close-detail").addEventListener("click", () => {
    state.selected = null;
    hideNewKey();
    $("map-detail").hidden = true;
  });
  $("tail-map").addEventListener("click", () => {
    $("tail-map-input").value = mapRef(state.selected);
    $("tail-map-input").focus();
  });
  $("show-connections").addEventListener("click", () => {
    $("conn-map").value = mapRef(state.selected);
    $("conn-filter-form").requestSubmit();
    $("conn-map").focus();
  });
  $("conn-filter-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.connsMap = $("conn-map").value.trim();
    state.connsOffset = 0;
    refreshSoon();
  });
  $("tail-form").addEventListener("submit", startTail);
  $("tail-stop").addEventListener("click", () => {
    stopTail();
    setText($("tail-state"), "stopped");
    $("tail-state").dataset.state = "closed";
  });
  $("tail-clear").addEventListener("click", () => $("tail-list").replaceChildren());
  $("detail-title").tabIndex = -1;

  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (state.token) showDashboard();
  else $("token-input").focus();
}

init();
