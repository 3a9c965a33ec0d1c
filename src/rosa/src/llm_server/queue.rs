//! The fair queue in front of the model: at most `capacity` generations at once (one, on two
//! cores: two at once would each run at half speed), the others wait.
//!
//! Who goes next: a waiting request of a priority client (the kernel: the user waits on it) before
//! the others; among equals, the client served longest ago; a client's own requests in order. So a
//! worker that sends many requests cannot starve another, and the kernel's next decision does not
//! wait behind every worker. A request whose client went away leaves the queue at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct Waiter {
    ticket: u64,
    client: String,
    priority: bool,
    grant: oneshot::Sender<Permit>,
}

struct Inner {
    capacity: usize,
    running: usize,
    waiting: Vec<Waiter>,
    /// client → when it was last served (a counter).
    served: HashMap<String, u64>,
    clock: u64,
    next_ticket: u64,
}

/// The queue; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Mutex<Inner>>,
    priority: Arc<Vec<String>>,
}

/// The right to generate; the next request goes when it is dropped.
pub struct Permit {
    sched: Option<Scheduler>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.sched.take() {
            s.release();
        }
    }
}

/// What the queue looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub running: usize,
    pub waiting: usize,
}

impl Scheduler {
    pub fn new(capacity: usize, priority_clients: Vec<String>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                running: 0,
                waiting: Vec::new(),
                served: HashMap::new(),
                clock: 0,
                next_ticket: 0,
            })),
            priority: Arc::new(priority_clients),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> QueueState {
        let g = self.lock();
        QueueState { running: g.running, waiting: g.waiting.len() }
    }

    /// How many requests would go before `ticket` if nothing else came.
    fn ahead(g: &Inner, ticket: u64) -> usize {
        let Some(me) = g.waiting.iter().find(|w| w.ticket == ticket) else { return 0 };
        let my_key = (!me.priority, g.served.get(&me.client).copied().unwrap_or(0), me.ticket);
        g.waiting
            .iter()
            .filter(|w| (!w.priority, g.served.get(&w.client).copied().unwrap_or(0), w.ticket) < my_key)
            .count()
    }

    /// Wait for a permit. `on_wait` is told how many requests are ahead each time it may have
    /// changed (for keep-alives); dropping the future leaves the queue.
    pub async fn acquire(&self, client: &str) -> Permit {
        let (rx, ticket) = {
            let mut g = self.lock();
            if g.running < g.capacity && g.waiting.is_empty() {
                g.running += 1;
                g.clock += 1;
                let c = g.clock;
                g.served.insert(client.to_string(), c);
                return Permit { sched: Some(self.clone()) };
            }
            let (tx, rx) = oneshot::channel();
            g.next_ticket += 1;
            let ticket = g.next_ticket;
            let priority = self.priority.iter().any(|p| p == client);
            g.waiting.push(Waiter { ticket, client: client.to_string(), priority, grant: tx });
            (rx, ticket)
        };
        // Leave the queue if this future is dropped before the permit comes.
        struct Leave<'a> {
            s: &'a Scheduler,
            ticket: u64,
            armed: bool,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if self.armed {
                    self.s.lock().waiting.retain(|w| w.ticket != self.ticket);
                }
            }
        }
        let mut leave = Leave { s: self, ticket, armed: true };
        match rx.await {
            Ok(p) => {
                leave.armed = false;
                p
            }
            // The scheduler never drops a waiter's sender without granting; be safe anyway.
            Err(_) => {
                leave.armed = false;
                Permit { sched: None }
            }
        }
    }

    /// Requests ahead of the caller's ticket (0 when it is not waiting).
    pub fn position(&self, client: &str) -> usize {
        let g = self.lock();
        let t = g.waiting.iter().filter(|w| w.client == client).map(|w| w.ticket).min();
        t.map_or(0, |t| Self::ahead(&g, t))
    }

    fn release(&self) {
        let mut g = self.lock();
        g.running = g.running.saturating_sub(1);
        while g.running < g.capacity && !g.waiting.is_empty() {
            // The next one: priority first, then the client served longest ago, then the oldest.
            let best = (0..g.waiting.len())
                .min_by_key(|&i| {
                    let w = &g.waiting[i];
                    (!w.priority, g.served.get(&w.client).copied().unwrap_or(0), w.ticket)
                })
                .unwrap_or(0);
            let w = g.waiting.remove(best);
            g.running += 1;
            g.clock += 1;
            let c = g.clock;
            g.served.insert(w.client.clone(), c);
            let permit = Permit { sched: Some(self.clone()) };
            if let Err(mut p) = w.grant.send(permit) {
                // Its client left just now: the permit comes back (without recursing into release).
                p.sched = None;
                g.running -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn order_of(s: &Scheduler, clients: &[&str]) -> Vec<String> {
        let first = s.acquire("holder").await;
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in clients {
            let (s, served, c) = (s.clone(), served.clone(), c.to_string());
            tasks.push(tokio::spawn(async move {
                let _p = s.acquire(&c).await;
                served.lock().unwrap().push(c);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Queue in this order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let v = served.lock().unwrap().clone();
        v
    }

    #[tokio::test]
    async fn one_at_a_time_round_robin_across_clients_with_the_kernel_first() {
        let s = Scheduler::new(1, vec!["kernel".into()]);
        let order = order_of(&s, &["w1", "w1", "w1", "w2", "kernel", "w2"]).await;
        // The kernel goes first; then w1 and w2 alternate although w1 asked three times first.
        assert_eq!(order, ["kernel", "w1", "w2", "w1", "w2", "w1"]);
        assert_eq!(s.state(), QueueState { running: 0, waiting: 0 });
    }

    #[tokio::test]
    async fn a_request_whose_client_left_leaves_the_queue() {
        let s = Scheduler::new(1, vec![]);
        let held = s.acquire("a").await;
        let waiting = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("b").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(s.state().waiting, 1);
        assert_eq!(s.position("b"), 0);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(s.state().waiting, 0, "the abandoned request left the queue");
        drop(held);
        assert_eq!(s.state().running, 0);
        // The queue still works.
        let _p = tokio::time::timeout(Duration::from_secs(1), s.acquire("c")).await.unwrap();
        assert_eq!(s.state().running, 1);
    }

    #[tokio::test]
    async fn capacity_two_runs_two() {
        let s = Scheduler::new(2, vec![]);
        let _a = s.acquire("a").await;
        let _b = tokio::time::timeout(Duration::from_millis(100), s.acquire("b")).await.expect("second slot");
        assert!(tokio::time::timeout(Duration::from_millis(50), s.acquire("c")).await.is_err());
        assert_eq!(s.state(), QueueState { running: 2, waiting: 0 });
    }
}
