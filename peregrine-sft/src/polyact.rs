//! PolyAct-RN: a polynomial activation after a per-channel range normalisation.
//!
//! Forward, for channel c with range scale s_c = r_c + ε:
//!   y = s_c · p(x / s_c),
//! where p is the degree-d truncated Hermite expansion of the original activation and r_c is
//! learnt as a running max: r_c ← (1 − m)·r_c + m · max|x| / B over each training batch, so
//! normalised inputs fall in [−B, B]. For ReLU, s·ReLU(x/s) = ReLU(x): the replacement is
//! exact up to the polynomial approximation whatever the scale.
//!
//! Gradients (t = x / s): ∂y/∂x = p'(t), ∂y/∂s = p(t) − t·p'(t).

/// Default bound B of normalised inputs.
pub const DEFAULT_BOUND: f64 = 3.0;
/// Momentum of the running max.
pub const MOMENTUM: f64 = 0.1;
/// ε added to the range scale.
pub const EPS: f64 = 1e-3;

/// A PolyAct-RN layer for `channels` channels.
#[derive(Clone, Debug, PartialEq)]
pub struct PolyActRn {
    /// Polynomial p, ascending powers (shared by all channels, fixed during training).
    pub coeffs: Vec<f64>,
    /// Running range r_c per channel (`None` until the first batch).
    pub range: Vec<Option<f64>>,
    /// Bound B.
    pub bound: f64,
}

fn eval(p: &[f64], t: f64) -> f64 {
    p.iter().rev().fold(0.0, |acc, c| acc * t + c)
}

fn deriv(p: &[f64], t: f64) -> f64 {
    p.iter().enumerate().skip(1).rev().fold(0.0, |acc, (k, c)| acc * t + k as f64 * c)
}

impl PolyActRn {
    /// A layer with polynomial `coeffs` and no statistics yet.
    pub fn new(coeffs: Vec<f64>, channels: usize, bound: f64) -> Self {
        PolyActRn { coeffs, range: vec![None; channels], bound }
    }

    /// The range scale s_c = r_c + ε (1 + ε before any statistics).
    pub fn scale(&self, c: usize) -> f64 {
        self.range[c].unwrap_or(1.0) + EPS
    }

    /// Updates the running max of channel `c` with a batch whose largest |x| is `batch_max`.
    pub fn observe(&mut self, c: usize, batch_max: f64) {
        let target = batch_max / self.bound;
        self.range[c] = Some(match self.range[c] {
            None => target,
            Some(r) => (1.0 - MOMENTUM) * r + MOMENTUM * target,
        });
    }

    /// y for input `x` on channel `c`.
    pub fn forward(&self, c: usize, x: f64) -> f64 {
        let s = self.scale(c);
        s * eval(&self.coeffs, x / s)
    }

    /// ∂y/∂x.
    pub fn grad_input(&self, c: usize, x: f64) -> f64 {
        deriv(&self.coeffs, x / self.scale(c))
    }

    /// ∂y/∂s (gradient with respect to the range scale).
    pub fn grad_scale(&self, c: usize, x: f64) -> f64 {
        let t = x / self.scale(c);
        eval(&self.coeffs, t) - t * deriv(&self.coeffs, t)
    }

    /// The per-channel IR form: coefficients `s_c·a_k` (row c) applied to `x / s_c`, i.e.
    /// `(coeffs [C × (d+1)], input_scale [C])` for an `Activation::Poly` node.
    pub fn export(&self) -> (Vec<f64>, Vec<f64>) {
        let mut coeffs = Vec::with_capacity(self.range.len() * self.coeffs.len());
        let mut input_scale = Vec::with_capacity(self.range.len());
        for c in 0..self.range.len() {
            let s = self.scale(c);
            coeffs.extend(self.coeffs.iter().map(|a| s * a));
            input_scale.push(1.0 / s);
        }
        (coeffs, input_scale)
    }
}
