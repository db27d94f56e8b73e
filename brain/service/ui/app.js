// The brain's dashboard: everything it shows comes from the brain's HTTP API
// with the bearer token the page was given (`/ui#token=…`, kept for the
// tab's session): placements and nodes each second; the audit trail's rows
// as they commit and alerts as they are raised, from the brain's event
// streams (GET /v1/decisions and GET /v1/events as server-sent events).
// Charts are uPlot's, bundled with the brain.
"use strict";

const HISTORY_S = 300;        // seconds of p99 kept per workload
const CHARTED = 8;            // workloads charted at first (latency-sensitive first)
const TIMELINE = 300;         // trail rows kept on the page
const FLOW = ["gate", "shadow", "validate", "canary", "migrate", "drain", "apply", "cleanup", "done"];

const state = {
  token: null,
  workloads: [],              // GET /v1/placements items
  nodes: [],                  // GET /v1/nodes items
  budgets: new Map(),         // workload → budget_ppm (the loop's latest)
  series: new Map(),          // workload → {t: [], p99: [], sla}
  charted: null,              // Set of charted workload names (null: not chosen yet)
  reconfigs: new Map(),       // reconfiguration id → {workload, node, from, to, steps, outcome}
  chart: null,
  chartKeys: "",
  alertsSeen: 0,
  admin: false,
};

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("vagus-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  state.token = sessionStorage.getItem("vagus-token");
}

async function api(path, init = {}) {
  const headers = Object.assign({Authorization: `Bearer ${state.token}`}, init.headers || {});
  const r = await fetch(path, Object.assign({}, init, {headers}));
  if (r.status === 401 || r.status === 403) {
    const e = new Error(`${r.status}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

function askForToken(why) {
  $("#status").textContent = why;
  $("#login").hidden = false;
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("vagus-token", $("#token").value.trim());
  location.reload();
});

// ---------------------------------------------------------------- refresh

async function refresh() {
  try {
    const [placements, nodes] = await Promise.all([
      api("/v1/placements?limit=1000"),
      api("/v1/nodes?limit=1000"),
    ]);
    state.workloads = placements.items || [];
    state.nodes = nodes.items || [];
    record();
    render();
    $("#status").textContent = `live · ${state.workloads.length} workloads on ${state.nodes.length} nodes · ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status) return askForToken(`the brain refused the token (${e.status})`);
    $("#status").textContent = `the brain does not answer: ${e.message}`;
  }
}

// A row of the trail, as the stream brings it: budgets, reconfigurations, the timeline.
function take(r) {
  const d = r.decision || {};
  if (r.path === "budget" && typeof d.budget_ppm === "number") state.budgets.set(r.workload, d.budget_ppm);
  if (r.path === "reconfig" && d.reconfig) {
    const c = d.reconfig;
    const e = state.reconfigs.get(c.id) || {workload: c.workload, node: c.node, from: c.from_share, to: c.to_share, reason: c.reason, steps: [], outcome: null};
    if (c.step && e.steps[e.steps.length - 1] !== c.step) e.steps.push(c.step);
    if (c.outcome) e.outcome = c.outcome;
    state.reconfigs.set(c.id, e);
  }
  timeline(r);
}

function p99Of(w) {
  const rep = w.replica || {};
  const s = (rep.gateway && rep.gateway.latency_p99_s) ?? (rep.serving && rep.serving.latency_p99_s);
  return typeof s === "number" ? s * 1000 : null;
}

function record() {
  const now = Date.now() / 1000;
  for (const w of state.workloads) {
    const p = w.placement;
    if (!p) continue;
    let s = state.series.get(p.id);
    if (!s) state.series.set(p.id, s = {t: [], p99: [], sla: p.profile.sla_ms ?? null});
    s.t.push(now);
    s.p99.push(p99Of(w));
    while (s.t.length && s.t[0] < now - HISTORY_S) { s.t.shift(); s.p99.shift(); }
  }
}

// ---------------------------------------------------------------- render

function kind(p) { return p.profile.sla_ms != null || ["P0", "P1"].includes(p.profile.priority) ? "ls" : "be"; }

