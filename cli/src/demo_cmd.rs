//! `vagus demo`: flags into `vagus_demo::DemoConfig`; the summary printed.

use anyhow::Result;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// How long its clients run (the load burst is the middle third): 30s, 2m.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Simulated nodes, each with its own agent (1–8).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub nodes: u32,
    /// GPUs on each simulated node (1–8).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub gpus_per_node: u32,
    /// The brain's HTTP API (HOST:PORT; port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub http: String,
    /// The Azure conversation trace that drives chat-a.
    #[arg(
        long,
        default_value = "../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"
    )]
    pub trace: PathBuf,
    /// Print the summary as one JSON object (and no live view).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    anyhow::ensure!(
        a.duration >= Duration::from_secs(10),
        "--duration {:?}: at least 10s (the burst is its middle third)",
        a.duration
    );
    anyhow::ensure!(
        a.trace.is_file(),
        "--trace {}: no such file",
        a.trace.display()
    );
    let (exe, shim) = crate::run::vagus_and_shim()?;
    let http = crate::addr::resolve("--http", &a.http)?;
    let dir = std::env::temp_dir().join(format!("vagus-demo-{}", std::process::id()));
    let cfg = vagus_demo::DemoConfig {
        vagus: exe,
        shim,
        gpusim: crate::gpusim_cmd::libdir()?,
        duration: a.duration,
        nodes: a.nodes,
        gpus_per_node: a.gpus_per_node,
        http,
        trace: a.trace,
        dir: dir.clone(),
    };
    let mut view = vagus_demo::View::new(!a.json && std::io::stderr().is_terminal());
    let rt = crate::runtime()?;
    let summary = rt.block_on(async {
        tokio::select! {
            r = vagus_demo::run(&cfg, |url| {
                eprintln!(
                    "vagus demo: the brain's API is at {url} (admin token {}, viewer token {}); its dashboard: {url}/ui#token={}",
                    vagus_cluster::TOKEN,
                    vagus_cluster::VIEWER_TOKEN,
                    vagus_cluster::TOKEN
                );
            }, &mut view) => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    // Whatever happened, what it started has stopped (the cluster stops
    // its processes when dropped); its files go too, unless it failed.
    match &summary {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("vagus demo: its logs are in {}", dir.display()),
    }
    let Some(summary) = summary.map_err(anyhow::Error::msg)? else {
        eprintln!("vagus demo: interrupted; everything it started has stopped");
        std::process::exit(130);
    };
    if a.json {
        println!("{summary}");
    } else {
        print!("{}", vagus_demo::render(&summary));
    }
    Ok(())
}
