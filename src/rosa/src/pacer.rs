//! Pacing of bursts of service and action responses (r2r-free).
//!
//! With Fast DDS (rmw_fastrtps), a service's responses all go out on one writer and reach the
//! response reader of *every* client of the service; each client takes them all and keeps its own
//! (`rmw_take_response` discards the others). A client's reader holds its QoS depth (10 by
//! default), so a burst of more responses than that, sent faster than a client takes them, pushes
//! a client's own answer out before it is read: the call never returns. Measured here: 60
//! concurrent `/rosa/chat` callers got 33 answers when the kernel refused 39 of them at once; 30
//! simultaneous goals got 11-16 answers. A token bucket lets a short burst through at once and
//! spaces the rest, so callers keep up.

use std::time::{Duration, Instant};

pub struct Pacer {
    burst: f64,
    interval: Duration,
    /// Available responses; negative = slots already reserved in the future.
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `burst` responses at once, then one every `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self { burst: f64::from(burst.max(1)), interval, tokens: f64::from(burst.max(1)), last: Instant::now() }
    }

    /// The pacing rosa uses for responses: 4 at once, then one every 5 ms (200 a second: what an
    /// rclpy client in a busy process was measured to keep up with; 2 ms still lost 2 of 26).
    pub fn for_responses() -> Self {
        Self::new(4, Duration::from_millis(5))
    }

    /// Reserve the next response's slot at `now`: how long to wait before sending it.
    pub fn reserve_at(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        if !self.interval.is_zero() {
            self.tokens = (self.tokens + elapsed.as_secs_f64() / self.interval.as_secs_f64()).min(self.burst);
        } else {
            self.tokens = self.burst;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.interval.mul_f64(-self.tokens)
        }
    }

    pub fn reserve(&mut self) -> Duration {
        self.reserve_at(Instant::now())
    }
}

/// Wait for a slot of the shared pacer.
pub async fn paced(pacer: &std::sync::Mutex<Pacer>) {
    let wait = pacer.lock().unwrap_or_else(|p| p.into_inner()).reserve();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_through_then_the_rest_is_spaced() {
        let mut p = Pacer::new(3, Duration::from_millis(2));
        let t = Instant::now();
        let waits: Vec<u128> = (0..6).map(|_| p.reserve_at(t).as_micros()).collect();
        assert_eq!(waits, vec![0, 0, 0, 2000, 4000, 6000]);
        // Once the reserved slots have passed and the bucket refilled, a burst goes through again.
        let later = t + Duration::from_millis(6 + 3 * 2);
        assert_eq!(p.reserve_at(later), Duration::ZERO);
        assert_eq!(p.reserve_at(later), Duration::ZERO);
        assert_eq!(p.reserve_at(later), Duration::ZERO);
        assert_eq!(p.reserve_at(later), Duration::from_millis(2));
    }

    #[test]
    fn isolated_responses_are_never_delayed() {
        let mut p = Pacer::for_responses();
        let mut t = Instant::now();
        for _ in 0..100 {
            assert_eq!(p.reserve_at(t), Duration::ZERO);
            t += Duration::from_millis(5);
        }
    }
}