function budgetPct(id) {
  const b = state.budgets.get(id);
  return b == null || b >= 1000000 ? null : b / 10000;
}

function render() {
  renderGpus();
  renderWorkloads();
  renderChart();
  renderReconfigs();
  renderControls();
}

function renderGpus() {
  const out = [];
  for (const n of state.nodes) {
    const flags = [n.down ? `down: ${n.down}` : "", n.cordoned ? "cordoned" : ""].filter(Boolean).join(", ");
    for (const g of n.gpus || []) {
      const here = state.workloads.filter((w) => w.placement && w.placement.node === n.name && (w.placement.gpus || []).includes(g.index));
      const bars = here.map((w) => {
        const p = w.placement;
        const b = budgetPct(p.id);
        return `<span class="${kind(p)}" style="width:${Math.min(100, p.share_pct)}%" title="${esc(p.id)}: share ${p.share_pct}%${b == null ? "" : `, budget ${b.toFixed(0)}%`}">${esc(p.id)}</span>`;
      }).join("");
      const util = g.utilisation == null ? "—" : `${(g.utilisation * 100).toFixed(0)}%`;
      const rows = here.map((w) => {
        const p = w.placement, b = budgetPct(p.id), r = w.replica || {};
        return `<tr><td>${esc(p.id)}</td><td>${kind(p)}</td><td class="num">${p.share_pct}%</td><td class="num">${b == null ? "—" : b.toFixed(0) + "%"}</td><td class="num">${r.mps_percent ?? "—"}</td><td>${esc(r.pid ?? "")}</td></tr>`;
      }).join("");
      out.push(`<div class="gpu"><h3>${esc(n.name)} · GPU ${g.index} <small>${esc(g.model)} · used ${util} · placed ${g.used_pct ?? 0}%${g.pool != null ? ` · MPS pool ${g.pool}%` : ""}${flags ? " · " + esc(flags) : ""}</small></h3>
        <div class="bar">${bars}</div>
        ${rows ? `<table><tr><th>process</th><th>kind</th><th class="num">share</th><th class="num">budget</th><th class="num">MPS %</th><th>pid</th></tr>${rows}</table>` : '<p class="quiet">nothing placed</p>'}</div>`);
    }
  }
  $("#gpus").innerHTML = out.join("") || '<p class="quiet">no nodes yet</p>';
}

function renderWorkloads() {
  const rows = [];
  for (const w of state.workloads) {
    const p = w.placement || w.queued;
    if (!p) continue;
    const id = p.id || (w.queued && w.queued.id);
    if (!w.placement) {
      rows.push(`<tr><td>${esc(id)}</td><td colspan="9" class="quiet">${esc(w.state)}</td></tr>`);
      continue;
    }
    const r = w.replica || {};
    const p99 = p99Of(w), sla = p.profile.sla_ms;
    const cls = p99 == null || sla == null ? "" : p99 > sla ? "over" : p99 > 0.8 * sla ? "near" : "ok";
    const b = budgetPct(id);
    const mem = r.memory ? Object.entries(r.memory.in_use_bytes).filter(([k]) => k !== "host").reduce((a, [, v]) => a + v, 0) : null;
    const charted = state.charted && state.charted.has(id);
    rows.push(`<tr><td>${esc(id)}</td><td>${kind(p)}</td><td>${esc(p.node)} / ${(p.gpus || []).join(",")}</td>
      <td class="num">${p.share_pct}%</td><td class="num">${b == null ? "—" : b.toFixed(0) + "%"}</td>
      <td class="num ${cls}">${p99 == null ? "—" : p99.toFixed(0)}</td><td class="num">${sla ?? "—"}</td>
      <td>${esc(r.state ?? "—")}</td><td class="num">${mem == null ? "—" : (mem / 2 ** 30).toFixed(2) + " GiB"}${r.memory && r.memory.limit_bytes ? ` / ${(r.memory.limit_bytes / 2 ** 30).toFixed(2)}` : ""}</td>
      <td><label><input type="checkbox" data-chart="${esc(id)}" ${charted ? "checked" : ""}> chart</label></td></tr>`);
  }
  $("#workloads tbody").innerHTML = rows.join("");
  $("#wl-count").textContent = `(${rows.length})`;
}

