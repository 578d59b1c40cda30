//! [`Budget`]: a node-wide allowance of something many connections hold a
//! share of (bytes of half-received frames, subscriptions), taken before the
//! thing is made and given back when it goes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Up to `max` units, shared. Relaxed throughout: a limit, it orders no
/// other memory; `fetch_update` makes each take all-or-nothing.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` units, none held.
    pub fn new(max: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `units` if that stays within the budget; true if taken.
    pub fn try_take(&self, units: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(units).filter(|&after| after <= self.max)
            })
            .is_ok()
    }

    /// Gives back `units` taken before.
    pub fn give_back(&self, units: usize) {
        let before = self.held.fetch_sub(units, Ordering::Relaxed);
        debug_assert!(before >= units, "gave back more than was taken");
    }

    /// Units held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_whole_amounts_within_the_budget_only() {
        let budget = Budget::new(10);
        assert!(budget.try_take(6));
        assert!(!budget.try_take(5), "6 + 5 is over 10: nothing taken");
        assert_eq!(budget.held(), 6);
        assert!(budget.try_take(4));
        budget.give_back(6);
        assert_eq!(budget.held(), 4);
        assert!(!budget.try_take(usize::MAX), "no overflow");
    }
}
