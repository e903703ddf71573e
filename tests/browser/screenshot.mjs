// Takes docs/dashboard.png: starts a herald of its own (target/debug/herald,
// so `cargo build` first) on a temporary SQLite file, gives it maps, open
// streams and a minute of traffic, and photographs /admin in headless
// Chromium at 1280 px, and at 360 px wide to a second file.
//
//   cargo build && node tests/browser/screenshot.mjs \
//     [--out docs/dashboard.png] [--narrow /tmp/dashboard-360.png] [--seconds 60]
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { launch } from "./launch.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values: args } = parseArgs({
  options: {
    out: { type: "string", default: join(root, "docs/dashboard.png") },
    narrow: { type: "string", default: join(tmpdir(), "herald-dashboard-360.png") },
    seconds: { type: "string", default: "60" },
    bin: { type: "string", default: process.env.HERALD_BIN || join(root, "target/debug/herald") },
  },
});

const ADMIN = "screenshot-admin-token";
const PUBLISHER = "screenshot-publisher-token";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts herald on a free port; resolves with its base URL. */
async function startHerald(dir) {
  const config = join(dir, "settings.toml");
  writeFileSync(config, [
    "[server]", 'bind = "127.0.0.1:0"', "workers = 2",
    "[database]", `url = "sqlite://${join(dir, "herald.db")}"`,
    "[auth]", `admin_token = "${ADMIN}"`, `publisher_tokens = ["${PUBLISHER}"]`,
    "[limits]", "rate_per_minute = 0",
    "[cluster]", 'node_name = "herald-1"',
    "",
  ].join("\n"));
  const child = spawn(args.bin, ["--config", config, "serve"], { stdio: ["ignore", "pipe", "ignore"] });
  const base = await new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`herald exited (${code}): is ${args.bin} built?`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (line.startsWith("herald listening on ")) resolve(line.slice("herald listening on ".length));
    });
  });
  return { child, base };
}

async function call(base, method, path, token, body) {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.json();
}

/** Opens a stream and reads it until `signal` aborts. */
function openStream(base, path, token, signal) {
  fetch(`${base}${path}`, { headers: { Authorization: `Bearer ${token}` }, signal })
    .then(async (r) => {
      for await (const _ of r.body) {
        // Read and drop: an open subscriber.
      }
    })
    .catch(() => {});
}

const dir = mkdtempSync(join(tmpdir(), "herald-shot-"));
const { child, base } = await startHerald(dir);
const streams = new AbortController();
let browser;
try {
  const maps = [
    { slug: "game-eu-1", name: "Game map, EU 1", streams: 14, keys: 2 },
    { slug: "game-us-2", name: "Game map, US 2", streams: 6, keys: 1 },
    { slug: "invitations", name: "Invitations", streams: 3, keys: 1 },
    { slug: "billing", name: "", streams: 1, keys: 1 },
  ];
  for (const map of maps) {
    const created = await call(base, "POST", "/api/admin/maps", ADMIN, map.name ? { slug: map.slug, name: map.name } : { slug: map.slug });
    map.apiKeys = [created.api_key];
    for (let k = 1; k < map.keys; k++) map.apiKeys.push((await call(base, "POST", `/api/admin/maps/${map.slug}/keys`, ADMIN)).api_key);
    for (let s = 0; s < map.streams; s++) {
      const filter = s % 3 === 0 ? "?events=player.*" : "";
      openStream(base, `/api/maps/${map.slug}/events/stream${filter}`, map.apiKeys[s % map.apiKeys.length], streams.signal);
    }
  }
  await call(base, "PUT", "/api/admin/maps/game-eu-1/limits", ADMIN, { max_connections: 20, max_connections_per_key: 10 });
  openStream(base, "/api/events/stream?sources=billing", ADMIN, streams.signal);

  browser = await launch();
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  await page.goto(`${base}/admin`);
  await page.fill("#token-input", ADMIN);
  await page.click("#sign-in");
  await page.waitForSelector("#dashboard:not([hidden])");

  // Traffic with a shape: the charts show the last two minutes.
  const types = ["player.moved", "player.joined", "map.system.added", "chat.message"];
  const end = Date.now() + Number(args.seconds) * 1000;
  let tick = 0;
  let tailStarted = false;
  while (Date.now() < end) {
    const rate = Math.round(12 + 10 * Math.sin(tick / 8) + (tick % 17 === 0 ? 25 : 0));
    const map = maps[tick % 3];
    const batch = Array.from({ length: rate }, (_, i) => ({
      type: types[(tick + i) % types.length],
      source: i % 2 ? "game-server" : "matchmaker",
      payload: { x: (tick * 7 + i) % 100, y: (tick * 3 + i) % 100, player: `p${(tick + i) % 40}` },
    }));
    await call(base, "POST", `/api/maps/${map.slug}/events`, PUBLISHER, batch);
    if (tick % 5 === 0) await call(base, "POST", "/api/maps/billing/events", PUBLISHER, { type: "invoice.paid", source: "billing", payload: { amount: 1200 + tick } });
    if (!tailStarted && Date.now() > end - 8000) {
      await page.click('[data-testid="map-row"][data-map-slug="game-eu-1"] [data-testid="manage-map"]');
      await page.fill("#tail-map-input", "game-eu-1");
      await page.fill("#tail-events", "player.*");
      await page.click("#tail-start");
      tailStarted = true;
    }
    tick += 1;
    await sleep(1000);
  }
  await page.waitForSelector('[data-testid="tail-line"]:not(.system)');
  await page.locator("#tail-list").evaluate((list) => {
    // Keep the picture short: the newest dozen lines.
    while (list.children.length > 12) list.lastElementChild.remove();
  });
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: args.out, fullPage: true });
  await page.setViewportSize({ width: 360, height: 780 });
  await sleep(1500);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 360) console.warn(`the page is ${width} px wide at 360 px`);
  await page.screenshot({ path: args.narrow, fullPage: true });
  console.log(`wrote ${args.out} and ${args.narrow}`);
} finally {
  streams.abort();
  await browser?.close();
  child.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
