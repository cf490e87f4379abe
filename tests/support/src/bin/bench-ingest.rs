//! `make bench` (ingest part): an open-loop HTTP load generator against a release
//! `audit-manager serve` publishing to a real Kafka broker.
//!
//! Measures, in one run:
//! - saturation, single events: accepted events/s and latency percentiles;
//! - saturation, batches: accepted events/s through `/events/batch`;
//! - the cost of `auth.mode: jwt`: single and batch saturation on two fresh runtimes, one with
//!   authentication off and one with it on, their phases alternating;
//! - fixed rate (open loop, latency from the scheduled send time, so a stall is not hidden);
//! - memory: idle RSS, and RSS per queued event with the broker stopped;
//! - how long a full queue takes to drain once the broker is back;
//! - a hostile mix (16 MB bodies, deep nesting, thousands of errors, slow clients) beside
//!   normal traffic, on a fresh process: normal p99 and 5xx, and the peak RSS.
//!
//! Usage: bench-ingest [--seconds N] [--rate EVENTS_PER_S] [--connections N] [--batch N]
//!        [--queue N] [--warmup SECONDS] [--rounds N] [--only SECTION]
//! SECTION is one of `saturation` (memory, drain, saturation and fixed rate), `auth` or
//! `hostile`; every section runs when `--only` is not given.
//! The `audit-manager` binary is taken from the directory of this executable.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_testenv::hostile;
use audit_testenv::http::HttpClient;
use audit_testenv::jwt::{JwksServer, SigningKey};
use audit_testenv::loadgen::{event, metric, run_phase, run_phase_as, with_overrides};
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka};

struct Options {
    seconds: u64,
    rate: u64,
    connections: usize,
    batch: usize,
    queue: usize,
    warmup: u64,
    rounds: usize,
    only: Option<Section>,
}

/// A part of the run that `--only` can pick.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Saturation,
    Auth,
    Hostile,
}

