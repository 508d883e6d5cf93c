//! The connection state shared between threads, without any I/O: credit
//! accounting (how many bytes may be sent ahead of the peer's reading),
//! the queues an endpoint's reading fills, and the loop every waiting call
//! runs ([`wait_reading`]). `tests/loom.rs` model-checks them: credit
//! against racing threads, the inbox's wait/notify protocol (the keeper
//! sleeps on one), and the waiting loop against a modelled poll.
//!
//! Locks: each `Flow` and each `Inbox` has its own mutex, and no code holds
//! two at once; `wait_reading`'s `ready` and `pump` run under the reading
//! lock and may take either.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use laggard::sync::{Condvar, Mutex, lock, thread, wait_until};

/// Why a wait on a [`Flow`] ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stalled {
    /// The deadline passed; `outstanding` bytes were still unread by the
    /// peer.
    TimedOut {
        /// Bytes sent that the peer had not released.
        outstanding: usize,
    },
    /// The connection closed, for this reason.
    Closed(String),
}

#[derive(Debug)]
struct FlowState {
    /// Bytes lent or sent to the peer that it has not released yet.
    outstanding: usize,
    /// Bytes of the peer's frames released here, not yet reported to it.
    to_return: u64,
    /// Bytes received from the peer whose credit was not returned yet:
    /// never more than the window granted to it, if it plays by the rules.
    held: u64,
    /// The peer asked for its credit (it waits for it): return it as soon
    /// as frames are released, until everything received is returned.
    asked: bool,
    /// Why the connection closed, once it has.
    closed: Option<String>,
    /// Whether this side closed it (then nothing more is delivered).
    closed_here: bool,
}

/// Credit-based flow control for one connection.
///
/// The peer grants a window: the bytes it buffers for us before it reads
/// them. Lending a buffer reserves its length; the peer returns credit as
/// it releases frames. A frame longer than the window is admitted when
/// nothing else is outstanding, so memory stays bounded by the larger of
/// the two.
#[derive(Debug)]
pub struct Flow {
    window: usize,
    /// The window this side granted the peer.
    granted: u64,
    state: Mutex<FlowState>,
}

impl Flow {
    /// A flow whose peer grants `window` bytes and was granted `granted`.
    pub fn with_granted(window: usize, granted: u64) -> Self {
        Flow {
            window,
            granted,
            state: Mutex::new(FlowState {
                outstanding: 0,
                to_return: 0,
                held: 0,
                asked: false,
                closed: None,
                closed_here: false,
            }),
        }
    }