$("#workloads").addEventListener("change", (ev) => {
  const id = ev.target.dataset && ev.target.dataset.chart;
  if (!id) return;
  if (ev.target.checked) state.charted.add(id); else state.charted.delete(id);
  renderChart();
});

function renderChart() {
  if (typeof uPlot === "undefined") return;
  if (state.charted == null) {
    const ids = state.workloads.filter((w) => w.placement).map((w) => w.placement)
      .sort((a, b) => (kind(a) === kind(b) ? a.id.localeCompare(b.id) : kind(a) === "ls" ? -1 : 1))
      .slice(0, CHARTED).map((p) => p.id);
    if (ids.length === 0) return;
    state.charted = new Set(ids);
  }
  const ids = [...state.charted].filter((id) => state.series.has(id)).sort();
  if (ids.length === 0) return;
  // One x axis: the longest series' times (every series is sampled together).
  const xs = ids.map((id) => state.series.get(id).t).reduce((a, b) => (b.length > a.length ? b : a));
  const align = (s, key) => xs.map((t) => { const i = s.t.indexOf(t); return i < 0 ? null : key === "sla" ? s.sla : s.p99[i]; });
  const data = [xs];
  const series = [{}];
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  ids.forEach((id, k) => {
    const s = state.series.get(id), color = palette[k % palette.length];
    data.push(align(s, "p99"));
    series.push({label: `${id} p99`, stroke: color, width: 2, spanGaps: true});
    if (s.sla != null) {
      data.push(align(s, "sla"));
      series.push({label: `${id} SLA`, stroke: color, dash: [6, 4], width: 1});
    }
  });
  const keys = series.map((s) => s.label).join("|");
  if (!state.chart || keys !== state.chartKeys) {
    if (state.chart) state.chart.destroy();
    const width = Math.max(400, $("#chart").clientWidth || 600);
    state.chart = new uPlot({width, height: 260, series, scales: {x: {time: true}}, axes: [{}, {label: "ms"}]}, data, $("#chart"));
    state.chartKeys = keys;
  } else {
    state.chart.setData(data);
  }
}

function renderReconfigs() {
  if (state.reconfigs.size === 0) return;
  const out = [];
  for (const [id, r] of [...state.reconfigs.entries()].reverse()) {
    const last = r.steps[r.steps.length - 1];
    const at = FLOW.indexOf(last);
    const steps = FLOW.map((s, i) => `<span class="${i < at || (r.outcome && i <= at) ? "done" : i === at ? "now" : ""}">${s}</span>`).join("");
    out.push(`<div><b>#${esc(id)} ${esc(r.workload)}</b> on ${esc(r.node)}: ${r.from}% → ${r.to}% <small>${esc(r.reason)}</small>
      <div class="steps">${steps}</div><small>${r.outcome ? "outcome: " + esc(r.outcome) : "under way: " + esc(last)}</small></div>`);
  }
  $("#reconfigs").innerHTML = out.join("");
}

function renderControls() {
  const fill = (sel, names) => {
    const el = $(sel), now = el.value;
    const want = names.join("|");
    if (el.dataset.names !== want) {
      el.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
      el.dataset.names = want;
      if (names.includes(now)) el.value = now;
    }
  };
  fill("#ctl-node", state.nodes.map((n) => n.name));
  fill("#ctl-workload", state.workloads.filter((w) => w.placement).map((w) => w.placement.id));
}

// The trail, newest first; each row opens to its explanation.
function timeline(r) {
  const d = r.decision || {};
  const el = document.createElement("details");
  const when = new Date(r.at_ms).toLocaleTimeString();
  el.innerHTML = `<summary><span class="path">${esc(r.path)}</span> ${esc(when)} · ${esc(r.workload)} · ${esc(r.summary)}</summary>`;
  el.addEventListener("toggle", () => {
    if (!el.open || el.dataset.filled) return;
    el.dataset.filled = "1";
    el.insertAdjacentHTML("beforeend", explain(r, d));
  });
  const box = $("#timeline");
  box.insertBefore(el, box.firstChild);
  while (box.children.length > TIMELINE) box.removeChild(box.lastChild);
}

