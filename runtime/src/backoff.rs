//! Bounded exponential backoff for transient I/O.
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
    attempts: u64,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        let initial_ms = initial_ms.max(1);
        Backoff { initial_ms, max_ms: max_ms.max(initial_ms), next_ms: initial_ms, attempts: 0 }
    }

    /// The delay before the next attempt: doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        self.attempts += 1;
        Duration::from_millis(d)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 700);
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 700, 700]);
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
