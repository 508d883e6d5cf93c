//! Server-side update rules: how a pushed delta changes a row.
//!
//! A table applies every push with its [`Update`] rule while it holds the
//! row's write lock, so a rule sees the row and the rule's per-row state
//! exclusively and never needs synchronization of its own. Per-row state
//! (momentum, Adagrad accumulators, Adam moments) is allocated beside the
//! row, so it is sharded with it.
//!
//! Users write their own rule by implementing [`Update`]:
//!
//! ```
//! use laggard::{Element, Result, RowMut, Table, TableSpec, Update};
//!
//! /// Keeps the element-wise maximum of everything pushed.
//! #[derive(Debug)]
//! struct Max;
//!
//! impl<T: Element> Update<T> for Max {
//!     fn apply(&self, row: &mut RowMut<'_, T>, _state: &mut RowMut<'_, T>, delta: &[T]) {
//!         row.zip_update(delta, |x, d| if d > x { d } else { x });
//!     }
//! }
//!
//! let table = Table::new(TableSpec::<i64>::dense(0..4, 2).update(Max))?;
//! table.push(1, &[5, -3])?;
//! table.push(1, &[2, 7])?;
//! let mut row = [0; 2];
//! table.pull(1, &mut row)?;
//! assert_eq!(row, [5, 7]);
//! # Ok::<(), laggard::Error>(())
//! ```

use std::fmt::Debug;

use crate::element::{Element, Float};
use crate::error::{Result, invalid};
use crate::schedule::Schedule;

/// A mutable view of a row's cells, lent to an [`Update`] rule while the
/// table holds the row's write lock.
///
/// Reads and writes go through `get`/`set` (or the bulk helpers) rather than
/// a `&mut [T]`, because a narrow row's cells are atomics that concurrent
/// optimistic readers may be reading; the write lock makes the rule the
/// only writer. Wide rows (a few hundred elements and more) are plain
/// memory, and the bulk helpers ([`update`](RowMut::update),
/// [`zip_update`](RowMut::zip_update), [`fill`](RowMut::fill),
/// [`copy_to`](RowMut::copy_to)) run over them as vectorisable loops, so a
/// rule written with them is as fast as a hand-written loop over a slice.
#[derive(Debug)]
pub struct RowMut<'a, T: Element> {
    view: View<'a, T>,
}

/// Where a [`RowMut`]'s elements live.
#[derive(Debug)]
enum View<'a, T: Element> {
    /// A narrow row's atomic cells.
    Cells(&'a [T::Cell]),
    /// A wide row's plain elements, held exclusively.
    Plain(&'a mut [T]),
}

impl<'a, T: Element> RowMut<'a, T> {
    /// A view of a narrow row's cells. Only the table creates views, and
    /// only while it holds the row's write lock.
    pub(crate) fn new(cells: &'a [T::Cell]) -> Self {
        RowMut {
            view: View::Cells(cells),
        }
    }

    /// A view of a wide row's elements, which the table holds exclusively.
    pub(crate) fn plain(elements: &'a mut [T]) -> Self {
        RowMut {
            view: View::Plain(elements),
        }
    }

    /// Number of elements in the view.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.view {
            View::Cells(cells) => cells.len(),
            View::Plain(elements) => elements.len(),
        }
    }

    /// True if the view has no elements (a rule without per-row state gets
    /// an empty state view).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element at `i`. Panics if `i >= len()`, like slice indexing.
    #[inline]
    pub fn get(&self, i: usize) -> T {
        match &self.view {
            View::Cells(cells) => T::load(&cells[i]),
            View::Plain(elements) => elements[i],
        }
    }

    /// Sets the element at `i`. Panics if `i >= len()`, like slice indexing.
    #[inline]
    pub fn set(&mut self, i: usize, v: T) {
        match &mut self.view {
            View::Cells(cells) => T::store(&cells[i], v),
            View::Plain(elements) => elements[i] = v,
        }
    }

    /// Replaces each element `x` with `f(x)`.
    #[inline]
    pub fn update(&mut self, mut f: impl FnMut(T) -> T) {
        match &mut self.view {
            View::Cells(cells) => cells.iter().for_each(|c| T::store(c, f(T::load(c)))),
            View::Plain(elements) => elements.iter_mut().for_each(|x| *x = f(*x)),
        }
    }

    /// Replaces each element `x` with `f(x, d)` for the matching `d` of
    /// `other`. Panics if the lengths differ.
    #[inline]
    pub fn zip_update(&mut self, other: &[T], mut f: impl FnMut(T, T) -> T) {
        assert_eq!(self.len(), other.len(), "zip_update needs equal lengths");
        match &mut self.view {
            View::Cells(cells) => {
                for (c, &d) in cells.iter().zip(other) {
                    T::store(c, f(T::load(c), d));
                }
            }
            View::Plain(elements) => {
                for (x, &d) in elements.iter_mut().zip(other) {
                    *x = f(*x, d);
                }
            }
        }
    }

    /// Sets every element to `v`.
    pub fn fill(&mut self, v: T) {
        match &mut self.view {
            View::Cells(cells) => cells.iter().for_each(|c| T::store(c, v)),
            View::Plain(elements) => elements.fill(v),
        }
    }

    /// Copies the elements into `out`. Panics if the lengths differ.
    pub fn copy_to(&self, out: &mut [T]) {
        assert_eq!(self.len(), out.len(), "copy_to needs equal lengths");
        match &self.view {
            View::Cells(cells) => {
                for (o, c) in out.iter_mut().zip(*cells) {
                    *o = T::load(c);
                }
            }
            View::Plain(elements) => out.copy_from_slice(elements),
        }
    }

    /// Splits the view in two at `mid` (for rules with several state
    /// vectors, such as Adam's two moments). Panics if `mid > len()`.
    pub fn split_at(&mut self, mid: usize) -> (RowMut<'_, T>, RowMut<'_, T>) {
        match &mut self.view {
            View::Cells(cells) => {
                let (a, b) = cells.split_at(mid);
                (RowMut::new(a), RowMut::new(b))
            }
            View::Plain(elements) => {
                let (a, b) = elements.split_at_mut(mid);
                (RowMut::plain(a), RowMut::plain(b))
            }
        }
    }
}

