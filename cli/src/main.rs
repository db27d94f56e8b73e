//! `vagus`: one binary for every part of Vagus. A thin shell over the
//! libraries: flags are parsed here (clap, each with an environment variable)
//! into validated configs that the subcommands receive.

mod agent_cmd;
mod brain_cmd;
mod gpusim_cmd;
mod load;
mod replay_cmd;
mod run;

use clap::{Parser, Subcommand};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::Run(args) => match run::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Gpusim { command } => gpusim_cmd::run(command),
        Command::Brain(args) => brain_cmd::brain(args),
        Command::Agent(args) => agent_cmd::agent(args),
        Command::Replay(args) => replay_cmd::replay(args),
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
            eprintln!("vagus: {e:#}");
            ExitCode::FAILURE
        }
    }
}
