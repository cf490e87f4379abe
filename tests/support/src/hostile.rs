//! The hostile section of `make bench`: normal single-event traffic at a fixed rate while other
//! clients send what took a pod down in issue 16 and its relatives: 16 MB bodies, deep nesting,
//! batches with thousands of errors, and slow and silent connections. What counts is what the
//! normal traffic sees (p99, 5xx) and the runtime's peak memory.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::loadgen::{Connection, Tally, Target, event, worker};

/// What hostile clients got back, by kind of attack.
#[derive(Debug, Default)]
struct Answers {
    by_status: std::collections::BTreeMap<u16, u64>,
    broken: u64,
}

/// One hostile client: POSTs `body` to `path` in a loop until `until`, reconnecting whenever
/// the server closes the connection (as it may after refusing a body it did not read).
async fn repeat(address: String, path: &'static str, body: Vec<u8>, until: Instant) -> Answers {
    let mut answers = Answers::default();
    while Instant::now() < until {
        let Ok(mut c) = Connection::open(&address).await else {
            answers.broken += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while Instant::now() < until {
            match c.post(path, "application/json", &body).await {
                Ok(status) => *answers.by_status.entry(status).or_default() += 1,
                Err(_) => {
                    answers.broken += 1;
                    break;
                }
            }
        }
    }
    answers
}

/// Connections that send a head and then one byte of body per second, and connections that
/// send nothing: they must neither grow memory nor slow anyone else.
async fn slow_clients(address: String, n: usize, until: Instant) -> Answers {
    let mut answers = Answers::default();
    let mut open = Vec::new();
    for i in 0..n {
        let Ok(mut s) = tokio::net::TcpStream::connect(&address).await else {
            answers.broken += 1;
            continue;
        };
        if i % 2 == 0 {
            let head = "POST /v1/auditmanager/events HTTP/1.1\r\nhost: slow\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                answers.broken += 1;
                continue;
            }
        }
        open.push(s);
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, s) in open.iter_mut().enumerate() {
            if i % 2 == 0 {
                let _ = s.write_all(b" ").await;
            }
        }
    }
    answers
}

/// The body of a single event whose roles hold `n` numbers.
fn roles_event(n: usize) -> String {
    let numbers = vec!["1"; n].join(",");
    event(0, "hostile").replace(
        r#""roles":["enrolment-officer"]"#,
        &format!(r#""roles":[{numbers}]"#),
    )
}

/// Runs normal traffic at `rate` events/s over `connections` connections for `seconds`,
/// beside the hostile clients, against the runtime at `address`; prints the figures and
/// returns the normal traffic's tally.
pub async fn mix(address: &str, rate: u64, connections: usize, seconds: u64) -> Tally {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let huge = roles_event(8_000_000);
    let huge_batch = format!(r#"{{"events":[{huge}]}}"#);
    let deep = format!(
        r#"{{"events":[{}{}]}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let wrong = roles_event(5_000).replace(r#""outcome":"success""#, r#""outcome":"maybe""#);
    let errors = format!(r#"{{"events":[{}]}}"#, vec![wrong.as_str(); 500].join(","));
    let hostile: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("16 MB event", "/v1/auditmanager/events", huge.into_bytes()),
        (
            "16 MB batch",
            "/v1/auditmanager/events/batch",
            huge_batch.into_bytes(),
        ),
        (
            "20,000 deep",
            "/v1/auditmanager/events/batch",
            deep.into_bytes(),
        ),
        (
            "500 x 5,001 errors",
            "/v1/auditmanager/events/batch",
            errors.into_bytes(),
        ),
    ];
    // The attackers run on their own thread: copying 16 MB bodies must not delay the normal
    // traffic's sends, whose latency counts from their scheduled time.
    let target = address.to_string();
    let attackers = std::thread::spawn(move || -> Vec<(String, Answers)> {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Vec::new();
        };
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (name, path, body) in hostile {
                let name = format!("{name} ({:.1} MB)", body.len() as f64 / 1e6);
                tasks.push((
                    name,
                    tokio::spawn(repeat(target.clone(), path, body, until)),
                ));
            }
            tasks.push((
                "200 slow and silent connections".to_string(),
                tokio::spawn(slow_clients(target.clone(), 200, until)),
            ));
            let mut done = Vec::new();
            for (name, task) in tasks {
                if let Ok(answers) = task.await {
                    done.push((name, answers));
                }
            }
            done
        })
    });

    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let mut normal = Vec::new();
    for c in 0..connections {
        let run = format!("hostile-normal-{c}");
        normal.push(tokio::spawn(worker(
            Target {
                address: address.to_string(),
                path: "/v1/auditmanager/events",
                content_type: "application/json",
                bearer: None,
            },
            move |n| event(n, &run),
            until,
            Some(interval),
            interval.mul_f64(c as f64 / connections as f64),
        )));
    }
    let mut tally = Tally::default();
    for t in normal {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let attacks = tokio::task::spawn_blocking(move || attackers.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    for (name, a) in attacks {
        let answers: Vec<String> = a
            .by_status
            .iter()
            .map(|(status, n)| format!("{n} x {status}"))
            .collect();
        println!(
            "  hostile {name:<34} answers: {}; connections cut: {}",
            if answers.is_empty() {
                "none".to_string()
            } else {
                answers.join(", ")
            },
            a.broken
        );
    }
    tally
}
