//! A sliding-window replay filter over 64-bit message counters (in the manner of RFC 6479).

/// Number of counters below the highest seen that are still accepted (once each).
pub const REPLAY_WINDOW: u64 = 1024;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Remembers which counters in the window have been accepted.
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    /// One past the highest accepted counter (0 = nothing accepted yet).
    next: u64,
    /// Bit `c % REPLAY_WINDOW` is set when counter `c` (within the window) was accepted.
    bits: [u64; WORDS],
}

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayVerdict {
    /// Already accepted once.
    Duplicate,
    /// Older than the window.
    TooOld,
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        Self {
            next: 0,
            bits: [0; WORDS],
        }
    }

    /// Checks a counter without recording it (call before authenticating the message).
    pub(crate) fn check(&self, counter: u64) -> Result<(), ReplayVerdict> {
        if counter >= self.next {
            return Ok(());
        }
        if self.next - counter > REPLAY_WINDOW {
            return Err(ReplayVerdict::TooOld);
        }
        if self.bit(counter) {
            Err(ReplayVerdict::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records a counter (call only after the message authenticated).
    pub(crate) fn accept(&mut self, counter: u64) {
        if counter >= self.next {
            // Clear the bits of counters skipped over as the window slides forward.
            let advance = counter - self.next + 1;
            if advance >= REPLAY_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for c in self.next..=counter {
                    self.clear(c);
                }
            }
            self.next = counter + 1;
        }
        let (word, mask) = Self::position(counter);
        self.bits[word] |= mask;
    }

    fn position(counter: u64) -> (usize, u64) {
        let slot = counter % REPLAY_WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    fn bit(&self, counter: u64) -> bool {
        let (word, mask) = Self::position(counter);
        self.bits[word] & mask != 0
    }

    fn clear(&mut self, counter: u64) {
        let (word, mask) = Self::position(counter);
        self.bits[word] &= !mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(w: &mut ReplayWindow, c: u64) -> Result<(), ReplayVerdict> {
        w.check(c)?;
        w.accept(c);
        Ok(())
    }

    #[test]
    fn in_order_reordered_duplicate_and_old() {
        let mut w = ReplayWindow::new();
        assert!(offer(&mut w, 0).is_ok());
        assert!(offer(&mut w, 1).is_ok());
        assert_eq!(offer(&mut w, 1), Err(ReplayVerdict::Duplicate));
        assert!(offer(&mut w, 5).is_ok());
        assert!(offer(&mut w, 3).is_ok(), "reordered within window");
        assert_eq!(offer(&mut w, 3), Err(ReplayVerdict::Duplicate));
        assert!(offer(&mut w, 5000).is_ok());
        assert_eq!(
            offer(&mut w, 5000 - REPLAY_WINDOW),
            Err(ReplayVerdict::TooOld)
        );
        assert!(offer(&mut w, 5000 - REPLAY_WINDOW + 1).is_ok());
        assert!(offer(&mut w, 4999).is_ok());
    }

    proptest! {
        // Against a reference model: a set of everything accepted plus the window rule.
        #[test]
        fn matches_reference_model(counters in proptest::collection::vec(0u64..4096, 0..600)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let expected = match highest {
                    Some(h) if c <= h && h - c >= REPLAY_WINDOW => Err(ReplayVerdict::TooOld),
                    _ if seen.contains(&c) => Err(ReplayVerdict::Duplicate),
                    _ => Ok(()),
                };
                prop_assert_eq!(offer(&mut w, c), expected, "counter {}", c);
                if expected.is_ok() {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
