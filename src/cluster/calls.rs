//! A small pool of long-lived threads for the calls of a gossip round.
//!
//! A round calls a few peers at once (each call bounded by its own timeout)
//! and waits for them all. Starting a thread per call would cost a clone,
//! an mmap of its stack and an exit every round on every node; instead the
//! calls run on up to `max` threads that stay between rounds. A thread is
//! started only when a call finds none idle, so an idle node that gossips
//! with one peer a round keeps one or two of them. Calls beyond what the
//! threads and the queue hold are skipped (and counted by the caller as not
//! made): a round never waits for room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// What the threads share.
struct Shared {
    jobs: Mutex<Receiver<Job>>,
    /// Threads waiting for a job.
    idle: AtomicUsize,
}

pub struct CallPool {
    name: &'static str,
    max: usize,
    /// `None` once the pool is closing.
    queue: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl CallPool {
    /// A pool of at most `max` threads named `name`; at most `max` calls
    /// wait for a thread.
    pub fn new(name: &'static str, max: usize) -> CallPool {
        let max = max.max(1);
        let (queue, jobs) = mpsc::sync_channel(max);
        CallPool {
            name,
            max,
            queue: Some(queue),
            shared: Arc::new(Shared {
                jobs: Mutex::new(jobs),
                idle: AtomicUsize::new(0),
            }),
            threads: Vec::new(),
        }
    }

    /// Threads started so far.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Runs `job` on one of the pool's threads. False: the pool is full
    /// (or no thread could be started) and the job was not taken.
    pub fn run(&mut self, job: impl FnOnce() + Send + 'static) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        if self.shared.idle.load(Ordering::Acquire) == 0 && self.threads.len() < self.max {
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || worker(&shared))
            {
                Ok(handle) => self.threads.push(handle),
                Err(e) => log::warn!("cannot start a {} thread: {e}", self.name),
            }
        }
        if self.threads.is_empty() {
            return false;
        }
        match queue.try_send(Box::new(job)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Runs every job and waits until all have ended or `deadline` has
    /// passed, whichever is first. Returns how many were not taken.
    pub fn run_all(&mut self, jobs: Vec<Job>, deadline: Instant) -> usize {
        let (done, ended) = mpsc::channel::<()>();
        let mut taken = 0;
        let total = jobs.len();
        for job in jobs {
            let done = done.clone();
            if self.run(move || {
                job();
                let _ = done.send(());
            }) {
                taken += 1;
            }
        }
        drop(done);
        for _ in 0..taken {
            let left = deadline.saturating_duration_since(Instant::now());
            if ended.recv_timeout(left).is_err() {
                break;
            }
        }
        total - taken
    }
}

impl Drop for CallPool {
    /// Closes the queue and waits for the calls under way (each is bounded
    /// by its own timeout), so nothing outlives the pool's owner.
    fn drop(&mut self) {
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One thread: take a job, run it, until the queue closes.
fn worker(shared: &Shared) {
    loop {
        shared.idle.fetch_add(1, Ordering::AcqRel);
        let job = {
            let jobs = shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv()
        };
        shared.idle.fetch_sub(1, Ordering::AcqRel);
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// A boxed job, for `run_all`.
pub fn job(f: impl FnOnce() + Send + 'static) -> Job {
    Box::new(f)
}

/// How long a round of calls that each make up to `calls` requests of
/// `timeout` may take, with room for scheduling on a loaded machine.
pub fn round_deadline(calls: u32, timeout: Duration) -> Instant {
    Instant::now() + timeout * calls.max(1) + Duration::from_millis(500)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn runs_every_job_on_few_long_lived_threads() {
        let mut pool = CallPool::new("test-call", 4);
        let count = Arc::new(AtomicU64::new(0));
        for _ in 0..50 {
            let jobs = (0..3)
                .map(|_| {
                    let count = count.clone();
                    job(move || {
                        count.fetch_add(1, Ordering::Relaxed);
                    })
                })
                .collect();
            let skipped = pool.run_all(jobs, Instant::now() + Duration::from_secs(10));
            assert_eq!(skipped, 0);
        }
        assert_eq!(count.load(Ordering::Relaxed), 150);
        assert!(pool.threads() <= 4, "{} threads", pool.threads());
    }

    #[test]
    fn a_full_pool_skips_rather_than_waits() {
        let mut pool = CallPool::new("test-call", 1);
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let held = Arc::new(held);
        let blocker = {
            let held = held.clone();
            move || {
                let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(10));
            }
        };
        assert!(pool.run(blocker));
        // One thread busy, room for one waiting job: the third is refused.
        let mut taken = 0;
        for _ in 0..3 {
            if pool.run(|| {}) {
                taken += 1;
            }
        }
        assert!(
            taken <= 1,
            "{taken} taken with one busy thread and a queue of one"
        );
        let started = Instant::now();
        let skipped = pool.run_all(
            vec![job(|| {}), job(|| {})],
            Instant::now() + Duration::from_millis(200),
        );
        assert!(skipped >= 1);
        assert!(started.elapsed() < Duration::from_secs(5));
        release.send(()).unwrap();
        drop(pool);
    }

    #[test]
    fn dropping_the_pool_waits_for_calls_under_way() {
        let mut pool = CallPool::new("test-call", 2);
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        assert!(pool.run(move || {
            std::thread::sleep(Duration::from_millis(50));
            d.fetch_add(1, Ordering::Relaxed);
        }));
        drop(pool);
        assert_eq!(done.load(Ordering::Relaxed), 1);
    }
}