    /// The peer's window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Reserves `len` bytes of the peer's window if there is room; false
    /// if the caller has to wait for credit. A frame longer than the
    /// window fits once nothing else is outstanding. A closed flow is an
    /// error.
    pub fn try_reserve(&self, len: usize) -> Result<bool, Stalled> {
        let mut state = lock(&self.state);
        if let Some(reason) = &state.closed {
            return Err(Stalled::Closed(reason.clone()));
        }
        if state.outstanding == 0 || state.outstanding.saturating_add(len) <= self.window {
            state.outstanding += len;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the peer released everything sent to it. That stays true if
    /// the connection closed after the last credit came back; otherwise a
    /// closed flow is an error.
    pub fn is_drained(&self) -> Result<bool, Stalled> {
        let state = lock(&self.state);
        if state.outstanding == 0 {
            return Ok(true);
        }
        match &state.closed {
            Some(reason) => Err(Stalled::Closed(reason.clone())),
            None => Ok(false),
        }
    }

    /// Bytes sent or lent to the peer that it has not released yet.
    pub fn outstanding(&self) -> usize {
        lock(&self.state).outstanding
    }

    /// Gives back a reservation that was never sent.
    pub fn unreserve(&self, len: usize) {
        let mut state = lock(&self.state);
        state.outstanding = state.outstanding.saturating_sub(len);
    }

    /// The peer released `bytes`. More than is outstanding is a protocol
    /// violation, reported as an error.
    pub fn credited(&self, bytes: u32) -> Result<(), String> {
        if bytes == 0 {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let bytes = bytes as usize;
        if bytes > state.outstanding {
            return Err(format!(
                "the peer returned {bytes} bytes of credit with only {} outstanding",
                state.outstanding
            ));
        }
        state.outstanding -= bytes;
        Ok(())
    }

    /// A frame of `bytes` from the peer was released here. Returns true if
    /// the credit should be sent now, not left to ride on the next frame
    /// going back: the peer asked for it, or half of the window granted to
    /// it is unreturned. True once per batch: not again until the credit
    /// was taken.
    pub fn released(&self, bytes: usize) -> bool {
        let mut state = lock(&self.state);
        let before = state.to_return;
        state.to_return += bytes as u64;
        let half = self.granted / 2;
        let due = state.asked || state.to_return >= half;
        let was_due = before > 0 && (state.asked || before >= half);
        due && !was_due && state.closed.is_none()
    }

    /// The peer asked for its credit. Returns true if there is credit to
    /// send now; otherwise it goes out as frames are released.
    pub fn asked(&self) -> bool {
        let mut state = lock(&self.state);
        if state.held > 0 {
            state.asked = true;
        }
        state.to_return > 0 && state.closed.is_none()
    }

    /// Takes up to `u32::MAX` bytes of credit to report to the peer.
    pub fn take_credit(&self) -> u32 {
        let mut state = lock(&self.state);
        let take = state.to_return.min(u64::from(u32::MAX));
        state.to_return -= take;
        state.held = state.held.saturating_sub(take);
        if state.held == 0 {
            // Everything received is returned: the peer waits no more.
            state.asked = false;
        }
        take as u32
    }

    /// Puts back credit that could not be sent.
    pub fn restore_credit(&self, bytes: u32) {
        let mut state = lock(&self.state);
        state.to_return += u64::from(bytes);
        state.held += u64::from(bytes);
    }

    /// A frame of `bytes` arrived from the peer. A peer that sends beyond
    /// the window granted to it (ignoring its credit) is an error.
    pub fn arrived(&self, bytes: usize) -> Result<(), String> {
        let mut state = lock(&self.state);
        let bytes = bytes as u64;
        if state.held > 0 && state.held.saturating_add(bytes) > self.granted {
            return Err(format!(
                "the peer sent {bytes} bytes with {} already unreturned, beyond the \
                 {}-byte window granted to it",
                state.held, self.granted
            ));
        }
        state.held += bytes;
        Ok(())
    }

    /// Closes the flow: every later reservation fails with `reason`. The first reason sticks. `here` says this side closed it.
    pub fn close(&self, reason: &str, here: bool) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason.to_owned());
            state.closed_here = here;
        }
    }

    /// Why the connection closed, if it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }

    /// True once this side closed the connection.
    pub fn closed_here(&self) -> bool {
        lock(&self.state).closed_here
    }
}

/// What [`Inbox::try_pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// The oldest item.
    Item(T),
    /// Nothing came before the deadline.
    Empty,
    /// The inbox is closed and empty.
    Closed,
}

