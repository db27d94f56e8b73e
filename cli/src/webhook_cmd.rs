//! `vagus webhook`: the mutating admission webhook that sends GPU pods to
//! Vagus's scheduler and injects the shim (see `vagus_kube::webhook`).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use vagus_kube::webhook::{self, Injection};

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// HTTPS address to serve AdmissionReviews on (POST /mutate; GET /healthz).
    #[arg(
        long,
        env = "VAGUS_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443",
        value_name = "HOST:PORT"
    )]
    pub listen: String,
    /// The server certificate chain (PEM; cert-manager's tls.crt, or a
    /// certificate `vagus certs init` issued for the Service's DNS name).
    #[arg(long, env = "VAGUS_WEBHOOK_CERT")]
    pub cert: PathBuf,
    /// Its private key (PEM; tls.key).
    #[arg(long, env = "VAGUS_WEBHOOK_KEY")]
    pub key: PathBuf,
    /// The scheduler GPU pods are sent to.
    #[arg(long, default_value = "vagus-scheduler")]
    pub scheduler_name: String,
    /// The node's directory holding libvagus_shim.so (the agent fills it).
    #[arg(long, default_value = "/var/lib/vagus/lib")]
    pub shim_host_dir: String,
    /// Where that directory is mounted in the pod (read-only).
    #[arg(long, default_value = "/opt/vagus/lib")]
    pub shim_dir: String,
    /// The shim's segment directory, the same on the node and in the pod
    /// (where the agent reads them).
    #[arg(long, default_value = "/run/vagus")]
    pub segment_dir: String,
    /// The MPS control daemon's pipe directory, the same on both sides.
    #[arg(long, default_value = "/tmp/nvidia-mps")]
    pub mps_pipe_dir: String,
}

pub fn webhook(args: WebhookArgs) -> Result<()> {
    let addr = crate::addr::resolve("--listen", &args.listen)?;
    // Checked here, so that bad files are said before anything listens.
    webhook::tls_config(&args.cert, &args.key).map_err(anyhow::Error::msg)?;
    let cfg = Injection {
        scheduler_name: args.scheduler_name,
        shim_host_dir: args.shim_host_dir,
        shim_dir: args.shim_dir,
        segment_dir: args.segment_dir,
        mps_pipe_dir: args.mps_pipe_dir,
    };
    crate::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {addr}: cannot listen"))?;
        let at = listener.local_addr()?;
        eprintln!("vagus webhook: AdmissionReviews on https://{at}/mutate");
        println!(
            "{}",
            serde_json::json!({"event": "webhook", "addr": at.to_string()})
        );
        webhook::serve_files(listener, args.cert, args.key, cfg).await?;
        Ok(())
    })
}
