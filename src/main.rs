//! `gpubackend -c gpubackend.toml [--gpu N --models a,b]`: the lecture's pod command line; plus the
//! tools that must run wherever the server runs, from the same binary: `devices`, `verify`, `bench`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use gpubackend::config::Role;
use gpubackend::models::DeviceSpec;

/// Computer-vision inference server speaking the Vision API.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, Args)]
struct Serve {
    /// What this process does: `all` (API and models, one process), `api` (HTTP; model inputs go
    /// through the Redis broker, `[broker]`) or `worker` (the placed models, fed from the broker).
    #[arg(long, value_enum, default_value_t = Role::All, env = "GPUBACKEND_ROLE")]
    role: Role,
    /// Config file (TOML). Without it the embedded default runs: CPU backend, local queue.
    #[arg(short = 'c', long, env = "GPUBACKEND_CONFIG")]
    config: Option<PathBuf>,
    /// Serve only on this GPU index (device `<server.gpu_backend>:N`), one pod = one GPU.
    #[arg(long, env = "GPUBACKEND_GPU")]
    gpu: Option<u32>,
    /// The backend of `--gpu N`, overriding `server.gpu_backend` (`wgpu` or `cuda`).
    #[arg(long, env = "GPUBACKEND_GPU_BACKEND")]
    gpu_backend: Option<String>,
    /// Serve only these models (comma-separated), e.g. `--models mobilenet_v2`.
    #[arg(long, env = "GPUBACKEND_MODELS", value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Listen address, overriding `server.host`.
    #[arg(long, env = "GPUBACKEND_HOST")]
    host: Option<String>,
    /// Listen port, overriding `server.port`.
    #[arg(long, env = "GPUBACKEND_PORT")]
    port: Option<u16>,
    /// The Open Inference Protocol's gRPC port, overriding `server.grpc_port` (0: any free port).
    #[arg(long, env = "GPUBACKEND_GRPC_PORT")]
    grpc_port: Option<u16>,
    /// A model repository to serve (`<dir>/<name>/config.toml` + the model file), overriding
    /// `repository.path`.
    #[arg(long, env = "GPUBACKEND_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// The Redis broker of `--role api` / `worker` (`redis://host:port/db`), overriding `broker.url`.
    #[arg(long, env = "GPUBACKEND_BROKER_URL")]
    broker_url: Option<String>,
    /// Keep persons in this PostgreSQL database (libpq string or URL): `store.backend = "postgres"`
    /// with this `store.postgres_url` (from a Secret in Kubernetes).
    #[arg(long, env = "GPUBACKEND_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Validate the config and the weight files, open each placed device once (printing its
    /// adapter, or what is missing), print the placement, and exit (non-zero if anything fails).
    #[arg(long)]
    check: bool,
    /// With --check: do not open the devices (a build host without the target's GPUs).
    #[arg(long, requires = "check")]
    skip_devices: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// What this machine offers the GPU backends: Vulkan loader, ICDs, EGL vendor files, adapters;
    /// the CUDA driver, its version and devices. Exits non-zero when neither backend has a GPU.
    Devices {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every network on a device against the committed onnxruntime fixtures (run from the
    /// repository root, or give --root), with the CPU tests' tolerances. Exits non-zero on a mismatch.
    Verify {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Where tests/fixtures and models/ are.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// MobileNetV2 is also checked at this batch size (the fixtures repeated).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Only these networks (mobilenet_v2, mtcnn, sface, ppocr, plates, centernet, realesrgan, nsfw); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Benchmarks: e2e, model, compare, faces, persons (see `gpubackend bench --help`).
    #[command(subcommand)]
    Bench(gpubackend::bench::Cmd),
    /// Quality on labelled real photos: faces (precision and recall over filter settings).
    #[command(subcommand)]
    Eval(gpubackend::eval::Cmd),
    /// Deploy files from the model list.
    #[command(subcommand)]
    Deploy(DeployCmd),
}

#[derive(Debug, Subcommand)]
enum DeployCmd {
    /// The distributed mode's per-model worker Deployments and KEDA ScaledObjects, from
    /// deploy/templates for every placed model of the config (run from the repository root).
    K8s {
        #[arg(short = 'c', long, default_value = "config/gpu.toml")]
        config: PathBuf,
        #[arg(long, default_value = gpubackend::deploy::OUT_DIR)]
        out: PathBuf,
        /// Write nothing; exit non-zero if a file differs from what would be written.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries what the tools print (`devices --json`, `verify`, `bench`).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        None => serve(cli.serve),
        Some(Cmd::Bench(cmd)) => gpubackend::bench::run(cmd),
        Some(Cmd::Eval(cmd)) => gpubackend::eval::run(cmd),
        Some(Cmd::Deploy(DeployCmd::K8s { config, out, check })) => {
            let c = gpubackend::infer::load_config(Some(&config))?;
            let differ = gpubackend::deploy::write_k8s_workers(&c, &config.display().to_string(), &out, check)?;
            for path in &differ {
                println!("{} {path}", if check { "differs:" } else { "wrote" });
            }
            anyhow::ensure!(
                !check || differ.is_empty(),
                "deploy files are not what the config makes: run `make deploy-files`"
            );
            Ok(())
        }
        Some(Cmd::Devices { json }) => {
            let report = gpubackend::models::probe::Report::gather();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            let any_gpu =
                report.wgpu_adapters.iter().any(|a| a.device_type != "Cpu") || !report.cuda.devices.is_empty();
            if !any_gpu {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Cmd::Verify { device, root, batch, only, json }) => {
            let spec = DeviceSpec::parse(&device)?;
            let report = gpubackend::verify::run(&spec, &root, batch, &only)?;
            print!("{report}");
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("write {}", p.display()))?;
            }
            if !report.ok {
                anyhow::bail!("{} differs from the reference beyond tolerance", report.device);
            }
            Ok(())
        }
    }
}

fn serve(cli: Serve) -> anyhow::Result<()> {
    let mut config = gpubackend::infer::load_config(cli.config.as_deref())?;
    if let Some(dir) = cli.model_repository {
        config.repository.path = Some(dir.clone());
        config.add_repository(&dir)?;
        gpubackend::infer::check(&config)?;
    }
    if let Some(b) = cli.gpu_backend {
        config.server.gpu_backend = b;
    }
    config.override_placement(cli.gpu, cli.models)?;
    if let Some(h) = cli.host {
        config.server.host = h;
    }
    if let Some(p) = cli.port {
        config.server.port = p;
    }
    if let Some(p) = cli.grpc_port {
        config.server.grpc_port = Some(p);
    }
    if let Some(url) = cli.broker_url {
        config.broker.url = url;
    }
    if let Some(url) = cli.postgres_url {
        config.store.backend = gpubackend::config::StoreBackend::Postgres;
        config.store.postgres_url = Some(url);
    }
    config.validate()?;
    gpubackend::alloc::cap_arenas(config.server.malloc_arenas);
    tracing::info!(role = ?cli.role, "role");
    for p in &config.placement {
        tracing::info!(device = %p.device, models = ?p.models, instances = p.instances, depth = p.depth(), "placement");
    }
    if cli.check {
        // `--role api` loads no network and opens no device.
        for m in config.placed_models().into_iter().filter(|_| cli.role.runs_models()) {
            for stage in gpubackend::infer::stages(&m, &config.models[&m]) {
                gpubackend::models::check_weights(stage.spec.weights())?;
            }
        }
        let mut unavailable = 0;
        if !cli.skip_devices && cli.role.runs_models() {
            let placed = config.placed_models();
            for p in config.placement.iter().filter(|p| p.models.iter().any(|m| placed.contains(m))) {
                match p.device.probe() {
                    Ok(adapter) => println!("device {}: {adapter}", p.device),
                    Err(e) => {
                        let why = match e {
                            gpubackend::models::DeviceError::Unavailable { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        println!("device {}: UNAVAILABLE: {why}", p.device);
                        unavailable += 1;
                    }
                }
            }
        }
        if unavailable > 0 {
            anyhow::bail!("config OK, but {unavailable} device(s) cannot be opened");
        }
        println!("config OK");
        return Ok(());
    }
    let role = cli.role;
    let drain_s = config.server.shutdown_timeout_s;
    actix_web::rt::System::new().block_on(async move {
        let mut running = gpubackend::http::start_role(config, role, None).context("cannot start the server")?;
        let handle = running.server.handle();
        let feeders = std::mem::take(&mut running.feeders);
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: draining in-flight requests");
            // A worker first answers the jobs it took from the broker (bounded by the same drain time).
            gpubackend::http::RunningServer::drain_feeders(&feeders, std::time::Duration::from_secs(drain_s)).await;
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
