//! Learning-rate schedules as values.

use crate::error::{Result, invalid};

/// A learning rate as a function of the step `t` (counted from 1).
///
/// ```
/// use laggard::Schedule;
///
/// // The step size from the SSP convergence theorem for F = 2, L = 1,
/// // staleness s = 3 and P = 4 workers: sigma = F / (L * sqrt(2 (s+1) P)).
/// let eta = Schedule::ssp_theorem(2.0, 1.0, 3, 4)?;
/// assert!((eta.at(1) - 2.0 / 32f64.sqrt()).abs() < 1e-12);
/// assert!((eta.at(4) - eta.at(1) / 2.0).abs() < 1e-12);
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The same rate at every step.
    Constant(f64),
    /// `sigma / sqrt(t)`.
    InverseSqrt {
        /// The rate at step 1.
        sigma: f64,
    },
}

impl Schedule {
    /// `eta_t = sigma / sqrt(t)` with `sigma = F / (L * sqrt(2 (s + 1) P))`:
    /// the schedule under which SSP with staleness `s` and `P` workers has
    /// regret `R[X] <= 4 F L sqrt(2 (s + 1) P / T)` for a convex objective
    /// whose component functions are `L`-Lipschitz over a domain of
    /// diameter `F` (Ho et al., "More Effective Distributed ML via a Stale
    /// Synchronous Parallel Parameter Server", NIPS 2013, Theorem 1).
    ///
    /// Returns an error unless `F` and `L` are positive and finite and
    /// `P >= 1`.
    pub fn ssp_theorem(
        diameter: f64,
        lipschitz: f64,
        staleness: u64,
        workers: u64,
    ) -> Result<Self> {
        if !(diameter.is_finite() && diameter > 0.0) {
            return Err(invalid(
                "SSP schedule diameter F",
                format!("{diameter} must be positive and finite"),
            ));
        }
        if !(lipschitz.is_finite() && lipschitz > 0.0) {
            return Err(invalid(
                "SSP schedule Lipschitz constant L",
                format!("{lipschitz} must be positive and finite"),
            ));
        }
        if workers == 0 {
            return Err(invalid(
                "SSP schedule worker count P",
                "at least one worker is needed",
            ));
        }
        let sigma =
            diameter / (lipschitz * (2.0 * (staleness as f64 + 1.0) * workers as f64).sqrt());
        Ok(Schedule::InverseSqrt { sigma })
    }

    /// The rate at step `t` (steps count from 1; `t = 0` is treated as 1).
    pub fn at(&self, t: u64) -> f64 {
        match *self {
            Schedule::Constant(eta) => eta,
            Schedule::InverseSqrt { sigma } => sigma / (t.max(1) as f64).sqrt(),
        }
    }

    /// True if the rate changes with `t` (so a rule must count steps).
    pub fn varies(&self) -> bool {
        !matches!(self, Schedule::Constant(_))
    }

    pub(crate) fn validate(&self, what: &'static str) -> Result<()> {
        let v = match *self {
            Schedule::Constant(eta) => eta,
            Schedule::InverseSqrt { sigma } => sigma,
        };
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(invalid(
                what,
                format!("learning rate {v} must be positive and finite"),
            ))
        }
    }
}

impl From<f64> for Schedule {
    fn from(eta: f64) -> Self {
        Schedule::Constant(eta)
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn ssp_theorem_rejects_bad_constants() {
        assert!(Schedule::ssp_theorem(0.0, 1.0, 0, 1).is_err());
        assert!(Schedule::ssp_theorem(1.0, f64::NAN, 0, 1).is_err());
        assert!(Schedule::ssp_theorem(1.0, 1.0, 0, 0).is_err());
    }

    #[test]
    fn ssp_theorem_sigma_shrinks_with_staleness_and_workers() {
        let a = Schedule::ssp_theorem(1.0, 1.0, 0, 1).unwrap().at(1);
        let b = Schedule::ssp_theorem(1.0, 1.0, 3, 1).unwrap().at(1);
        let c = Schedule::ssp_theorem(1.0, 1.0, 3, 4).unwrap().at(1);
        assert!((a - 1.0 / 2f64.sqrt()).abs() < 1e-12);
        assert!((b - a / 2.0).abs() < 1e-12);
        assert!((c - b / 2.0).abs() < 1e-12);
    }
}
