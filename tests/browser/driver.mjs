// A remote control for headless Chromium, driven by tests/browser.rs: one
// JSON command per line on stdin, one JSON answer per line on stdout
// (`{"id", "ok", "value"}` or `{"id", "ok": false, "error"}`).
//
// It also serves the test page of the browser client from an origin of
// its own (`serveApp`), with a tiny token endpoint standing in for the
// user's backend: the map key stays in this process, never in the page.
import { readFileSync } from "node:fs";
import http from "node:http";
import readline from "node:readline";
import { launch } from "./launch.mjs";

const TIMEOUT_MS = 10_000;
const browser = await launch();
let context = null;
let page = null;
let log = null;
const servers = [];

/** The page of the current context; each `open` starts a fresh profile. */
async function open({ url, width = 1280, height = 900 }) {
  await context?.close();
  context = await browser.newContext({ viewport: { width, height } });
  context.setDefaultTimeout(TIMEOUT_MS);
  page = await context.newPage();
  log = { console: [], pageErrors: [], network: [] };
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") log.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => log.pageErrors.push(String(e)));
  // Confirmations (revoking a key) are accepted, as an operator would.
  page.on("dialog", (d) => d.accept());
  const watched = (u) => u.includes("/events/stream") || u.includes("/sse-tokens") || u.endsWith("/token");
  page.on("request", (r) => {
    if (watched(r.url())) log.network.push({ t: Date.now(), kind: "request", url: r.url() });
  });
  page.on("response", (r) => {
    if (watched(r.url())) {
      log.network.push({
        t: Date.now(),
        kind: "response",
        url: r.url(),
        status: r.status(),
        retryAfter: r.headers()["retry-after"] ?? null,
      });
    }
  });
  page.on("requestfailed", (r) => {
    if (watched(r.url())) log.network.push({ t: Date.now(), kind: "failed", url: r.url(), error: r.failure()?.errorText });
  });
  if (url) await page.goto(url);
  return true;
}

/** POSTs to herald for an SSE token from 127.0.0.2: a client address of
 * its own, so the page's rate-limit bucket (127.0.0.1) is not this one. */
function mintToken(herald, map, key) {
  const target = new URL(`/api/maps/${encodeURIComponent(map)}/sse-tokens`, herald);
  return new Promise((resolve, reject) => {
    const req = http.request(target, {
      method: "POST",
      localAddress: "127.0.0.2",
      headers: { Authorization: `Bearer ${key}` },
    }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body, retryAfter: res.headers["retry-after"] }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** Serves the client test page on 127.0.0.1:<port of its own>. */
async function serveApp({ herald, map, key }) {
  const template = readFileSync(new URL("./client.html", import.meta.url), "utf8");
  const config = JSON.stringify({ herald, map }).replaceAll("<", "\\u003c");
  const html = template.replace("__CONFIG__", config);
  const server = http.createServer(async (req, res) => {
    if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
      res.end(html);
    } else if (req.url === "/token" && req.method === "POST") {
      try {
        const answer = await mintToken(herald, map, key);
        const headers = { "Content-Type": "application/json", "Cache-Control": "no-store" };
        if (answer.retryAfter) headers["Retry-After"] = answer.retryAfter;
        res.writeHead(answer.status, headers);
        res.end(answer.body);
      } catch (e) {
        res.writeHead(502, { "Content-Type": "application/json" });
        res.end(JSON.stringify({ error: `herald unreachable: ${e.message}`, code: "BAD_GATEWAY" }));
      }
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}/`;
}

const commands = {
  open,
  goto: ({ url }) => page.goto(url).then(() => true),
  fill: ({ selector, value }) => page.fill(selector, value).then(() => true),
  click: ({ selector }) => page.click(selector).then(() => true),
  press: ({ selector, key }) => page.press(selector, key).then(() => true),
  text: async ({ selector }) => {
    const found = page.locator(selector).first();
    return (await found.count()) === 0 ? null : found.textContent();
  },
  count: ({ selector }) => page.locator(selector).count(),
  visible: ({ selector }) => page.locator(selector).first().isVisible(),
  value: ({ selector }) => page.inputValue(selector),
  waitFor: ({ selector, state = "visible", timeout = TIMEOUT_MS }) =>
    page.locator(selector).first().waitFor({ state, timeout }).then(() => true),
  eval: ({ expr }) => page.evaluate(expr),
  viewport: ({ width, height = 800 }) => page.setViewportSize({ width, height }).then(() => true),
  screenshot: ({ path, fullPage = true }) => page.screenshot({ path, fullPage }).then(() => true),
  serveApp,
  log: () => log,
};

async function handle(line) {
  let id = null;
  try {
    const message = JSON.parse(line);
    id = message.id;
    const command = commands[message.cmd];
    if (!command) throw new Error(`unknown command ${message.cmd}`);
    const value = await command(message);
    return { id, ok: true, value: value ?? null };
  } catch (e) {
    return { id, ok: false, error: String(e?.stack ?? e) };
  }
}

const input = readline.createInterface({ input: process.stdin });
for await (const line of input) {
  if (!line.trim()) continue;
  process.stdout.write(`${JSON.stringify(await handle(line))}\n`);
}
// stdin closed: the test is over.
for (const server of servers) server.closeAllConnections?.(), server.close();
await browser.close();
