//! `kubectl audit`: a kubectl plugin for AuditManagers (install: put `kubectl-audit` on PATH).

use std::process::{Command, ExitCode};

use anyhow::Context;
use audit_manager_operator::plugin;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kubectl audit",
    bin_name = "kubectl audit",
    version,
    about = "Inspect and operate AuditManagers: status, dead letters, a reader session, password rotation.",
    after_help = "Examples:\n  # Conditions, lag per partition and the endpoint\n  kubectl audit status audit -n openg2p\n\n  # Records in the DLQ from the registry since yesterday, then replay them\n  kubectl audit dlq list audit -n openg2p --source /openg2p/registry --since 1d\n  kubectl audit dlq replay audit -n openg2p --source /openg2p/registry --since 1d --dry-run\n\n  # An SQL session as the read-only role\n  kubectl audit psql audit -n openg2p\n\n  # New passwords for the three database roles (the pods roll onto them)\n  kubectl audit rotate-passwords audit -n openg2p"
)]
struct Cli {
    /// The namespace of the AuditManager (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the conditions, the endpoint, replicas and consumer lag per partition.
    Status {
        /// The AuditManager's name.
        name: String,
    },
    /// Count, list or replay the dead-letter topic's records (run in a ready runtime pod).
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// Open psql as the read-only role, with the login from its Secret.
    Psql {
        /// The AuditManager's name.
        name: String,
        /// Connect here instead of spec.database.host (e.g. a `kubectl port-forward`).
        #[arg(long)]
        host: Option<String>,
        /// Connect to this port instead of spec.database.port.
        #[arg(long)]
        port: Option<u16>,
        /// Arguments for psql (after --), e.g. -- -c 'SELECT count(*) FROM audit_events'.
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
    /// Generate new passwords for the database roles; the operator sets them and rolls the pods.
    RotatePasswords {
        /// The AuditManager's name.
        name: String,
        /// Only these roles (owner, writer, reader); default all three.
        #[arg(long = "role", value_parser = ["owner", "writer", "reader"])]
        roles: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// Count the records that match, by reason.
    Count(DlqArgs),
    /// List the records that match, as JSON lines.
    List {
        #[command(flatten)]
        args: DlqArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Send the records back to the events topic: those not replayed before, or with a filter
    /// every record that matches.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Only say how many would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct DlqArgs {
    /// The AuditManager's name.
    name: String,
    /// Only events whose source starts with this.
    #[arg(long)]
    source: Option<String>,
    /// Only events whose type starts with this.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only records sent to the DLQ since this time (RFC 3339) or this long ago (90m, 2d).
    #[arg(long)]
    since: Option<String>,
}

impl DlqArgs {
    /// The arguments of `audit-manager dlq <command>` for the filter.
    fn filter(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, value) in [
            ("--source", &self.source),
            ("--type", &self.event_type),
            ("--since", &self.since),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        out
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    match cli.command {
        Cmd::Status { name } => {
            let am = plugin::resource(&client, &namespace, &name).await?;
            print!("{}", plugin::status_text(&am));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dlq { command } => {
            let (sub, args, extra) = match &command {
                DlqCmd::Count(a) => ("count", a, vec![]),
                DlqCmd::List { args, limit } => {
                    ("list", args, vec!["--limit".into(), limit.to_string()])
                }
                DlqCmd::Replay { args, dry_run } => (
                    "replay",
                    args,
                    dry_run
                        .then(|| "--dry-run".to_string())
                        .into_iter()
                        .collect(),
                ),
            };
            let am = plugin::resource(&client, &namespace, &args.name).await?;
            let pod = plugin::ready_pod(&client, &am).await?;
            let mut kubectl = Command::new("kubectl");
            kubectl
                .args(["exec", "-n", &namespace, &pod, "-c", "audit-manager", "--"])
                .args(["audit-manager", "dlq", sub])
                .args(args.filter())
                .args(extra);
            status_of(kubectl, "kubectl exec")
        }
        Cmd::Psql {
            name,
            host,
            port,
            psql_args,
        } => {
            let am = plugin::resource(&client, &namespace, &name).await?;
            let session = plugin::reader_session(&client, &am, host, port).await?;
            let dir = tempfile::tempdir().context("a folder for the CA bundle")?;
            let mut psql = Command::new("psql");
            psql.envs(&session.env).args(&psql_args);
            if let Some(ca) = &session.ca {
                let path = dir.path().join("ca.crt");
                std::fs::write(&path, ca).context("writing the CA bundle")?;
                psql.env("PGSSLROOTCERT", &path);
            }
            status_of(psql, "psql")
        }
        Cmd::RotatePasswords { name, roles } => {
            let am = plugin::resource(&client, &namespace, &name).await?;
            let deleted = plugin::rotate_passwords(&client, &am, &roles).await?;
            for secret in &deleted {
                println!(
                    "secret/{secret} deleted: the operator generates a new password, sets it on the role and rolls the pods"
                );
            }
            if deleted.is_empty() {
                println!("no role Secret exists yet: nothing to rotate");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `cmd` in the foreground and passes its exit status on.
fn status_of(mut cmd: Command, what: &str) -> anyhow::Result<ExitCode> {
    let status = cmd
        .status()
        .with_context(|| format!("running {what} (is it on PATH?)"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
