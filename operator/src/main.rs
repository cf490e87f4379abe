//! audit-manager-operator: reconciles `AuditManager` resources.

use std::sync::Arc;

use anyhow::Context;
use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller;
use audit_manager_operator::{lease, metrics::Metrics};
use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "audit-manager-operator",
    version,
    about = "Provisions and runs audit-manager from AuditManager resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (leader-elected), with /metrics, /healthz and /readyz.
    Run {
        /// Address of the metrics and health endpoints.
        #[arg(long, env = "OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: String,
        /// The operator's own namespace: its leader-election Lease and the ownership records.
        #[arg(long, env = "POD_NAMESPACE", default_value = "audit-manager-system")]
        namespace: String,
        /// This replica's identity in the Lease.
        #[arg(long, env = "POD_NAME", default_value = "audit-manager-operator")]
        identity: String,
        /// Skip leader election (one replica only, e.g. local runs).
        #[arg(long)]
        no_leader_election: bool,
        /// Reconcile only the AuditManagers of this namespace (empty: every namespace).
        #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
        watch_namespace: String,
    },
    /// Print the CRD (the same YAML as manifests/crd.yaml).
    Crd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(true)
        .init();
    let result = match cli.command {
        Command::Crd => audit_manager_crds::crd_yaml()
            .map(|y| print!("{y}"))
            .context("serializing the CRD"),
        Command::Run {
            listen,
            namespace,
            identity,
            no_leader_election,
            watch_namespace,
        } => {
            let watch = Some(watch_namespace).filter(|ns| !ns.is_empty());
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")
                .and_then(|rt| {
                    rt.block_on(run(listen, namespace, identity, no_leader_election, watch))
                })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "audit-manager-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    listen: String,
    namespace: String,
    identity: String,
    no_leader_election: bool,
    watch_namespace: Option<String>,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let metrics = Arc::new(Metrics::default());
    let served = Arc::clone(&metrics);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&served);
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    let leadership = match no_leader_election {
        true => None,
        false => Some(
            lease::acquire(&namespace, "audit-manager-operator", &identity)
                .await
                .context("leader election")?,
        ),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = watch_namespace.as_deref().unwrap_or("(all)"),
        "reconciling AuditManager resources"
    );
    let ctx = Ctx::new(client, metrics, identity).in_namespace(namespace);
    let controller = controller::run(Arc::new(ctx), watch_namespace);
    let Some(mut leadership) = leadership else {
        controller.await;
        return Ok(());
    };
    tokio::select! {
        // SIGTERM or SIGINT: the controller finished its reconciles in progress.
        () = controller => leadership.release().await,
        () = leadership.lost() => anyhow::bail!(
            "this replica is no longer the leader (a renewal of the lease failed and another replica may hold it); exiting to wait on the lease again"
        ),
    }
    Ok(())
}
