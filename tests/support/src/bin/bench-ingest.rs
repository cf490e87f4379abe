//! `make bench` (ingest part): an open-loop HTTP load generator against a release
//! `audit-manager serve` publishing to a real Kafka broker.
//!
//! Measures, in one run:
//! - saturation, single events: accepted events/s and latency percentiles;
//! - saturation, batches: accepted events/s through `/events/batch`;
//! - fixed rate (open loop, latency from the scheduled send time, so a stall is not hidden);
//! - memory: idle RSS, and RSS per queued event with the broker stopped;
//! - how long a full queue takes to drain once the broker is back.
//!
//! Usage: bench-ingest [--seconds N] [--rate EVENTS_PER_S] [--connections N]
//! The `audit-manager` binary is taken from the directory of this executable.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka};

struct Options {
    seconds: u64,
    rate: u64,
    connections: usize,
    batch: usize,
    queue: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        seconds: 10,
        rate: 20_000,
        connections: 32,
        batch: 500,
        queue: 100_000,
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
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn event(n: u64, run: &str) -> String {
    // Fixed-size, realistic event; ids unique per run.
    format!(
        r#"{{"specversion":"1.0","id":"{run}-{n}","source":"/bench","type":"org.openg2p.beneficiary.viewed","subject":"beneficiary/b_{}","time":"{}","data":{{"actor":{{"type":"user","id":"u_{}","roles":["enrolment-officer"]}},"action":"view","outcome":"success","resource":{{"type":"beneficiary","id":"b_{}"}}}}}}"#,
        n % 100_000,
        chrono_now(),
        n % 5000,
        n % 100_000
    )
}

fn chrono_now() -> String {
    // RFC 3339 in UTC without a chrono dependency: seconds precision is enough.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    fn report(mut self, name: &str, elapsed: Duration, events_per_request: usize) {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return f64::NAN;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            f64::from(self.latencies_us[i]) / 1000.0
        };
        let events = self.accepted * events_per_request as u64;
        println!(
            "{name:<28} {:>10.0} events/s accepted  ({} requests 202, {} refused 503, {} errors)  latency ms p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
            events as f64 / elapsed.as_secs_f64(),
            self.accepted,
            self.refused,
            self.errors,
            pct(0.50),
            pct(0.99),
            pct(0.999)
        );
    }
}

/// One connection sending requests; `interval` None = as fast as answers come back
/// (closed loop, saturation), Some = open loop at that spacing.
async fn worker(
    address: String,
    path: &'static str,
    content_type: &'static str,
    body: impl Fn(u64) -> String,
    until: Instant,
    interval: Option<Duration>,
    offset: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let Ok(mut client) = HttpClient::connect(&address).await else {
        tally.errors += 1;
        return tally;
    };
    let mut n = 0u64;
    let mut next = Instant::now() + offset;
    while Instant::now() < until {
        let scheduled = match interval {
            Some(i) => {
                tokio::time::sleep_until(next.into()).await;
                let s = next;
                next += i;
                s
            }
            None => Instant::now(),
        };
        let payload = body(n);
        n += 1;
        match client.post(path, content_type, payload).await {
            Ok(a) if a.status == 202 => {
                tally.accepted += 1;
                tally
                    .latencies_us
                    .push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok(a) if a.status == 503 => tally.refused += 1,
            Ok(_) | Err(_) => {
                tally.errors += 1;
                if let Ok(c) = HttpClient::connect(&address).await {
                    client = c;
                }
            }
        }
    }
    tally
}

async fn run_phase(
    name: &str,
    address: &str,
    connections: usize,
    seconds: u64,
    rate: Option<u64>,
    batch: Option<usize>,
) {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let run = format!("{}-{c}", name.replace(' ', "-"));
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
        let offset = interval
            .map(|i| i.mul_f64(c as f64 / connections as f64))
            .unwrap_or_default();
        let address = address.to_string();
        tasks.push(tokio::spawn(async move {
            match batch {
                None => {
                    worker(
                        address,
                        "/v1/auditmanager/events",
                        "application/json",
                        move |n| event(n, &run),
                        until,
                        interval,
                        offset,
                    )
                    .await
                }
                Some(size) => {
                    worker(
                        address,
                        "/v1/auditmanager/events/batch",
                        "application/json",
                        move |n| {
                            let events: Vec<String> = (0..size as u64)
                                .map(|i| event(n * size as u64 + i, &run))
                                .collect();
                            format!(r#"{{"events":[{}]}}"#, events.join(","))
                        },
                        until,
                        interval,
                        offset,
                    )
                    .await
                }
            }
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    tally.report(name, started.elapsed(), batch.unwrap_or(1));
}

async fn metric(client: &mut HttpClient, name: &str) -> f64 {
    let Ok(answer) = client.get("/v1/auditmanager/metrics").await else {
        return f64::NAN;
    };
    String::from_utf8_lossy(&answer.body)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
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
    let kafka = match Kafka::start() {
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
        let env = [
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap()),
            ("AUDIT_MANAGER__COMPONENTS__CONSUMER", "false".to_string()),
            ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".to_string()),
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", o.queue.to_string()),
            ("AUDIT_MANAGER__LOG__LEVEL", "warn".to_string()),
        ];
        let runtime = match AuditManager::start(&binary, &["serve"], &env) {
            Ok(r) => r,
            Err(e) => return eprintln!("bench-ingest: {e}"),
        };
        println!(
            "audit-manager (release) against Apache Kafka {} on 127.0.0.1; {} s per phase, {} connections; the generator shares the machine's cores",
            kafka.version(),
            o.seconds,
            o.connections
        );
        memory_and_drain(&kafka, &runtime, o.queue).await;
        let address = runtime.address();
        run_phase("single, saturation", &address, o.connections, o.seconds, None, None).await;
        run_phase(&format!("batch of {}, saturation", o.batch), &address, 8, o.seconds, None, Some(o.batch)).await;
        run_phase(&format!("single, fixed {} /s", o.rate), &address, o.connections, o.seconds, Some(o.rate), None).await;
        println!("peak RSS after the runs: {:.1} MB", runtime.rss_bytes().unwrap_or(0) as f64 / 1e6);
    });
    std::process::ExitCode::SUCCESS
}
