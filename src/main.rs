//! `gpubackend -c gpubackend.toml [--gpu N --models a,b]`: the lecture's pod command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use gpubackend::config::Config;

/// Computer-vision inference server speaking the Vision API.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Config file (TOML). Without it the embedded default runs: CPU backend, local queue.
    #[arg(short = 'c', long, env = "GPUBACKEND_CONFIG")]
    config: Option<PathBuf>,
    /// Serve only on this GPU index (device `<server.gpu_backend>:N`), one pod = one GPU.
    #[arg(long, env = "GPUBACKEND_GPU")]
    gpu: Option<u32>,
    /// Serve only these models (comma-separated), e.g. `--models mobilenet_v2`.
    #[arg(long, env = "GPUBACKEND_MODELS", value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Listen address, overriding `server.host`.
    #[arg(long, env = "GPUBACKEND_HOST")]
    host: Option<String>,
    /// Listen port, overriding `server.port`.
    #[arg(long, env = "GPUBACKEND_PORT")]
    port: Option<u16>,
    /// Validate the config (and that weight files exist), print the placement, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    config.override_placement(cli.gpu, cli.models)?;
    if let Some(h) = cli.host {
        config.server.host = h;
    }
    if let Some(p) = cli.port {
        config.server.port = p;
    }
    for p in &config.placement {
        tracing::info!(device = %p.device, models = ?p.models, instances = p.instances, "placement");
    }
    if cli.check {
        for m in config.placed_models() {
            for (_, spec, _) in config.models[&m].stages(&m) {
                gpubackend::models::check_weights(spec.weights())?;
            }
        }
        println!("config OK");
        return Ok(());
    }
    actix_web::rt::System::new().block_on(async move {
        let running = gpubackend::http::start(config, None).context("cannot start the server")?;
        let handle = running.server.handle();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: draining in-flight requests");
            handle.stop(true).await;
        });
        running.server.await.context("server failed")?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
