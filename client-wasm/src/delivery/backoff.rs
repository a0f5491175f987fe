use core::time::Duration;

/// Exponential backoff with "equal jitter": attempt `n` waits between half and all of
/// `min(max, initial * 2^n)`. The jitter spreads out clients that failed together (a
/// server restart) so they do not come back in one burst; the fixed half keeps a lower
/// bound, so a failing server is never hammered.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

/// A server's `Retry-After` is honoured up to this, so that a broken header cannot park
/// a client for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Backoff {
    /// Waits from `initial` up to `max`, doubling with each failure.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The wait before the next attempt; at least `retry_after` when the server sent one.
    pub fn next(&mut self, retry_after: Option<Duration>, jitter: &mut Jitter) -> Duration {
        let ceiling = self
            .initial
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .map_or(self.max, |delay| delay.min(self.max));
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let delay = half + half.mul_f64(jitter.next_unit());
        delay.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
    }

    /// After a success: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A small PRNG (splitmix64) for jitter, which needs spread, not secrecy. The caller
/// seeds it (the Rust client from a v7 UUID's random bits, JS from `Math.random`), so no
/// randomness dependency reaches the browser build.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// A sequence that starts from `seed`: clients must be seeded differently to spread.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits fill an f64 mantissa exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn delays_double_within_their_jitter_band_up_to_the_cap() {
        for seed in 0..200 {
            let mut jitter = Jitter::new(seed);
            let mut backoff = Backoff::new(INITIAL, MAX);
            for attempt in 0..12u32 {
                let ceiling = (INITIAL * 2u32.pow(attempt)).min(MAX);
                let delay = backoff.next(None, &mut jitter);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "attempt {attempt}: {delay:?} not in [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_clients_that_failed_together() {
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|seed| Backoff::new(INITIAL, MAX).next(None, &mut Jitter::new(seed)))
            .collect();
        assert!(
            delays.len() > 40,
            "only {} distinct first delays",
            delays.len()
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_reset_starts_over() {
        let mut jitter = Jitter::new(7);
        let mut backoff = Backoff::new(INITIAL, MAX);
        assert_eq!(
            backoff.next(Some(Duration::from_secs(7)), &mut jitter),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff.next(Some(Duration::from_secs(86_400)), &mut jitter),
            MAX_RETRY_AFTER
        );
        for _ in 0..40 {
            backoff.next(None, &mut jitter);
        }
        assert!(
            backoff.next(None, &mut jitter) >= MAX / 2,
            "no overflow past many attempts"
        );
        backoff.reset();
        assert!(backoff.next(None, &mut jitter) <= INITIAL);
    }
}
