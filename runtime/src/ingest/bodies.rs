//! The memory of request bodies being read, bounded over all connections.
//!
//! Each request may hold its first `free_bytes` (one single-event body) without asking: a
//! single event is never refused for this budget, and the number of connections bounds that
//! part. Bytes beyond it come from one shared budget of `max_bytes`; a request that cannot get
//! them is refused at once (never waits), so large bodies cannot starve each other into a
//! deadlock, and it gives them back when it is dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget.
pub struct BodyBudget {
    free_bytes: usize,
    max_bytes: usize,
    bytes: Arc<Semaphore>,
}

/// What one request holds of the budget; returned when dropped.
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

/// The budget had no room.
#[derive(Debug, PartialEq, Eq)]
pub struct Exhausted;

impl BodyBudget {
    pub fn new(max_bytes: usize, free_bytes: usize) -> BodyBudget {
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            free_bytes,
            max_bytes,
            bytes: Arc::new(Semaphore::new(max_bytes)),
        }
    }

    /// Makes `held` cover a body of `size` bytes, or fails without waiting.
    pub fn cover(&self, held: &mut Held, size: usize) -> Result<(), Exhausted> {
        let want = size.saturating_sub(self.free_bytes);
        let more = want.saturating_sub(held.bytes());
        if more == 0 {
            return Ok(());
        }
        let n = u32::try_from(more).map_err(|_| Exhausted)?;
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| Exhausted)?;
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }

    /// Bytes of bodies held beyond each request's free part.
    pub fn in_use(&self) -> usize {
        self.max_bytes - self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_free_large_ones_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(100, 10);
        let mut small = Held::default();
        budget.cover(&mut small, 10).expect("free");
        assert_eq!(budget.in_use(), 0);

        let mut a = Held::default();
        budget.cover(&mut a, 50).expect("room");
        budget.cover(&mut a, 80).expect("grows");
        assert_eq!(budget.in_use(), 70);
        let mut b = Held::default();
        assert_eq!(budget.cover(&mut b, 50), Err(Exhausted), "40 > 30 left");
        budget.cover(&mut b, 40).expect("30 left is enough");
        drop(a);
        assert_eq!(budget.in_use(), 30);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }
}
