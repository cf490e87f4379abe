//! The load generator of `make bench`: keep-alive connections, closed-loop (saturation) or
//! open-loop (fixed rate, latency measured from the scheduled send time so a stall is not
//! hidden), and a latency summary.

use std::time::{Duration, Instant};

use crate::http::HttpClient;

/// A realistic event with a unique id (`run`-`n`) and its send time in `data.context.sent`.
pub fn event(n: u64, run: &str) -> String {
    let now = chrono_now();
    // Fixed-size, realistic event; ids unique per run.
    format!(
        r#"{{"specversion":"1.0","id":"{run}-{n}","source":"/bench","type":"org.openg2p.beneficiary.viewed","subject":"beneficiary/b_{}","time":"{now}","data":{{"actor":{{"type":"user","id":"u_{}","roles":["enrolment-officer"]}},"action":"view","outcome":"success","resource":{{"type":"beneficiary","id":"b_{}"}},"context":{{"sent":"{now}"}}}}}}"#,
        n % 100_000,
        n % 5000,
        n % 100_000,
    )
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One keep-alive HTTP/1.1 connection for the generator: each request is one `write`, each
/// answer is read into one reused buffer and only its status is kept. Lighter than a general
/// client, so the generator, which shares the machine's cores with what it measures, takes as
/// little CPU from it as it can; every answer is still read whole (Content-Length framing).
pub struct Connection {
    stream: tokio::net::TcpStream,
    host: String,
    /// Extra header lines, each ending in CRLF (e.g. `authorization: Bearer ...`).
    extra: String,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Connection {
    pub async fn open(address: &str) -> std::io::Result<Connection> {
        Connection::open_with(address, None).await
    }

    /// A connection whose requests carry `Authorization: Bearer <bearer>`.
    pub async fn open_with(address: &str, bearer: Option<&str>) -> std::io::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: address.to_string(),
            extra: bearer
                .map(|t| format!("authorization: Bearer {t}\r\n"))
                .unwrap_or_default(),
            request: Vec::with_capacity(4096),
            answer: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` and returns the status code once the whole answer has arrived.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<u16> {
        use std::io::{Error, ErrorKind, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\n{}content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            self.extra,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.answer.clear();
        let broken = |why: &str| Error::new(ErrorKind::InvalidData, format!("HTTP answer: {why}"));
        loop {
            if let Some(end) = find(&self.answer, b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.answer[..end]).map_err(|_| broken("not UTF-8"))?;
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or_else(|| broken("no status line"))?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| broken("no Content-Length"))?;
                let whole = end + 4 + length;
                while self.answer.len() < whole {
                    if self.stream.read_buf(&mut self.answer).await? == 0 {
                        return Err(broken("connection closed inside the body"));
                    }
                }
                return Ok(status);
            }
            if self.stream.read_buf(&mut self.answer).await? == 0 {
                return Err(broken("connection closed before the answer"));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
pub struct Tally {
    pub accepted: u64,
    pub refused: u64,
    pub errors: u64,
    pub latencies_us: Vec<u32>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    pub fn report(mut self, name: &str, elapsed: Duration, events_per_request: usize) {
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

/// Where a worker sends, and as whom.
pub struct Target {
    pub address: String,
    pub path: &'static str,
    pub content_type: &'static str,
    /// `Authorization: Bearer` on every request, when set.
    pub bearer: Option<std::sync::Arc<str>>,
}

/// One connection sending requests; `interval` None = as fast as answers come back
/// (closed loop, saturation), Some = open loop at that spacing.
pub async fn worker(
    target: Target,
    body: impl Fn(u64) -> String,
    until: Instant,
    interval: Option<Duration>,
    offset: Duration,
) -> Tally {
    let Target {
        address,
        path,
        content_type,
        bearer,
    } = target;
    let mut tally = Tally::default();
    let bearer = bearer.as_deref();
    let Ok(mut client) = Connection::open_with(&address, bearer).await else {
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
        match client.post(path, content_type, payload.as_bytes()).await {
            Ok(202) => {
                tally.accepted += 1;
                tally
                    .latencies_us
                    .push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok(503) => tally.refused += 1,
            Ok(_) | Err(_) => {
                tally.errors += 1;
                if let Ok(c) = Connection::open_with(&address, bearer).await {
                    client = c;
                }
            }
        }
    }
    tally
}

pub async fn run_phase(
    name: &str,
    address: &str,
    connections: usize,
    seconds: u64,
    rate: Option<u64>,
    batch: Option<usize>,
) -> u64 {
    run_phase_as(name, address, connections, seconds, rate, batch, None).await
}

/// [`run_phase`] with every request carrying `bearer` (one emitter's token, reused as an
/// emitter reuses it until it expires).
pub async fn run_phase_as(
    name: &str,
    address: &str,
    connections: usize,
    seconds: u64,
    rate: Option<u64>,
    batch: Option<usize>,
    bearer: Option<&str>,
) -> u64 {
    let bearer: Option<std::sync::Arc<str>> = bearer.map(Into::into);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let run = format!("{}-{c}", name.replace(' ', "-"));
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
        let offset = interval
            .map(|i| i.mul_f64(c as f64 / connections as f64))
            .unwrap_or_default();
        let target = Target {
            address: address.to_string(),
            path: match batch {
                None => "/v1/auditmanager/events",
                Some(_) => "/v1/auditmanager/events/batch",
            },
            content_type: "application/json",
            bearer: bearer.clone(),
        };
        let body = move |n: u64| match batch {
            None => event(n, &run),
            Some(size) => {
                let events: Vec<String> = (0..size as u64)
                    .map(|i| event(n * size as u64 + i, &run))
                    .collect();
                format!(r#"{{"events":[{}]}}"#, events.join(","))
            }
        };
        tasks.push(tokio::spawn(worker(target, body, until, interval, offset)));
    }
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let events = tally.accepted * batch.unwrap_or(1) as u64;
    tally.report(name, started.elapsed(), batch.unwrap_or(1));
    events
}

/// The value of a metric from the runtime's `/metrics` (NaN when absent).
pub async fn metric(client: &mut HttpClient, name: &str) -> f64 {
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

/// `env` plus every `AUDIT_MANAGER__*` variable of the benchmark's own environment (which
/// win), so one run can measure other settings: `AUDIT_MANAGER__KAFKA__PRODUCER__LINGER_MS=20
/// make bench`. Each override is printed, so a report says what it measured.
pub fn with_overrides(mut env: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    let overrides: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AUDIT_MANAGER__"))
        .collect();
    for (k, v) in &overrides {
        println!("setting from the environment: {k}={v}");
    }
    env.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(overrides)
        .collect()
}
