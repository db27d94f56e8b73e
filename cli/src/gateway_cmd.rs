//! `vagus gateway`: the gateway's flags, parsed into
//! `vagus_gateway::proxy::Config`; it serves until killed.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use vagus_gateway::proxy::Config;
use vagus_gateway::route::RouteSet;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// HOST:PORT to serve on.
    #[arg(long, env = "VAGUS_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The brain's HTTP API (http://HOST:PORT): the routes come from its
    /// GET /v1/routes.
    #[arg(long, env = "VAGUS_GATEWAY_BRAIN", requires = "token_file")]
    pub brain: Option<String>,
    /// A file holding a bearer token of the brain's: the gateway role (a
    /// viewer that may report measurements) or above.
    #[arg(long, env = "VAGUS_GATEWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Routes to serve by (the JSON of GET /v1/routes), with no brain or
    /// until the brain answers.
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// How often the routes are asked for (ms).
    #[arg(long, default_value_t = 250)]
    pub refresh_ms: u64,
    /// The name the brain knows this gateway by (a DNS-1123 subdomain; each
    /// gateway of a brain its own).
    #[arg(long, env = "VAGUS_GATEWAY_NAME", default_value = "gateway")]
    pub name: String,
    /// How often its measurements are sent to the brain (ms).
    #[arg(long, default_value_t = 1000)]
    pub report_ms: u64,
}

pub fn gateway(a: GatewayArgs) -> Result<()> {
    let listen = crate::addr::resolve("--listen", &a.listen)?;
    let routes = match &a.routes {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("--routes {}", p.display()))?;
            serde_json::from_slice::<RouteSet>(&text)
                .with_context(|| format!("--routes {}: not a route table", p.display()))?
        }
        None => RouteSet::default(),
    };
    let brain = match (&a.brain, &a.token_file) {
        (Some(b), Some(f)) => {
            let token = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .trim()
                .to_string();
            anyhow::ensure!(!token.is_empty(), "--token-file {}: empty", f.display());
            Some((b.clone(), token))
        }
        _ => None,
    };
    anyhow::ensure!(
        brain.is_some() || a.routes.is_some(),
        "give --brain (with --token-file) or --routes: the gateway needs routes"
    );
    vagus_decision::rules::DNS_SUBDOMAIN
        .check("--name", &a.name)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.problem))?;
    let cfg = Config {
        listen,
        brain,
        routes,
        refresh: Duration::from_millis(a.refresh_ms),
        name: a.name.clone(),
        report: Duration::from_millis(a.report_ms),
    };
    crate::runtime()?.block_on(async {
        let g = vagus_gateway::proxy::start(cfg).await?;
        eprintln!("vagus gateway: serving on http://{}", g.addr);
        println!(
            "{}",
            serde_json::json!({"event": "gateway", "addr": g.addr.to_string()})
        );
        // The serving threads run until the process ends.
        let threads = g.threads;
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await
        .context("the gateway stopped")?;
        anyhow::bail!("the gateway's serving threads stopped")
    })
}
