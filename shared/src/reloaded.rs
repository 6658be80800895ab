//! A copy of what PostgreSQL holds (tenant limits, namespaces) that a
//! process reloads in full every round while its own changes apply at
//! once. Reloads and local changes are ordered by tickets: a reload that
//! began before a later reload or a local change finished is dropped, so a
//! slow reload can never put an older state back.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The copy, with the ticket of what it last applied.
#[derive(Debug)]
pub struct Reloaded<T> {
    state: RwLock<Stamped<T>>,
    tickets: AtomicU64,
}

#[derive(Debug)]
struct Stamped<T> {
    /// The ticket of what was applied last.
    at: u64,
    value: T,
}

/// Taken before a reload reads its source (see [`Reloaded::replace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

impl<T> Reloaded<T> {
    pub fn new(value: T) -> Self {
        Self {
            state: RwLock::new(Stamped { at: 0, value }),
            tickets: AtomicU64::new(0),
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// `f` of the value now.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()).value)
    }

    /// Applies a full reload read after `ticket` was taken, unless a newer
    /// reload or a local change applied meanwhile.
    pub fn replace(&self, ticket: Ticket, value: T) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if ticket.0 > state.at {
            *state = Stamped {
                at: ticket.0,
                value,
            };
        }
    }

    /// A local change (made in PostgreSQL already), applied at once; the
    /// reloads begun before it are dropped.
    pub fn update(&self, change: impl FnOnce(&mut T)) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.at = self.ticket().0;
        change(&mut state.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_begun_before_a_newer_reload_or_a_local_change_is_dropped() {
        let book = Reloaded::new(0);
        let slow = book.ticket();
        let fast = book.ticket();
        book.replace(fast, 2);
        book.replace(slow, 1);
        assert_eq!(book.with(|v| *v), 2);

        let before_change = book.ticket();
        book.update(|v| *v = 3);
        book.replace(before_change, 2);
        assert_eq!(book.with(|v| *v), 3);

        let after_change = book.ticket();
        book.replace(after_change, 4);
        assert_eq!(book.with(|v| *v), 4);
    }
}
