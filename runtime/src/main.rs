//! The `audit-manager` binary: one image for ingest, consume and partition maintenance.

use clap::{Parser, Subcommand};

use audit_manager::config::Config;
use audit_manager::sink::dlq::Filter;

/// mimalloc keeps size classes apart: the short-lived JSON trees of each request do not
/// fragment the pages that hold queued events, so a queued event costs its bytes, not more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "audit-manager",
    version,
    about = "Audit events in, stored exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP ingest, Kafka producer, consumer and PostgreSQL sink (see `components.*`).
    Serve,
    /// Apply the schema migrations in `migrations/` (under an advisory lock).
    Migrate {
        /// As an admin: create the owner, writer and reader roles (passwords from
        /// AUDIT_MANAGER_{OWNER,WRITER,READER}_PASSWORD) and the database, then migrate as owner.
        #[arg(long)]
        create_roles: bool,
    },
    /// Create the monthly partitions of the retention window and ahead; drop expired ones.
    Maintain {
        /// Run again after this long (e.g. 1h, 15m, 30s) until interrupted.
        #[arg(long, value_parser = parse_interval)]
        every: Option<std::time::Duration>,
        /// Pretend the current time is this RFC 3339 instant (for testing and backfills).
        #[arg(long, value_parser = parse_time)]
        now: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Dead-letter topic tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Re-publish DLQ records to the main topic: those not replayed before, or with a filter
    /// every record that matches.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only say how many records would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Count the DLQ's records (those the filter matches), by reason.
    Count {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List the DLQ's records as JSON lines: partition, offset, when, reason, id, source, type.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

/// Which DLQ records a `dlq` command looks at.
#[derive(clap::Args)]
struct FilterArgs {
    /// Only events whose `source` starts with this.
    #[arg(long)]
    source: Option<String>,
    /// Only events whose `type` starts with this.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only records sent to the DLQ since this time (RFC 3339) or this long ago (`90m`, `2d`).
    #[arg(long, value_parser = parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Filter {
        Filter {
            source: a.source,
            event_type: a.event_type,
            since: a.since,
        }
    }
}

/// A time (RFC 3339), or a duration back from now.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_time(s).or_else(|_| {
        let ago = audit_manager::config::parse_duration(s)
            .map_err(|e| format!("`{s}` is neither an RFC 3339 time nor a duration: {e}"))?;
        let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
        Ok(chrono::Utc::now() - ago)
    })
}

/// A positive interval, in the configuration's duration syntax (`90s`, `15m`, `1h`, `2d`).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match audit_manager::config::parse_duration(s)? {
        d if d.is_zero() => Err("the interval must be positive".into()),
        d => Ok(d),
    }
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("audit-manager: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);
    trust_only_the_database_ca(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit-manager: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => audit_manager::serve::serve(config).await,
            Command::Migrate { create_roles } => {
                audit_manager::commands::migrate(&config, create_roles).await
            }
            Command::Maintain { every, now } => {
                audit_manager::commands::maintain(&config, every, now).await
            }
            Command::Dlq { command } => match command {
                DlqCommand::Replay { filter, dry_run } => {
                    audit_manager::commands::dlq_replay(&config, &filter.into(), dry_run).await
                }
                DlqCommand::Count { filter } => {
                    audit_manager::commands::dlq_count(&config, &filter.into()).await
                }
                DlqCommand::List { filter, limit } => {
                    audit_manager::commands::dlq_list(&config, &filter.into(), limit).await
                }
            },
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "audit-manager failed");
            eprintln!("audit-manager: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// With a CA for the database, rustls (through sqlx) would also trust the system's public CAs,
/// which libpq never does when `sslrootcert` is set: any publicly signed certificate would then
/// pass `verify-ca`. The system store rustls reads is `SSL_CERT_FILE` when set, so point it at
/// the CA. Kafka's clients are unaffected: they always name their CA file (or probe).
fn trust_only_the_database_ca(config: &Config) {
    let ca = &config.database.sslrootcert;
    if !ca.is_empty() && std::env::var_os("SSL_CERT_FILE").is_none() {
        // SAFETY: called before the Tokio runtime or any other thread exists.
        unsafe { std::env::set_var("SSL_CERT_FILE", ca) };
    }
}