function explain(r, d) {
  let html = `<p>actor <b>${esc(r.actor)}</b>${r.node ? ` · node ${esc(r.node)}` : ""} · seq ${r.seq}</p>`;
  if (Array.isArray(d.top) && d.top.length) {
    const terms = Object.keys(d.top[0].terms || {});
    html += `<table><tr><th>candidate</th><th>slot</th><th class="num">score</th>${terms.map((t) => `<th class="num">${esc(t)}</th>`).join("")}</tr>` +
      d.top.map((c) => `<tr><td>${esc(c.node)}/${esc(c.gpu)}</td><td>${esc(c.slot)}</td><td class="num">${Number(c.score).toFixed(3)}</td>${terms.map((t) => `<td class="num">${Number(c.terms[t]).toFixed(2)}</td>`).join("")}</tr>`).join("") + "</table>";
  }
  if (Array.isArray(d.ruled_out) && d.ruled_out.length) {
    html += `<p>ruled out: ${d.ruled_out.map((x) => `${esc(x.constraint)} (${x.count})`).join(", ")}</p>`;
  }
  html += `<pre>${esc(JSON.stringify(d, null, 1))}</pre>`;
  return html;
}

// ---------------------------------------------------------------- controls

document.querySelector(".controls").addEventListener("click", async (ev) => {
  const action = ev.target.dataset && ev.target.dataset.action;
  if (!action) return;
  const body = {action};
  if (["cordon", "uncordon"].includes(action)) body.node = $("#ctl-node").value;
  if (["pin", "unpin"].includes(action)) body.workload = $("#ctl-workload").value;
  const r = await fetch("/v1/controls", {method: "POST", headers: {Authorization: `Bearer ${state.token}`, "Content-Type": "application/json"}, body: JSON.stringify(body)});
  const text = await r.text();
  $("#ctl-result").textContent = r.ok ? `${action}: done` : `${action}: ${r.status} ${text}`;
  refresh();
});

// The controls show for a token the brain takes as an admin's.
async function checkAdmin() {
  try {
    const me = await api("/v1/session");
    state.admin = me.role === "admin";
  } catch (e) {
    state.admin = false;
  }
  $("#controls-panel").hidden = !state.admin;
}

// ---------------------------------------------------------------- streams

// Follows a server-sent event stream of the brain's (fetch, so that the
// token goes in a header), resuming after the last event id it got;
// `onEvent` gets each event's parsed data.
async function follow(path, onEvent) {
  let last = null;
  for (;;) {
    try {
      const headers = {Authorization: `Bearer ${state.token}`, Accept: "text/event-stream"};
      if (last != null) headers["Last-Event-ID"] = String(last);
      const r = await fetch(path, {headers});
      if (!r.ok || !r.body) throw new Error(`${r.status}`);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          const id = block.split("\n").find((l) => l.startsWith("id: "));
          if (id) last = Number(id.slice(4));
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (e) { /* the stream ended or failed: again in a moment */ }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

function showAlert(a) {
  const list = $("#alerts");
  if (state.alertsSeen++ === 0) list.innerHTML = "";
  const li = document.createElement("li");
  li.innerHTML = `<b>${esc(a.kind)}</b> ${esc(new Date(a.at_ms).toLocaleTimeString())}${a.node ? " · " + esc(a.node) : ""} · ${esc(a.summary)}`;
  list.insertBefore(li, list.firstChild);
  while (list.children.length > 100) list.removeChild(list.lastChild);
}

// ---------------------------------------------------------------- start

takeToken();
if (!state.token) {
  askForToken("give a bearer token of the brain's (viewer or above)");
} else {
  refresh();
  setInterval(refresh, 1000);
  checkAdmin();
  follow("/v1/decisions", take);
  follow("/v1/events", showAlert);
}
