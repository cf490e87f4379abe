//! The bounded in-process queue between the HTTP source and the Kafka producer.
//!
//! Capacity is two semaphores: `queue_max_size` permits of one event, and `queue_max_bytes`
//! permits of one byte. A request takes the permits for all of its events at once or none (a
//! batch is accepted whole or not at all), and each event carries its permits until Kafka has
//! acknowledged it, so "depth" counts every accepted event not yet durable in Kafka, and
//! "bytes" what they hold, wherever they are (here or in librdkafka's buffers).

use std::sync::{Arc, RwLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// One accepted event on its way to Kafka.
pub struct Queued {
    pub id: String,
    /// Key and payload until handed to librdkafka, which keeps its own copy from then on.
    pub key: String,
    pub payload: Vec<u8>,
    /// What the ingest normalized, for the record's `audit-normalized` header (kept for every
    /// attempt: librdkafka's report does not carry headers back).
    pub normalized: Option<String>,
    /// Who sent it, for the record's `audit-principal` header.
    pub principal: Option<std::sync::Arc<str>>,
    /// Told once Kafka acknowledged the event (ack mode `kafka`).
    pub acked: Option<oneshot::Sender<()>>,
    /// Returned to the queue when this is dropped, after delivery.
    pub permit: Permit,
    pub enqueued_at: std::time::Instant,
}

/// An event's share of the queue: one event and its bytes.
pub struct Permit {
    _event: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// An event ready to be queued.
pub struct Outgoing {
    pub id: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// The `audit-normalized` header value, when anything was normalized.
    pub normalized: Option<String>,
    /// Who sent it (`auth.mode: jwt`), for the record's `audit-principal` header.
    pub principal: Option<std::sync::Arc<str>>,
}

/// What an event's bookkeeping costs beside its strings (the struct, the channel slot, and
/// librdkafka's message header), so that a queue of tiny events is bounded too.
const OVERHEAD_BYTES: usize = 256;

impl Outgoing {
    /// The bytes this event holds while queued.
    pub fn cost(&self) -> usize {
        self.id.len()
            + self.key.len()
            + self.payload.len()
            + self.normalized.as_ref().map_or(0, String::len)
            + self.principal.as_ref().map_or(0, |p| p.len())
            + OVERHEAD_BYTES
    }
}

/// Why nothing was queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("queue full")]
    Full,
    #[error("shutting down")]
    Closed,
}

/// The sending side, shared by the HTTP handlers.
pub struct IngestQueue {
    capacity: usize,
    max_bytes: usize,
    permits: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    sender: RwLock<Option<mpsc::UnboundedSender<Queued>>>,
}

impl IngestQueue {
    /// A queue of `capacity` events holding at most `max_bytes`, and the receiver the
    /// publisher drains.
    pub fn new(
        capacity: usize,
        max_bytes: usize,
    ) -> (IngestQueue, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS);
        (
            IngestQueue {
                capacity,
                max_bytes,
                permits: Arc::new(Semaphore::new(capacity)),
                bytes: Arc::new(Semaphore::new(max_bytes)),
                sender: RwLock::new(Some(tx)),
            },
            rx,
        )
    }

    /// Queues all `events` or none. With `want_ack`, returns one receiver per event that
    /// resolves once Kafka acknowledged it.
    pub fn push_all(
        &self,
        events: Vec<Outgoing>,
        want_ack: bool,
    ) -> Result<Vec<oneshot::Receiver<()>>, Refused> {
        // Held for the whole push: `close` waits for it, so nothing slips in after close.
        let guard = self.sender.read().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(Refused::Closed);
        };
        let n = u32::try_from(events.len()).map_err(|_| Refused::Full)?;
        let costs: Vec<usize> = events.iter().map(Outgoing::cost).collect();
        let total = u32::try_from(costs.iter().sum::<usize>()).map_err(|_| Refused::Full)?;
        let mut bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(total)
            .map_err(|_| Refused::Full)?;
        let mut permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(n)
            .map_err(|_| Refused::Full)?;
        let mut acks = Vec::new();
        let now = std::time::Instant::now();
        let mut send = |e: Outgoing, permit: Permit| {
            let acked = want_ack.then(|| {
                let (tx, rx) = oneshot::channel();
                acks.push(rx);
                tx
            });
            // The receiver lives until the publisher has drained everything; a send error
            // cannot happen while `sender` is Some.
            let _ = tx.send(Queued {
                id: e.id,
                key: e.key,
                payload: e.payload,
                normalized: e.normalized,
                principal: e.principal,
                acked,
                permit,
                enqueued_at: now,
            });
        };
        let mut events = events;
        let last = events.pop();
        for (e, cost) in events.into_iter().zip(&costs) {
            let own = Permit {
                _event: permit.split(1).ok_or(Refused::Full)?,
                _bytes: bytes.split(*cost),
            };
            send(e, own);
        }
        if let Some(e) = last {
            // The last event takes what is left: exactly one permit and its own bytes.
            send(
                e,
                Permit {
                    _event: permit,
                    _bytes: Some(bytes),
                },
            );
        }
        Ok(acks)
    }

    /// Stops accepting: later pushes get [`Refused::Closed`]; the publisher sees the end of
    /// the stream once it has taken everything already queued.
    pub fn close(&self) {
        self.sender
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    pub fn is_closed(&self) -> bool {
        self.sender
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Accepted events not yet acknowledged by Kafka.
    pub fn depth(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by accepted events not yet acknowledged by Kafka.
    pub fn bytes(&self) -> usize {
        self.max_bytes - self.bytes.available_permits()
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Outgoing> {
        (0..n)
            .map(|i| Outgoing {
                id: format!("e{i}"),
                key: "k".into(),
                payload: b"{}".to_vec(),
                normalized: None,
                principal: None,
            })
            .collect()
    }

    #[test]
    fn batch_overflow_accepts_nothing() {
        let (q, mut rx) = IngestQueue::new(5, 1 << 20);
        q.push_all(events(3), false).expect("fits");
        assert_eq!(q.push_all(events(3), false).err(), Some(Refused::Full));
        assert_eq!(q.depth(), 3);
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 3, "nothing of the refused batch was queued");
    }

    #[test]
    fn a_queue_full_in_bytes_refuses_whole_batches_and_frees_bytes_on_delivery() {
        let one = events(1)[0].cost();
        let (q, mut rx) = IngestQueue::new(100, 3 * one);
        q.push_all(events(2), false).expect("two fit");
        assert_eq!(q.bytes(), 2 * one);
        assert_eq!(q.push_all(events(2), false).err(), Some(Refused::Full));
        assert_eq!(q.depth(), 2, "nothing of the refused batch was taken");
        assert_eq!(q.bytes(), 2 * one);
        drop(rx.try_recv().expect("queued"));
        drop(rx.try_recv().expect("queued"));
        assert_eq!((q.depth(), q.bytes()), (0, 0));
        q.push_all(events(3), false)
            .expect("three fit once delivered");
    }

    #[test]
    fn permits_return_when_events_are_dropped_after_delivery() {
        let (q, mut rx) = IngestQueue::new(2, 1 << 20);
        q.push_all(events(2), false).expect("fits");
        assert_eq!(q.depth(), 2);
        let first = rx.try_recv().expect("queued");
        drop(first);
        assert_eq!(q.depth(), 1);
        q.push_all(events(1), false).expect("room again");
        assert_eq!(q.depth(), 2);
    }

    #[test]
    fn close_refuses_new_events_and_ends_the_stream() {
        let (q, mut rx) = IngestQueue::new(4, 1 << 20);
        q.push_all(events(1), false).expect("fits");
        q.close();
        assert_eq!(q.push_all(events(1), false).err(), Some(Refused::Closed));
        assert!(
            rx.try_recv().is_ok(),
            "what was queued before close is still delivered"
        );
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
