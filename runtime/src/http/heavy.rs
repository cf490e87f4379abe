//! The lane for checking large batch bodies: one thread, at a lower scheduling priority
//! (nice 10), taking one body at a time. A client sending large bodies as fast as it can gets
//! at most one core, and less than that while anyone else's requests want the CPU; the async
//! workers stay free for everyone else.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The sending side; the thread ends when this is dropped.
pub struct HeavyLane {
    jobs: mpsc::Sender<Job>,
}

impl HeavyLane {
    /// Starts the thread. If it cannot be started, [`HeavyLane::run`] answers None (and large
    /// batches get 503 AUD-005).
    pub fn start() -> HeavyLane {
        let (jobs, queue) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("audit-heavy".into())
            .spawn(move || {
                // On Linux a thread has its own nice value; `who = 0` is the calling thread.
                // Failing to lower it only loses the priority, not the work.
                // SAFETY: setpriority has no memory effects; it only changes this thread's nice value.
                let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                while let Ok(job) = queue.recv() {
                    job();
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the thread for large bodies; checking them inline");
        }
        HeavyLane { jobs }
    }

    /// Runs `work` on the lane and waits for it; None when the lane is gone. Work whose caller
    /// stopped waiting (a timeout) before its turn is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !done.is_closed() {
                let _ = done.send(work());
            }
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_lane_one_at_a_time_and_answers() {
        let lane = HeavyLane::start();
        let here = std::thread::current().id();
        let (a, b) = tokio::join!(
            lane.run(move || (std::thread::current().id() != here, 1)),
            lane.run(|| 2)
        );
        assert_eq!(a, Some((true, 1)), "on another thread");
        assert_eq!(b, Some(2));
    }
}
