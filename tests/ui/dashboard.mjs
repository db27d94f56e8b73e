// Drives the brain's dashboard in Debian's Chromium through playwright-core,
// as a person would: for tests/demo.rs, against a running `vagus demo`.
//   node dashboard.mjs BRAIN_URL ADMIN_TOKEN VIEWER_TOKEN SCREENSHOT
// Prints one JSON object: the console errors seen, the chart's points at
// the start and 3 s later, whether a decision opened to its explanation,
// what the admin's and the viewer's "pause" clicks answered.
import { chromium } from "playwright-core";

const [url, admin, viewer, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const out = { console_errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
  page.on("pageerror", (e) => out.console_errors.push(String(e)));
  await page.goto(`${url}/ui#token=${admin}`);
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("live"), null, { timeout: 20000 });
  const points = () => page.evaluate(() => (state.chart ? state.chart.data[0].length : 0));
  await page.waitForFunction(() => state.chart && state.chart.data[0].length > 0, null, { timeout: 20000 });
  out.points_before = await points();
  await page.waitForTimeout(3000);
  out.points_after = await points();
  // A placement's decision, opened: its candidates with their scores.
  const row = page.locator("#timeline details").filter({ hasText: "direct" }).first();
  await row.locator("summary").click();
  out.explanation = await row.locator("table").first().innerText({ timeout: 5000 }).catch(() => "");
  out.controls_shown = await page.locator("#controls-panel").isVisible();
  await page.getByRole("button", { name: "Pause automatic reconfiguration" }).click();
  await page.waitForFunction(() => document.querySelector("#ctl-result").textContent !== "", null, { timeout: 10000 });
  out.admin_pause = await page.locator("#ctl-result").textContent();
  // What the audit trail says of it.
  const trail = await (await fetch(`${url}/v1/decisions?path=control&limit=1000`, { headers: { Authorization: `Bearer ${admin}` } })).json();
  out.control_rows = (trail.items || []).map((r) => ({ actor: r.actor, summary: r.summary }));
  await page.screenshot({ path: shot, fullPage: true });

  // A viewer: no controls shown; forced into view, the brain refuses the click.
  const v = await browser.newPage();
  v.on("console", (m) => {
    // The refusal is an answer the page shows, not an error of the page.
    if (m.type() === "error" && !m.text().includes("403")) out.console_errors.push(m.text());
  });
  v.on("pageerror", (e) => out.console_errors.push(String(e)));
  await v.goto(`${url}/ui#token=${viewer}`);
  await v.waitForFunction(() => document.querySelector("#status").textContent.startsWith("live"), null, { timeout: 20000 });
  await v.waitForTimeout(500);
  out.viewer_controls_shown = await v.locator("#controls-panel").isVisible();
  await v.evaluate(() => { document.querySelector("#controls-panel").hidden = false; });
  await v.getByRole("button", { name: "Pause automatic reconfiguration" }).click();
  await v.waitForFunction(() => document.querySelector("#ctl-result").textContent !== "", null, { timeout: 10000 });
  out.viewer_pause = await v.locator("#ctl-result").textContent();
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
