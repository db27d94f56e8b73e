//! `vagus`: one binary for every part of Vagus. A thin shell over the
//! libraries: flags are parsed here (clap, each with an environment variable)
//! into validated configs that the subcommands receive.

mod addr;
mod agent_cmd;
mod bench_loop_cmd;
mod brain_cmd;
mod control_cmd;
mod demo_cmd;
mod gateway_cmd;
mod gpusim_cmd;
mod load;
mod replay_cmd;
mod run;
mod serve_cmd;
mod webhook_cmd;

use clap::{Parser, Subcommand};

// mimalloc: the scrape parser and the proxy allocate per sample and per
// request; glibc's malloc cost them a quarter more CPU (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vagus",
    version,
    about = "Vagus: a GPU-sharing control plane for inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system on gpusim on this machine: a brain, an agent per
    /// simulated node, the gateway and four workloads placed through the
    /// API, with a load burst the control loop answers; watched live.
    Demo(demo_cmd::DemoArgs),
    /// Run an inference-like CUDA workload (real driver or gpusim) and report latency.
    Load(load::LoadArgs),
    /// Run a program under the shim and report its kernels when it exits.
    Run(run::RunArgs),
    /// The brain: accepts agents over QUIC with mutual TLS (--certs) and serves
    /// the decision core's HTTP API (--http).
    Brain(brain_cmd::BrainArgs),
    /// The node agent: finds and measures every GPU process (eBPF, the shim's
    /// segments, NVML), serves Prometheus metrics, streams to the brain.
    Agent(agent_cmd::AgentArgs),
    /// Replay a GPU-sharing trace with a placement policy (the FGD paper's method).
    Replay(replay_cmd::ReplayArgs),
    /// An LLM inference server stand-in: OpenAI completions, continuous
    /// batching, vLLM's metrics, its work run as CUDA kernels.
    Serve(serve_cmd::ServeArgs),
    /// The gateway: an HTTP reverse proxy in front of each model's replicas,
    /// routing by the brain's weights and measuring what users feel.
    Gateway(gateway_cmd::GatewayArgs),
    /// The Kubernetes admission webhook: GPU pods go to Vagus's scheduler
    /// with the shim injected (HTTPS).
    Webhook(webhook_cmd::WebhookArgs),
    /// Benchmark clients.
    Bench {
        #[command(subcommand)]
        command: serve_cmd::BenchCommand,
    },
    /// The brain's control loop, offline.
    Control {
        #[command(subcommand)]
        command: control_cmd::ControlCommand,
    },
    /// Certificates for the agent-brain transport (mutual TLS).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// gpusim, the simulated GPU: where its libraries are, what its devices are doing.
    Gpusim {
        #[command(subcommand)]
        command: gpusim_cmd::GpusimCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a CA, the brain's certificate and one per agent into a directory
    /// (on a directory with a CA already: issue the certificates missing).
    Init {
        /// Directory to write ca.pem/ca.key and NAME.pem/NAME.key into.
        #[arg(long, env = "VAGUS_CERTS_DIR")]
        dir: std::path::PathBuf,
        /// Agent node names, comma-separated (each certificate names its node).
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// The brain's certificate name (agents connect to this name).
        #[arg(long, default_value = "brain")]
        brain: String,
    },
}

/// The async runtime the subcommands that serve run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo_cmd::run(args),
        Command::Load(args) => load::run(args),
        Command::Run(args) => match run::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Gpusim { command } => gpusim_cmd::run(command),
        Command::Brain(args) => brain_cmd::brain(args),
        Command::Agent(args) => agent_cmd::agent(args),
        Command::Replay(args) => replay_cmd::replay(args),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Gateway(args) => gateway_cmd::gateway(args),
        Command::Webhook(args) => webhook_cmd::webhook(args),
        Command::Bench { command } => serve_cmd::bench(command),
        Command::Control { command } => control_cmd::run(command),
        Command::Certs {
            command: CertsCommand::Init { dir, agents, brain },
        } => vagus_link::certs::init(&dir, &brain, &agents)
            .map(|w| {
                let ca = if w.new_ca {
                    "a new CA"
                } else {
                    "the existing CA"
                };
                println!("{}: certificates from {ca}", dir.display());
                if !w.issued.is_empty() {
                    println!("  issued: {}", w.issued.join(", "));
                }
                if !w.kept.is_empty() {
                    println!("  already present, kept: {}", w.kept.join(", "));
                }
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vagus: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line, each said once: many errors here
/// carry their cause in their own message already, which `{:#}` would
/// repeat. A multi-line message (a TOML error's snippet) is flattened.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = flatten(&cause.to_string());
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        // A cause that only adds a code to what is said already
        // ("Error code 14: unable to open database file").
        if let Some((code, rest)) = text.split_once(": ")
            && code.len() <= 24
            && code.bytes().any(|b| b.is_ascii_digit())
            && line.contains(rest)
        {
            continue;
        }
        if line.is_empty() {
            line = text;
            continue;
        }
        // "--tokens FILE", then "FILE: No such file…": FILE once.
        let last = line.rsplit(' ').next().unwrap_or_default();
        let rest = text
            .strip_prefix(last)
            .and_then(|r| r.strip_prefix(": "))
            .filter(|_| !last.is_empty());
        line.push_str(": ");
        line.push_str(rest.unwrap_or(&text));
    }
    line
}

/// A message's lines joined into one, without a snippet's lines (`  |`,
/// `2 | smz = 64`, `  | ^^^`): "TOML parse error at line 2, column 1:
/// unknown field `smz`…".
fn flatten(text: &str) -> String {
    let snippet = |l: &str| {
        l.trim_start_matches(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .starts_with('|')
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !snippet(l))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        /// An error whose message carries its source.
        #[derive(Debug)]
        struct Embeds {
            what: String,
            source: std::io::Error,
        }
        impl std::fmt::Display for Embeds {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "reading {}: {}", self.what, self.source)
            }
        }
        impl std::error::Error for Embeds {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let e = anyhow::Error::from(Embeds {
            what: "/x".into(),
            source: io(),
        });
        assert_eq!(one_line(&e), format!("reading /x: {}", io()));
        let e = anyhow::Error::from(io()).context("cannot read /x");
        assert_eq!(one_line(&e), format!("cannot read /x: {}", io()));
        let e = anyhow::anyhow!("/x: no such file").context("--tokens /x");
        assert_eq!(one_line(&e), "--tokens /x: no such file");
        let toml = "TOML parse error at line 2, column 1\n  |\n2 | smz = 64\n  | ^^^\nunknown field `smz`\n";
        let e = anyhow::anyhow!("{toml}").context("gpusim.toml");
        assert_eq!(
            one_line(&e),
            "gpusim.toml: TOML parse error at line 2, column 1: unknown field `smz`"
        );
    }
}