#[derive(Debug)]
struct InboxState<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A queue that many threads push to and one thread takes from, either
/// without waiting (`try_pop`, for an endpoint's reading) or waiting with a
/// deadline (`drain`, for the keeper).
#[derive(Debug)]
pub struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    pushed: Condvar,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Inbox<T> {
    /// An empty, open inbox.
    pub fn new() -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                items: VecDeque::new(),
                closed: false,
            }),
            pushed: Condvar::new(),
        }
    }

    /// Queues `item`; gives it back if the inbox is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.pushed.notify_one();
        Ok(())
    }

    /// Takes the oldest item without waiting.
    pub fn try_pop(&self) -> Pop<T> {
        let mut state = lock(&self.state);
        match state.items.pop_front() {
            Some(item) => Pop::Item(item),
            None if state.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// Takes every queued item into `out`, waiting until `deadline` for at
    /// least one. False once the inbox is closed.
    pub fn drain(&self, deadline: Instant, out: &mut Vec<T>) -> bool {
        let mut state = lock(&self.state);
        loop {
            if !state.items.is_empty() {
                out.extend(state.items.drain(..));
                return true;
            }
            if state.closed {
                return false;
            }
            let (guard, waiting) = wait_until(&self.pushed, state, deadline);
            state = guard;
            if !waiting {
                return !state.closed;
            }
        }
    }

    /// Closes the inbox: the waiter wakes, later pushes are refused, and
    /// what was queued is returned (to be dropped outside the lock).
    pub fn close(&self) -> Vec<T> {
        let mut state = lock(&self.state);
        state.closed = true;
        let rest = state.items.drain(..).collect();
        drop(state);
        self.pushed.notify_all();
        rest
    }
}

/// Waits until `ready` gives a value or `deadline` passes, the way every
/// waiting call of an endpoint waits: whoever holds the `reading` lock
/// reads every connection, so the waiter takes it, checks `ready`, and if
/// nothing is there yet calls `pump`, which polls the connections (and a
/// waker) for up to the time it is given, reads what arrived and returns.
/// The lock is let go between rounds, so another thread (the keeper) can
/// read too. For the first `spin`, `pump` is given no time (it only
/// reads what is there) and the thread yields between rounds; after that
/// it is given up to `longest` per round, or what is left until the
/// deadline.
///
/// No wake-up is lost if everything that can make `ready` true either
/// happens in a `pump` (a frame read, by this thread or by one that holds
/// the lock meanwhile) or is followed, on the thread that does it, by
/// something that makes a sleeping `pump` return (a connection that joins
/// rings the waker after it is queued). `tests/loom.rs` checks both.
pub fn wait_reading<G, R>(
    reading: &Mutex<G>,
    deadline: Instant,
    spin: Duration,
    longest: Duration,
    mut ready: impl FnMut() -> Option<R>,
    mut pump: impl FnMut(&mut G, Duration),
) -> Option<R> {
    let spin_until = Instant::now() + spin;
    loop {
        let mut guard = lock(reading);
        if let Some(r) = ready() {
            return Some(r);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let spinning = now < spin_until;
        let timeout = if spinning {
            Duration::ZERO
        } else {
            (deadline - now).min(longest)
        };
        pump(&mut guard, timeout);
        drop(guard);
        if spinning {
            thread::yield_now();
        }
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    /// The receiver's side of a connection whose peer was granted 100
    /// bytes and has sent `arrived` of them.
    fn receiver(arrived: usize) -> Flow {
        let flow = Flow::with_granted(1 << 20, 100);
        flow.arrived(arrived).unwrap();
        flow
    }

    #[test]
    fn credit_is_due_once_half_the_granted_window_is_unreturned() {
        let flow = receiver(80);
        assert!(!flow.released(30), "30 of 100: left to ride on a frame");
        assert!(flow.released(20), "50 of 100: due now");
        assert!(!flow.released(10), "already due: the keeper was told");
        assert_eq!(flow.take_credit(), 60);
        assert!(!flow.released(20), "a fresh batch starts below half");
    }

    #[test]
    fn an_ask_makes_released_credit_due_until_everything_is_returned() {
        let flow = receiver(30);
        assert!(!flow.released(10));
        assert!(flow.asked(), "10 bytes were already released");
        assert_eq!(flow.take_credit(), 10);
        assert!(flow.released(10), "asked, and 10 bytes still held");
        assert_eq!(flow.take_credit(), 10);
        assert!(flow.released(10), "the last 10 bytes too");
        assert_eq!(flow.take_credit(), 10);
        // Everything received was returned: the ask is answered.
        flow.arrived(10).unwrap();
        assert!(!flow.released(10));
    }

    #[test]
    fn an_ask_with_nothing_released_waits_for_the_release() {
        let flow = receiver(10);
        assert!(!flow.asked());
        assert!(flow.released(10));
        assert_eq!(flow.take_credit(), 10);
    }

    #[test]
    fn reservations_stop_at_the_window_but_admit_one_long_frame() {
        let flow = Flow::with_granted(10, 1 << 20);
        assert_eq!(flow.try_reserve(8), Ok(true));
        assert_eq!(flow.try_reserve(8), Ok(false), "16 > 10: wait for credit");
        assert_eq!(flow.is_drained(), Ok(false));
        flow.credited(8).unwrap();
        assert_eq!(flow.is_drained(), Ok(true));
        assert_eq!(flow.try_reserve(100), Ok(true), "alone, a long frame fits");
        assert_eq!(flow.outstanding(), 100);
        flow.close("gone", false);
        assert_eq!(flow.try_reserve(1), Err(Stalled::Closed("gone".into())));
        assert_eq!(flow.is_drained(), Err(Stalled::Closed("gone".into())));
        flow.credited(100).unwrap();
        assert_eq!(
            flow.is_drained(),
            Ok(true),
            "the last credit came before the close"
        );
    }
}
