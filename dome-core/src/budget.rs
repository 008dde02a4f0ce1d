//! Call budgets: GCRA (the generic cell rate algorithm) over atomics, so a
//! check is a compare-and-swap with no lock and no I/O. The clock is an
//! argument (nanoseconds on any monotonic scale), which is how the tests
//! drive it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A rate with a burst: `calls_per_s` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// The sustained rate: calls per second, above 0 (may be fractional).
    pub calls_per_s: f64,
    /// How many calls may come at once after a quiet spell; at least 1.
    pub burst: u32,
}

impl Rate {
    /// What is wrong with it, if anything: (the field, why). The config
    /// file and the admin API accept the same rates.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if !(self.calls_per_s > 0.0 && self.calls_per_s.is_finite()) {
            out.push(("calls_per_s", "must be above 0"));
        }
        if self.burst == 0 {
            out.push(("burst", "must be at least 1"));
        }
        out
    }

    /// Nanoseconds between two conforming calls at the sustained rate.
    fn interval_ns(&self) -> u64 {
        if self.calls_per_s <= 0.0 {
            u64::MAX / 4
        } else {
            (1e9 / self.calls_per_s).max(1.0) as u64
        }
    }
}

/// One budget's state: the theoretical arrival time of the next call.
#[derive(Debug)]
pub struct Bucket {
    rate: Rate,
    interval: u64,
    /// How far ahead of now the TAT may run: (burst - 1) intervals.
    tolerance: u64,
    tat: AtomicU64,
}

/// A bucket with no room for the call: when it would conform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// Nanoseconds from the refused call's `now` until a call would be
    /// taken (what a `Retry-After` is made from).
    pub retry_after_ns: u64,
}

impl Bucket {
    /// A full bucket: `rate.burst` calls may be taken at once from the start.
    pub fn new(rate: Rate) -> Self {
        let interval = rate.interval_ns();
        Bucket {
            rate,
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1)) - 1),
            tat: AtomicU64::new(0),
        }
    }

    /// The rate it was made with: a reload keeps the bucket (and what has
    /// been taken from it) when the configured rate is still this one.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one call at `now_ns`, or says when it would conform.
    pub fn take(&self, now_ns: u64) -> Result<(), Exhausted> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now_ns);
            if start - now_ns > self.tolerance {
                return Err(Exhausted {
                    retry_after_ns: start - now_ns - self.tolerance,
                });
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back a call taken by [`Bucket::take`] (a later level refused it).
    pub fn give_back(&self) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(self.interval))
            });
    }
}

/// Takes one call from every bucket in `levels` (most specific first), or
/// from none: when one refuses, those already taken are given back.
pub fn take_all(levels: &[&Bucket], now_ns: u64) -> Result<(), (usize, Exhausted)> {
    for (i, b) in levels.iter().enumerate() {
        if let Err(r) = b.take(now_ns) {
            for taken in &levels[..i] {
                taken.give_back();
            }
            return Err((i, r));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_refill_on_the_injected_clock() {
        let b = Bucket::new(Rate {
            calls_per_s: 10.0,
            burst: 3,
        });
        let t0 = 5 * S;
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let r = b.take(t0).unwrap_err();
        assert_eq!(r.retry_after_ns, S / 10);
        // Not yet: 1 ns short.
        assert!(b.take(t0 + S / 10 - 1).is_err());
        assert!(b.take(t0 + S / 10).is_ok());
        // After a long pause the whole burst is back, never more.
        let later = t0 + 10 * S;
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_refusal_at_one_level_charges_no_other() {
        let agent = Bucket::new(Rate {
            calls_per_s: 1.0,
            burst: 5,
        });
        let tool = Bucket::new(Rate {
            calls_per_s: 1.0,
            burst: 1,
        });
        let now = S;
        assert!(take_all(&[&tool, &agent], now).is_ok());
        let (level, _) = take_all(&[&tool, &agent], now).unwrap_err();
        assert_eq!(level, 0);
        // The agent bucket was charged once, so four calls remain in it.
        for _ in 0..4 {
            assert!(agent.take(now).is_ok());
        }
        assert!(agent.take(now).is_err());
    }

    #[test]
    fn exact_under_contention() {
        let b = std::sync::Arc::new(Bucket::new(Rate {
            calls_per_s: 1.0,
            burst: 1000,
        }));
        let ok = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, ok) = (b.clone(), ok.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if b.take(S).is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ok.load(Ordering::Relaxed), 1000);
    }
}

/// Budgets a policy rule sets for the calls it allows (its `budget`
/// obligation): one bucket per agent × tool, made on the first call and
/// kept across reloads while the rule's rate stays the same. Readers take
/// no lock (a snapshot behind `ArcSwap`); only making a new bucket does.
#[derive(Default)]
pub struct RuleBudgets {
    map: arc_swap::ArcSwap<
        std::collections::HashMap<String, std::collections::HashMap<String, Arc<Bucket>>>,
    >,
    making: std::sync::Mutex<()>,
}

impl RuleBudgets {
    /// The bucket for `agent` calling `tool` at `rate`.
    pub fn bucket(&self, agent: &str, tool: &str, rate: Rate) -> Arc<Bucket> {
        if let Some(b) = self.map.load().get(agent).and_then(|m| m.get(tool))
            && b.rate() == rate
        {
            return b.clone();
        }
        let _one_at_a_time = self.making.lock().expect("rule budgets lock");
        let current = self.map.load_full();
        if let Some(b) = current.get(agent).and_then(|m| m.get(tool))
            && b.rate() == rate
        {
            return b.clone();
        }
        let bucket = Arc::new(Bucket::new(rate));
        let mut next = (*current).clone();
        next.entry(agent.to_string())
            .or_default()
            .insert(tool.to_string(), bucket.clone());
        self.map.store(Arc::new(next));
        bucket
    }
}
