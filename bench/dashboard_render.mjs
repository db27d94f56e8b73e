// How long the dashboard takes to draw, in Chromium, in real time:
//   node bench/dashboard_render.mjs BRAIN_URL TOKEN [ROUNDS]
// Loads /ui, waits until it is live, then times ROUNDS calls of its render()
// (GPUs, workloads, chart, reconfigurations, controls) and of a whole
// refresh() (the API's answers fetched and drawn); prints JSON (ms).
import { createRequire } from "node:module";
const require = createRequire(new URL("../tests/ui/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const [url, token, rounds = "50"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
await page.goto(`${url}/ui#token=${token}`);
await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("live"), null, { timeout: 20000 });
await page.waitForTimeout(2000);
const r = await page.evaluate(async (n) => {
  const time = async (f) => {
    const xs = [];
    for (let i = 0; i < n; i++) { const t0 = performance.now(); await f(); xs.push(performance.now() - t0); }
    xs.sort((a, b) => a - b);
    return { p50: xs[Math.floor(n / 2)], p99: xs[Math.min(n - 1, Math.floor(n * 0.99))], max: xs[n - 1] };
  };
  return {
    workloads: state.workloads.length,
    gpus: document.querySelectorAll(".gpu").length,
    render_ms: await time(() => render()),
    refresh_ms: await time(() => refresh()),
  };
}, Number(rounds));
console.log(JSON.stringify(r));
await browser.close();
