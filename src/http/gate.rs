//! The bound on requests handled at once (`http_threads`).
//!
//! Each connection's own thread reads its requests and calls the handler
//! (see `mod.rs`); the gate lets at most `limit` of them run the handler
//! at once, so a burst of connections shares the cores instead of
//! thrashing them, and the node's memory for work in progress stays
//! bounded. A request waiting at the gate has been read whole and holds
//! nothing but its connection's thread. A handler leaves the gate before
//! it writes its reply (`leave`), so a client slow to read holds no turn.
//! Once the gate closes (the node stops), requests that arrive are refused;
//! those already waiting are still served, and `close` returns when none
//! runs or waits.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    running: usize,
    waiting: usize,
    closed: bool,
}

pub struct Gate {
    limit: usize,
    state: Mutex<State>,
    /// Signalled when a turn ends.
    freed: Condvar,
}

/// A turn at the gate; the next waiting request goes in when it drops.
pub struct Turn {
    gate: Arc<Gate>,
}

thread_local! {
    /// The turn of the request this thread is handling.
    static TURN: RefCell<Option<Turn>> = const { RefCell::new(None) };
}

/// Keeps `turn` as this thread's until `leave`.
pub fn hold(turn: Turn) {
    TURN.with(|t| *t.borrow_mut() = Some(turn));
}

/// Ends this thread's turn, if it holds one: called before a reply is
/// written, and when the handler returns.
pub fn leave() {
    let turn = TURN.with(|t| t.borrow_mut().take());
    drop(turn);
}

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a turn. None: the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<Turn> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        if s.running >= self.limit {
            s.waiting += 1;
            while s.running >= self.limit {
                s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.waiting -= 1;
        }
        s.running += 1;
        Some(Turn { gate: self.clone() })
    }

    /// Refuses new requests, then waits up to `limit` for those running or
    /// waiting to end. False: some were still running at the deadline.
    pub fn close(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        s.closed = true;
        while s.running > 0 || s.waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .freed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.running -= 1;
        let (waiting, closed) = (s.waiting > 0, s.closed);
        drop(s);
        // A notification costs a system call: only when someone waits.
        if closed {
            // The closer waits on the same condition.
            self.gate.freed.notify_all();
        } else if waiting {
            self.gate.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn at_most_limit_run_at_once() {
        let gate = Arc::new(Gate::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _turn = gate.enter().unwrap();
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} at once");
    }

    #[test]
    fn a_closed_gate_refuses_and_close_waits_for_the_running() {
        let gate = Arc::new(Gate::new(1));
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let runner = std::thread::spawn(move || {
            let _turn = g.enter().unwrap();
            entered.send(()).unwrap();
            held.recv().unwrap();
        });
        inside.recv().unwrap();
        // Running: close gives up at its deadline.
        assert!(!gate.close(Duration::from_millis(50)));
        assert!(gate.enter().is_none(), "a closed gate lets no one in");
        release.send(()).unwrap();
        runner.join().unwrap();
        assert!(gate.close(Duration::from_secs(10)));
    }

    #[test]
    fn leave_ends_the_turn_this_thread_holds() {
        let gate = Arc::new(Gate::new(1));
        hold(gate.enter().unwrap());
        let g = gate.clone();
        let other = std::thread::spawn(move || {
            // Waits until the main thread leaves.
            let _turn = g.enter().unwrap();
        });
        leave();
        other.join().unwrap();
        leave(); // holding none: nothing to do
        assert!(gate.close(Duration::from_secs(10)));
    }
}