/// A server-side update rule: given a row, the rule's per-row state, and a
/// pushed delta, produce the new row (and state).
///
/// The table calls [`apply`](Update::apply) once per pushed row, holding the
/// row's write lock, with `row.len() == delta.len() == width` and
/// `state.len() == self.state_len(width)`. New rows and their state start at
/// the table's initial values and zeros respectively.
///
/// If `apply` panics, the push fails with that panic and the row may be left
/// partly updated; the row's lock is released, so other threads go on. A
/// server shard whose rule panics stops, telling its workers why (see
/// [`Server::run`](crate::Server::run)), and the panic goes on.
pub trait Update<T: Element>: Send + Sync + Debug + 'static {
    /// How many state elements this rule keeps per row of `width` elements.
    fn state_len(&self, width: usize) -> usize {
        let _ = width;
        0
    }

    /// Checks the rule's parameters; called once when a table is built.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Applies `delta` to `row`, reading and updating `state`.
    fn apply(&self, row: &mut RowMut<'_, T>, state: &mut RowMut<'_, T>, delta: &[T]);

    /// `Some(k)` if applying a delta is `x += k * d`, element by element,
    /// with no state and nothing counted (so deltas summed first give the
    /// same result); for an integer table only `k = 1` counts. A worker
    /// then replays its own pushes onto its cached copies of rows, as the
    /// server will apply them, so that its reads include them
    /// (read-my-writes, as in Petuum's SSP). `None`, the default, for any
    /// other rule: a row answered from the cache may then lack the
    /// worker's own pushes of its last `s` clocks.
    fn replay_scale(&self) -> Option<f64> {
        None
    }

    /// Whether a worker may sum two deltas pushed to one row within a
    /// clock into one before this rule applies it: `true`, the default,
    /// for rules on gradients, which then see the clock's summed gradient.
    /// [`Assign`] says `false`: the worker keeps only the later delta, as
    /// applying the two one after the other would leave the row.
    fn sums_deltas(&self) -> bool {
        true
    }
}

/// Adds the delta: `x += d`. The default rule; exact for integer tables.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sum;

impl<T: Element> Update<T> for Sum {
    #[inline]
    fn apply(&self, row: &mut RowMut<'_, T>, _state: &mut RowMut<'_, T>, delta: &[T]) {
        row.zip_update(delta, |x, d| x + d);
    }

    fn replay_scale(&self) -> Option<f64> {
        Some(1.0)
    }
}

/// Overwrites the row with the delta: `x = d`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Assign;

impl<T: Element> Update<T> for Assign {
    #[inline]
    fn apply(&self, row: &mut RowMut<'_, T>, _state: &mut RowMut<'_, T>, delta: &[T]) {
        row.zip_update(delta, |_, d| d);
    }

    fn sums_deltas(&self) -> bool {
        false
    }
}

/// Stochastic gradient descent on pushed gradients: `x -= eta_t * g`, or
/// with momentum `mu`: `v = mu v + g; x -= eta_t * v`.
///
/// With a varying [`Schedule`], `t` counts the pushes applied to the row
/// (stored as one state element; an `f32` table counts exactly up to 2^24).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    lr: Schedule,
    momentum: f64,
}

impl Sgd {
    /// Plain SGD with a constant learning rate.
    pub fn new(lr: f64) -> Self {
        Sgd::with_schedule(Schedule::Constant(lr))
    }

    /// SGD whose rate follows `schedule`, indexed by the row's push count.
    pub fn with_schedule(schedule: Schedule) -> Self {
        Sgd {
            lr: schedule,
            momentum: 0.0,
        }
    }

