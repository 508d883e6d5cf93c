//! The connection state shared between threads, without any I/O: credit
//! accounting (how many bytes may be sent ahead of the peer's reading) and
//! the event queue an endpoint's readers fill. These are the transport's
//! wait/notify protocols; `tests/loom.rs` model-checks them.
//!
//! Locks: each `Flow` and each `Inbox` has its own mutex, and no code holds
//! two at once.

use std::collections::VecDeque;
use std::time::Instant;

use laggard::sync::{AtomicUsize, Backoff, Condvar, Mutex, MutexGuard, Ordering, lock, wait_until};

/// Why a wait on a [`Flow`] ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stalled {
    /// The deadline passed; `outstanding` bytes were still unread by the
    /// peer.
    TimedOut { outstanding: usize },
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
    /// Senders waiting for credit, or for every frame to be released.
    changed: Condvar,
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
            changed: Condvar::new(),
        }
    }

    /// The peer's window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Waits until `ready`; a closed flow fails the wait unless
    /// `even_closed` and it is ready. Before it first sleeps it calls
    /// `ask` once, with no lock held, to ask the peer for its credit.
    fn wait(
        &self,
        deadline: Instant,
        even_closed: bool,
        ask: impl FnOnce(),
        ready: impl Fn(&FlowState) -> bool,
    ) -> Result<MutexGuard<'_, FlowState>, Stalled> {
        let mut ask = Some(ask);
        let mut state = lock(&self.state);
        loop {
            if even_closed && ready(&state) {
                return Ok(state);
            }
            if let Some(reason) = &state.closed {
                return Err(Stalled::Closed(reason.clone()));
            }
            if ready(&state) {
                return Ok(state);
            }
            if let Some(ask) = ask.take() {
                // Credit that comes back meanwhile is seen on the re-check.
                drop(state);
                ask();
                state = lock(&self.state);
                continue;
            }
            let (guard, waiting) = wait_until(&self.changed, state, deadline);
            state = guard;
            if !waiting && state.closed.is_none() && !ready(&state) {
                return Err(Stalled::TimedOut {
                    outstanding: state.outstanding,
                });
            }
        }
    }

    /// Reserves `len` bytes of the peer's window, waiting for credit until
    /// `deadline`; `ask` (asking the peer for its credit) is called once if
    /// it has to wait.
    pub fn reserve(
        &self,
        len: usize,
        deadline: Instant,
        ask: impl FnOnce(),
    ) -> Result<(), Stalled> {
        let window = self.window;
        let mut state = self.wait(deadline, false, ask, |s| {
            s.outstanding == 0 || s.outstanding.saturating_add(len) <= window
        })?;
        state.outstanding += len;
        Ok(())
    }

    /// Gives back a reservation that was never sent.
    pub fn unreserve(&self, len: usize) {
        let mut state = lock(&self.state);
        state.outstanding = state.outstanding.saturating_sub(len);
        drop(state);
        self.changed.notify_all();
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
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits until the peer released everything sent to it (which stays
    /// true if the connection closed after the last credit came back);
    /// `ask` is called once if it has to wait.
    pub fn drained(&self, deadline: Instant, ask: impl FnOnce()) -> Result<(), Stalled> {
        self.wait(deadline, true, ask, |s| s.outstanding == 0)
            .map(drop)
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

    /// Closes the flow: every waiter and every later wait fails with
    /// `reason`. The first reason sticks. `here` says this side closed it.
    pub fn close(&self, reason: &str, here: bool) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason.to_owned());
            state.closed_here = here;
        }
        drop(state);
        self.changed.notify_all();
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

/// What [`Inbox::pop`] found.
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

/// A queue that many threads push to and one thread pops from, waiting
/// with a deadline: spin briefly, then sleep until a push or `close`.
#[derive(Debug)]
pub struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    /// Items queued; only a hint for the spin before sleeping.
    queued: AtomicUsize,
    pushed: Condvar,
    /// How long `pop` spins and yields before it sleeps.
    spin: std::time::Duration,
}