impl Options {
    fn runs(&self, section: Section) -> bool {
        self.only.is_none_or(|only| only == section)
    }
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        seconds: 10,
        rate: 20_000,
        connections: 32,
        batch: 500,
        queue: 100_000,
        warmup: 5,
        rounds: 4,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: `{value}` is not a whole number"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = number()?,
            "--rate" => o.rate = number()?,
            "--connections" => o.connections = number()? as usize,
            "--batch" => o.batch = number()? as usize,
            "--queue" => o.queue = number()? as usize,
            "--warmup" => o.warmup = number()?,
            "--rounds" => o.rounds = number()?.max(1) as usize,
            "--only" => {
                o.only = Some(match value.as_str() {
                    "saturation" => Section::Saturation,
                    "auth" => Section::Auth,
                    "hostile" => Section::Hostile,
                    other => {
                        return Err(format!(
                            "--only: `{other}` is not a section (saturation, auth, hostile)"
                        ));
                    }
                })
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

async fn memory_and_drain(kafka: &Kafka, runtime: &AuditManager, queue: usize) {
    let mut client = match HttpClient::connect(&runtime.address()).await {
        Ok(c) => c,
        Err(e) => return eprintln!("bench: {e}"),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = runtime.rss_bytes().unwrap_or(0);
    println!("{:<28} {:>10.1} MB RSS", "idle", idle as f64 / 1e6);

    kafka.stop();
    let before = runtime.rss_bytes().unwrap_or(0);
    let per_request = 500usize;
    let mut queued = 0usize;
    let mut n = 0u64;
    while queued + per_request <= queue {
        let events: Vec<String> = (0..per_request as u64)
            .map(|i| event(n + i, "mem"))
            .collect();
        n += per_request as u64;
        match client
            .post(
                "/v1/auditmanager/events/batch",
                "application/json",
                format!(r#"{{"events":[{}]}}"#, events.join(",")),
            )
            .await
        {
            Ok(a) if a.status == 202 => queued += per_request,
            Ok(a) => {
                eprintln!("bench: filling the queue got {}", a.status);
                break;
            }
            Err(e) => {
                eprintln!("bench: filling the queue: {e}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = runtime.rss_bytes().unwrap_or(0);
    println!(
        "{:<28} {:>10.0} bytes RSS per queued event ({queued} queued, broker stopped; {:.1} MB total)",
        "queued event cost",
        full.saturating_sub(before) as f64 / queued.max(1) as f64,
        full as f64 / 1e6
    );

    let published_before = metric(&mut client, "audit_kafka_published_total").await;
    if let Err(e) = kafka.resume() {
        return eprintln!("bench: restarting Kafka: {e}");
    }
    // The clock starts when the first event reaches the broker again (reconnecting is not
    // draining) and stops when the queue is empty.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first = None;
    loop {
        let published = metric(&mut client, "audit_kafka_published_total").await;
        let depth = metric(&mut client, "audit_ingest_queue_depth").await;
        if first.is_none() && published > published_before {
            first = Some(Instant::now());
        }
        if depth == 0.0 {
            break;
        }
        if Instant::now() > deadline {
            return eprintln!("bench: queue not drained within 120 s (depth {depth})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = first.map(|f| f.elapsed()).unwrap_or_default();
    println!(
        "{:<28} {:>10.0} ms to drain {queued} queued events to Kafka ({:.0} events/s)",
        "full queue drain",
        took.as_secs_f64() * 1000.0,
        queued as f64 / took.as_secs_f64().max(1e-3)
    );
}

/// The hostile section, on a fresh process so its peak memory is its own.
async fn hostile_mix(binary: &std::path::Path, env: &[(String, String)], o: &Options) {
    const RATE: u64 = 5_000;
    let runtime = match AuditManager::start(binary, &["serve"], env) {
        Ok(r) => r,
        Err(e) => return eprintln!("bench-ingest: {e}"),
    };
    let address = runtime.address();
    run_phase(
        "warm-up (not counted)",
        &address,
        16,
        o.warmup,
        Some(RATE),
        None,
    )
    .await;
    let idle = runtime.peak_rss_bytes().unwrap_or(0);
    println!(
        "hostile mix, {} s: normal single events at {RATE}/s beside:",
        o.seconds
    );
    let started = Instant::now();
    let normal = hostile::mix(&address, RATE, 16, o.seconds).await;
    let elapsed = started.elapsed();
    let peak = runtime.peak_rss_bytes().unwrap_or(0);
    let fivexx = normal.refused;
    let other = normal.errors;
    normal.report(&format!("  normal single, {RATE}/s"), elapsed, 1);
    println!(
        "  peak RSS {:.1} MB (before the mix {:.1} MB); normal traffic: {fivexx} answered 5xx, {other} other failures",
        peak as f64 / 1e6,
        idle as f64 / 1e6
    );
}

/// The cost of `auth.mode: jwt` (an RS256 issuer, as Keycloak's and the API server's tokens
/// are; each connection reuses its emitter's token, as emitters do). Two fresh runtimes, one
/// with authentication off and one with it on, against the same broker and topic; their phases
/// alternate (off, jwt, off, jwt, ...) so that whatever drifts during a run (the broker's log,
/// the page cache, the other core's load) falls on both sides alike (`--rounds`, 4 by default:
/// the batch phases are bound by the broker, whose pace varies from phase to phase), and each phase starts once
/// both queues are empty, so none pays for the broker's backlog of the one before. The cost compares the
/// events accepted over all rounds.
async fn with_authentication(binary: &std::path::Path, env: &[(String, String)], o: &Options) {
    let key = match SigningKey::generate("bench") {
        Ok(k) => k,
        Err(e) => return eprintln!("bench-ingest: {e}"),
    };
    let jwks = JwksServer::start(vec![key.jwk.clone()]).await;
    let issuer = "https://keycloak.bench/realms/openg2p";
    let yaml = format!(
        "auth:\n  mode: jwt\n  issuers:\n    - name: keycloak\n      issuer: {issuer}\n      jwks_url: {}\n      audiences: [audit-manager]\n      principal_claim: azp\n  emitters:\n    - principal: bench-*\n      sources: ['/bench']\n",
        jwks.url
    );
    let config = match audit_testenv::jwt::write_scratch("bench-auth.yaml", &yaml) {
        Ok(p) => p,
        Err(e) => return eprintln!("bench-ingest: {e}"),
    };
    let mut jwt_env = env.to_vec();
    jwt_env.push(("CONFIG_PATH".into(), config.display().to_string()));
    // Started off this thread: the runtime reads the JWK set at start-up from the server above,
    // which this (single-threaded) runtime must keep serving meanwhile.
    let start = |env: Vec<(String, String)>| {
        let binary = binary.to_path_buf();
        tokio::task::spawn_blocking(move || AuditManager::start(&binary, &["serve"], &env))
    };
    let (off, on) = match (start(env.to_vec()).await, start(jwt_env).await) {
        (Ok(Ok(off)), Ok(Ok(on))) => (off, on),
        (Ok(Err(e)), _) | (_, Ok(Err(e))) => return eprintln!("bench-ingest: {e}"),
        (Err(e), _) | (_, Err(e)) => return eprintln!("bench-ingest: starting a runtime: {e}"),
    };
    let now = audit_testenv::jwt::now();
    let token = key.sign(
        &serde_json::json!({"iss": issuer, "sub": "service-account-bench", "azp": "bench-emitter",
        "aud": "audit-manager", "iat": now, "exp": now + 3600}),
    );
    let sides = [
        ("off", off.address(), None),
        ("jwt", on.address(), Some(token.as_str())),
    ];
    let processes = [&off, &on];
    println!(
        "authentication, off against jwt (RS256, one emitter token per connection), two fresh runtimes, phases alternating, {} rounds:",
        o.rounds
    );
    for (side, address, bearer) in &sides {
        let name = format!("warm-up, {side} (not counted)");
        run_phase_as(&name, address, o.connections, o.warmup, None, None, *bearer).await;
    }
    // [side][single, batch]: events accepted over all rounds, and the runtime's CPU seconds.
    let mut accepted = [[0u64; 2]; 2];
    let mut cpu = [[0f64; 2]; 2];
    for round in 1..=o.rounds {
        for (shape, (connections, batch)) in [(o.connections, None), (8, Some(o.batch))]
            .into_iter()
            .enumerate()
        {
            for (i, (side, address, bearer)) in sides.iter().enumerate() {
                let name = match batch {
                    None => format!("single, {side}, round {round}"),
                    Some(n) => format!("batch of {n}, {side}, round {round}"),
                };
                // Each phase starts with empty queues: none pays for the backlog the phase
                // before left with the broker.
                settle(&[&sides[0].1, &sides[1].1]).await;
                let before = processes[i].cpu_seconds().unwrap_or(0.0);
                accepted[i][shape] +=
                    run_phase_as(&name, address, connections, o.seconds, None, batch, *bearer)
                        .await;
                cpu[i][shape] += processes[i].cpu_seconds().unwrap_or(0.0) - before;
            }
        }
    }
    let cost =
        |shape: usize| 100.0 * (1.0 - accepted[1][shape] as f64 / accepted[0][shape].max(1) as f64);
    let rate = |side: usize, shape: usize| {
        accepted[side][shape] as f64 / (o.rounds as u64 * o.seconds) as f64
    };
    // The runtime's own CPU time per event: what authentication costs the runtime, apart
    // from the broker and the generator it shares the cores with.
    let micros =
        |side: usize, shape: usize| 1e6 * cpu[side][shape] / accepted[side][shape].max(1) as f64;
    let cpu_cost =
        |shape: usize| 100.0 * (micros(1, shape) / micros(0, shape).max(f64::MIN_POSITIVE) - 1.0);
    println!(
        "authentication CPU cost (the runtime's CPU time per accepted event, jwt against off): single {:.1}% ({:.2} against {:.2} µs), batch {:.1}% ({:.2} against {:.2} µs)",
        cpu_cost(0),
        micros(1, 0),
        micros(0, 0),
        cpu_cost(1),
        micros(1, 1),
        micros(0, 1)
    );
    println!(
        "authentication cost (events accepted, jwt against off, {} alternating rounds): single {:.1}% ({:.0} against {:.0} events/s), batch {:.1}% ({:.0} against {:.0} events/s) (target: under 10%)",
        o.rounds,
        cost(0),
        rate(1, 0),
        rate(0, 0),
        cost(1),
        rate(1, 1),
        rate(0, 1)
    );
}

/// Waits (at most two minutes each) until the runtimes at `addresses` have published every
/// queued event.
async fn settle(addresses: &[&str]) {
    for address in addresses {
        let Ok(mut client) = HttpClient::connect(address).await else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(&mut client, "audit_ingest_queue_depth").await > 0.0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Memory, drain, and saturation (single and batch) and a fixed rate on one runtime.
async fn saturation(
    kafka: &Kafka,
    binary: &std::path::Path,
    env: &[(String, String)],
    o: &Options,
) {
    let runtime = match AuditManager::start(binary, &["serve"], env) {
        Ok(r) => r,
        Err(e) => return eprintln!("bench-ingest: {e}"),
    };
    memory_and_drain(kafka, &runtime, o.queue).await;
    let address = runtime.address();
    // The broker has only just started (and compiles its hot paths) and the runtime's
    // connections are cold: a few seconds of the same load first, reported, not counted.
    run_phase(
        "warm-up (not counted)",
        &address,
        o.connections,
        o.warmup,
        None,
        None,
    )
    .await;
    run_phase(
        "single, saturation",
        &address,
        o.connections,
        o.seconds,
        None,
        None,
    )
    .await;
    let name = format!("batch of {}, saturation", o.batch);
    run_phase(&name, &address, 8, o.seconds, None, Some(o.batch)).await;
    let name = format!("single, fixed {} /s", o.rate);
    run_phase(
        &name,
        &address,
        o.connections,
        o.seconds,
        Some(o.rate),
        None,
    )
    .await;
    let peak = runtime.rss_bytes().unwrap_or(0) as f64 / 1e6;
    println!("peak RSS after the runs: {peak:.1} MB");
}

fn main() -> std::process::ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-ingest: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("audit-manager")))
        .unwrap_or_else(|| PathBuf::from("audit-manager"));
    if !binary.exists() {
        eprintln!(
            "bench-ingest: {} not found; build it with `cargo build --release -p audit-manager`",
            binary.display()
        );
        return std::process::ExitCode::FAILURE;
    }
    // The broker's JVM with its full JIT, as in production: with the quick JIT only, the
    // broker's record validation (decompressing and walking every record, headers included)
    // is what the phases would measure.
    let kafka = match Kafka::start_like_production() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench-ingest: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("bench-ingest: cannot start the async runtime");
        return std::process::ExitCode::FAILURE;
    };
    rt.block_on(async {
        create_topic(&kafka.bootstrap(), "openg2p.audit.events", 12).await;
        let env = with_overrides(vec![
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap()),
            ("AUDIT_MANAGER__COMPONENTS__CONSUMER", "false".to_string()),
            ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".to_string()),
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", o.queue.to_string()),
            // The memory phase fills the queue in events; bytes must not bound it first.
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_BYTES", (o.queue * 2048).to_string()),
            ("AUDIT_MANAGER__LOG__LEVEL", "warn".to_string()),
        ]);
        println!(
            "audit-manager (release) against Apache Kafka {} on 127.0.0.1 (full JIT); {} s per phase, {} connections; the generator shares the machine's cores",
            kafka.version(),
            o.seconds,
            o.connections
        );
        if o.runs(Section::Saturation) {
            saturation(&kafka, &binary, &env, &o).await;
        }
        if o.runs(Section::Auth) {
            with_authentication(&binary, &env, &o).await;
        }
        if o.runs(Section::Hostile) {
            hostile_mix(&binary, &env, &o).await;
        }
    });
    std::process::ExitCode::SUCCESS
}
