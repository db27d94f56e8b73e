//! What the demo shows while it runs: the brain's view of its workloads
//! and its latest decisions, read from the HTTP API each second and drawn
//! on the terminal.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Duration;
use vagus_cluster::{Brain, Http, get_json};

/// Decisions the view keeps to show.
const LATEST: usize = 8;

/// The brain's state as the API shows it.
#[derive(Default)]
pub struct Watch {
    /// `GET /v1/placements`' items: each placement with its replica.
    pub workloads: Vec<Value>,
    /// The latest rows of the trail (path, workload, summary).
    pub rows: VecDeque<Value>,
    /// Each workload's budget as the loop last set it (millionths).
    budgets: BTreeMap<String, u64>,
    /// The trail's cursor.
    after: Option<i64>,
    brain: String,
}

impl Watch {
    /// Reads the placements and the trail's new rows.
    pub async fn refresh(&mut self, http: &Http, brain: &Brain) {
        self.brain.clone_from(&brain.url);
        if let Ok(v) = get_json(http, &format!("{}/v1/placements?limit=1000", brain.url)).await
            && let Some(items) = v["items"].as_array()
        {
            self.workloads = items.clone();
        }
        loop {
            let mut url = format!("{}/v1/decisions?limit=1000", brain.url);
            if let Some(a) = self.after {
                url += &format!("&after={a}");
            }
            let Ok(page) = get_json(http, &url).await else {
                return;
            };
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for r in &items {
                self.after = r["seq"].as_i64().or(self.after);
                let workload = r["workload"].as_str().unwrap_or_default().to_string();
                if r["path"] == "budget"
                    && let Some(b) = r["decision"]["budget_ppm"].as_u64()
                {
                    self.budgets.insert(workload.clone(), b);
                }
                self.rows.push_back(serde_json::json!({
                    "at_ms": r["at_ms"], "path": r["path"], "workload": workload,
                    "summary": r["summary"],
                }));
                if self.rows.len() > LATEST {
                    self.rows.pop_front();
                }
            }
            if page["next"].is_null() || items.is_empty() {
                return;
            }
        }
    }

    /// A workload's budget as a percentage of its GPU (`None`: the loop
    /// never set one, or lifted it).
    fn budget_pct(&self, workload: &str) -> Option<f64> {
        self.budgets
            .get(workload)
            .filter(|b| **b < 1_000_000)
            .map(|b| *b as f64 / 10_000.0)
    }
}

/// The terminal view: drawn only where standard error is a terminal.
pub struct View {
    live: bool,
}

impl View {
    /// `live`: draw each second (clearing the screen).
    pub fn new(live: bool) -> View {
        View { live }
    }

    pub fn draw(&mut self, w: &Watch, elapsed: Duration, duration: Duration) {
        if !self.live {
            return;
        }
        let mut out = String::from("\x1b[H\x1b[2J");
        let (t, d) = (elapsed.as_secs(), duration.as_secs());
        let when = if t <= d {
            format!("{t} s of {d} (burst {}–{} s)", d / 3, 2 * d / 3)
        } else {
            "clients done; a reconfiguration in flight ends".to_string()
        };
        out += &format!(
            "vagus demo: {when}   brain {}   Ctrl-C stops it\n\n",
            w.brain
        );
        out += &format!(
            "{:<14} {:<5} {:<8} {:>6} {:>7} {:>10} {:>8}  {}\n",
            "workload", "kind", "node", "share", "budget", "p99 ms", "SLA ms", "replica"
        );
        for x in &w.workloads {
            let p = &x["placement"];
            let name = p["id"].as_str().unwrap_or("?");
            let sla = p["profile"]["sla_ms"].as_u64();
            let kind = if sla.is_some() { "ls" } else { "be" };
            let p99 = x["replica"]["gateway"]["latency_p99_s"]
                .as_f64()
                .map(|s| format!("{:.0}", s * 1e3))
                .unwrap_or_else(|| "—".into());
            let budget = w
                .budget_pct(name)
                .map(|b| format!("{b:.0}%"))
                .unwrap_or_else(|| "—".into());
            out += &format!(
                "{:<14} {:<5} {:<8} {:>5}% {:>7} {:>10} {:>8}  {}\n",
                name,
                kind,
                p["node"]
                    .as_str()
                    .unwrap_or(x["state"].as_str().unwrap_or("")),
                p["share_pct"].as_u64().unwrap_or(0),
                budget,
                p99,
                sla.map_or("—".into(), |s| s.to_string()),
                x["replica"]["state"].as_str().unwrap_or("—"),
            );
        }
        out += "\nlatest decisions\n";
        for r in &w.rows {
            let line = format!(
                "  {:<9} {:<10} {}",
                r["path"].as_str().unwrap_or(""),
                r["workload"].as_str().unwrap_or(""),
                r["summary"].as_str().unwrap_or("")
            );
            out += &line.chars().take(150).collect::<String>();
            out += "\n";
        }
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(out.as_bytes());
        let _ = e.flush();
    }
}