impl<T> Inbox<T> {
    /// An inbox whose reader spins only a few rounds before sleeping.
    pub fn new() -> Self {
        Self::with_spin(std::time::Duration::ZERO)
    }

    /// An inbox whose reader spins and yields for up to `spin` before
    /// sleeping: lower latency for a waiting reader, at the cost of CPU.
    pub fn with_spin(spin: std::time::Duration) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                items: VecDeque::new(),
                closed: false,
            }),
            queued: AtomicUsize::new(0),
            pushed: Condvar::new(),
            spin,
        }
    }

    /// Queues `item`; gives it back if the inbox is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        // Relaxed: a hint for `pop`'s spin, which takes the lock before
        // touching the queue; the mutex orders the item itself.
        self.queued.store(state.items.len(), Ordering::Relaxed);
        drop(state);
        self.pushed.notify_one();
        Ok(())
    }

    /// Takes the oldest item, waiting until `deadline`.
    pub fn pop(&self, deadline: Instant) -> Pop<T> {
        // Spin (then yield) briefly first: an answer on its way over
        // loopback or a LAN is usually here within tens of microseconds,
        // sooner than a sleeping thread is woken.
        let mut backoff = Backoff::new();
        let spin_until = Instant::now() + self.spin;
        // Relaxed: a hint only (see `push`).
        while self.queued.load(Ordering::Relaxed) == 0
            && !(backoff.is_completed() && Instant::now() >= spin_until.min(deadline))
        {
            backoff.snooze();
        }
        let mut state = lock(&self.state);
        loop {
            if let Some(item) = state.items.pop_front() {
                // Relaxed: a hint only (see `push`).
                self.queued.store(state.items.len(), Ordering::Relaxed);
                return Pop::Item(item);
            }
            if state.closed {
                return Pop::Closed;
            }
            let (guard, waiting) = wait_until(&self.pushed, state, deadline);
            state = guard;
            if !waiting && state.items.is_empty() {
                return if state.closed {
                    Pop::Closed
                } else {
                    Pop::Empty
                };
            }
        }
    }

    /// Takes every queued item into `out`, waiting until `deadline` for at
    /// least one. False once the inbox is closed.
    pub fn drain(&self, deadline: Instant, out: &mut Vec<T>) -> bool {
        match self.pop(deadline) {
            Pop::Item(item) => out.push(item),
            Pop::Empty => return true,
            Pop::Closed => return false,
        }
        let mut state = lock(&self.state);
        out.extend(state.items.drain(..));
        // Relaxed: a hint only (see `push`).
        self.queued.store(0, Ordering::Relaxed);
        true
    }

    /// Closes the inbox: the waiter wakes, later pushes are refused, and
    /// what was queued is returned (to be dropped outside the lock).
    pub fn close(&self) -> Vec<T> {
        let mut state = lock(&self.state);
        state.closed = true;
        let rest = state.items.drain(..).collect();
        // Relaxed: a hint only (see `push`).
        self.queued.store(0, Ordering::Relaxed);
        drop(state);
        self.pushed.notify_all();
        rest
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
    fn a_waiting_sender_asks_once_and_one_that_need_not_wait_never() {
        let flow = Flow::with_granted(10, 1 << 20);
        let mut asks = 0;
        flow.reserve(8, Instant::now(), || asks += 1).unwrap();
        assert_eq!(asks, 0, "room in the window: no ask");
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        let stalled = flow.reserve(8, soon, || asks += 1);
        assert_eq!(stalled, Err(Stalled::TimedOut { outstanding: 8 }));
        assert_eq!(asks, 1);
        let stalled = flow.drained(Instant::now(), || asks += 1);
        assert_eq!(stalled, Err(Stalled::TimedOut { outstanding: 8 }));
        assert_eq!(asks, 2);
    }
}