    /// Adds heavy-ball momentum `mu` (in `[0, 1)`).
    pub fn momentum(mut self, mu: f64) -> Self {
        self.momentum = mu;
        self
    }
}

impl<T: Float> Update<T> for Sgd {
    fn state_len(&self, width: usize) -> usize {
        (if self.momentum != 0.0 { width } else { 0 }) + usize::from(self.lr.varies())
    }

    fn validate(&self) -> Result<()> {
        self.lr.validate("Sgd learning rate")?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid(
                "Sgd momentum",
                format!("{} must be in [0, 1)", self.momentum),
            ));
        }
        Ok(())
    }

    #[inline]
    fn apply(&self, row: &mut RowMut<'_, T>, state: &mut RowMut<'_, T>, delta: &[T]) {
        let lr = if self.lr.varies() {
            let last = state.len() - 1;
            let t = state.get(last) + T::from_f64(1.0);
            state.set(last, t);
            T::from_f64(self.lr.at(t.to_f64() as u64))
        } else {
            T::from_f64(self.lr.at(1))
        };
        if self.momentum == 0.0 {
            row.zip_update(delta, |x, g| x - lr * g);
        } else {
            let mu = T::from_f64(self.momentum);
            let (mut velocity, _) = state.split_at(row.len());
            for (i, &g) in delta.iter().enumerate() {
                let v = mu * velocity.get(i) + g;
                velocity.set(i, v);
                row.set(i, row.get(i) - lr * v);
            }
        }
    }

    /// `-lr` for a constant rate without momentum; a schedule indexed by
    /// the row's push count, or momentum, needs the server's state.
    fn replay_scale(&self) -> Option<f64> {
        (!self.lr.varies() && self.momentum == 0.0).then(|| -self.lr.at(1))
    }
}

/// Adagrad: `a += g^2; x -= lr * g / (sqrt(a) + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adagrad {
    lr: f64,
    eps: f64,
}

impl Adagrad {
    /// Adagrad with learning rate `lr` and `eps = 1e-8`.
    pub fn new(lr: f64) -> Self {
        Adagrad { lr, eps: 1e-8 }
    }

    /// Sets the term added to the denominator for stability.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
}

impl<T: Float> Update<T> for Adagrad {
    fn state_len(&self, width: usize) -> usize {
        width
    }

    fn validate(&self) -> Result<()> {
        Schedule::Constant(self.lr).validate("Adagrad learning rate")?;
        positive("Adagrad eps", self.eps)
    }

    #[inline]
    fn apply(&self, row: &mut RowMut<'_, T>, state: &mut RowMut<'_, T>, delta: &[T]) {
        let (lr, eps) = (T::from_f64(self.lr), T::from_f64(self.eps));
        for (i, &g) in delta.iter().enumerate() {
            let a = state.get(i) + g * g;
            state.set(i, a);
            row.set(i, row.get(i) - lr * g / (a.sqrt() + eps));
        }
    }
}

/// Adam (Kingma & Ba), with bias correction:
/// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// x -= lr * m_hat / (sqrt(v_hat) + eps)`, with the step `t` counted per row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Adam with learning rate `lr` and the usual `beta1 = 0.9`,
    /// `beta2 = 0.999`, `eps = 1e-8`.
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Sets the moment decay rates (each in `[0, 1)`).
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Sets the term added to the denominator for stability.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
}

impl<T: Float> Update<T> for Adam {
    fn state_len(&self, width: usize) -> usize {
        2 * width + 1
    }

    fn validate(&self) -> Result<()> {
        Schedule::Constant(self.lr).validate("Adam learning rate")?;
        for (what, b) in [("Adam beta1", self.beta1), ("Adam beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid(what, format!("{b} must be in [0, 1)")));
            }
        }
        positive("Adam eps", self.eps)
    }

    #[inline]
    fn apply(&self, row: &mut RowMut<'_, T>, state: &mut RowMut<'_, T>, delta: &[T]) {
        let width = row.len();
        let (mut moments, mut step) = state.split_at(2 * width);
        let t = step.get(0) + T::from_f64(1.0);
        step.set(0, t);
        let t = t.to_f64() as i32;
        let (b1, b2) = (T::from_f64(self.beta1), T::from_f64(self.beta2));
        let one = T::from_f64(1.0);
        let c1 = one - b1.powi(t);
        let c2 = one - b2.powi(t);
        let (lr, eps) = (T::from_f64(self.lr), T::from_f64(self.eps));
        let (mut m, mut v) = moments.split_at(width);
        for (i, &g) in delta.iter().enumerate() {
            let mi = b1 * m.get(i) + (one - b1) * g;
            let vi = b2 * v.get(i) + (one - b2) * g * g;
            m.set(i, mi);
            v.set(i, vi);
            row.set(i, row.get(i) - lr * (mi / c1) / ((vi / c2).sqrt() + eps));
        }
    }
}

fn positive(what: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(what, format!("{v} must be positive and finite")))
    }
}
