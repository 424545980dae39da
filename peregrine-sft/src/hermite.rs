//! Truncated Hermite expansions of activations.
//!
//! With Z ~ N(0, 1) and the probabilists' Hermite polynomials He_k (He_0 = 1, He_1 = x,
//! He_{k+1} = x·He_k − k·He_{k−1}), which are orthogonal with E[He_j(Z)·He_k(Z)] = k!·δ_jk,
//! an activation f expands as f = Σ_k c_k He_k with c_k = E[f(Z)·He_k(Z)] / k!. Truncating at
//! degree d gives the polynomial closest to f in L²(N(0, 1)); PolyAct-RN scales inputs so that
//! they fall in [−B, B] (B = 3: three standard deviations), where that weight is meaningful.
//!
//! For ReLU the coefficients have a closed form: c_0 = φ(0), c_1 = 1/2 and, for k ≥ 2,
//! c_k = φ(0)·He_{k−2}(0) / k! (zero for odd k), with φ(0) = 1/√(2π) and
//! He_{2m}(0) = (−1)^m (2m − 1)!!. The tests check the numerical integration against it.

/// Coefficients of He_0 … He_degree in the monomial basis: `table[k][j]` = coefficient of x^j in He_k.
pub fn hermite_table(degree: usize) -> Vec<Vec<f64>> {
    let mut t: Vec<Vec<f64>> = vec![vec![1.0]];
    if degree >= 1 {
        t.push(vec![0.0, 1.0]);
    }
    for k in 1..degree {
        let mut next = vec![0.0; k + 2];
        for (j, c) in t[k].iter().enumerate() {
            next[j + 1] += c;
        }
        for (j, c) in t[k - 1].iter().enumerate() {
            next[j] -= k as f64 * c;
        }
        t.push(next);
    }
    t
}

/// E[f(Z)·g(Z)] for Z ~ N(0, 1), by composite Simpson integration on [−12, 12].
pub fn gaussian_expectation(f: impl Fn(f64) -> f64) -> f64 {
    let (a, b, n) = (-12.0f64, 12.0f64, 24_000usize);
    let h = (b - a) / n as f64;
    let w = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut s = f(a) * w(a) + f(b) * w(b);
    for i in 1..n {
        let x = a + i as f64 * h;
        s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(x) * w(x);
    }
    s * h / 3.0
}

/// Hermite coefficients c_0 … c_degree of `f` (numerical integration).
pub fn hermite_coefficients(f: impl Fn(f64) -> f64, degree: usize) -> Vec<f64> {
    let table = hermite_table(degree);
    let mut fact = 1.0;
    (0..=degree)
        .map(|k| {
            if k > 0 {
                fact *= k as f64;
            }
            let he = &table[k];
            gaussian_expectation(|x| f(x) * he.iter().rev().fold(0.0, |acc, c| acc * x + c)) / fact
        })
        .collect()
}

/// The truncated expansion Σ_{k ≤ degree} c_k He_k in monomial form (ascending powers).
pub fn hermite_polynomial(f: impl Fn(f64) -> f64, degree: usize) -> Vec<f64> {
    let c = hermite_coefficients(f, degree);
    let table = hermite_table(degree);
    let mut out = vec![0.0; degree + 1];
    for (k, ck) in c.iter().enumerate() {
        for (j, t) in table[k].iter().enumerate() {
            out[j] += ck * t;
        }
    }
    out
}

/// Closed-form Hermite coefficients of ReLU (see the module documentation).
pub fn relu_hermite_coefficients(degree: usize) -> Vec<f64> {
    let phi0 = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    let table = hermite_table(degree.max(2));
    let mut fact = 1.0;
    (0..=degree)
        .map(|k| {
            if k > 0 {
                fact *= k as f64;
            }
            match k {
                0 => phi0,
                1 => 0.5,
                _ => phi0 * table[k - 2][0] / fact,
            }
        })
        .collect()
}

/// The activation functions SFT replaces.
pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}
/// SiLU, x·sigmoid(x).
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}
/// GELU, x·Φ(x).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Whether `f(s·x) = s·f(x)` for every s > 0 (ReLU, leaky ReLU): PolyAct-RN's `s·p(x/s)` then
/// equals the activation whatever the range scale s, and one polynomial serves every channel.
pub fn positively_homogeneous(a: &peregrine_model::ir::Activation) -> bool {
    use peregrine_model::ir::Activation;
    matches!(a, Activation::Relu | Activation::LeakyRelu { .. })
}

/// Hermite expansions of `t ↦ f(s·t)/s` over range scales s, for activations that are not
/// positively homogeneous (SiLU, HardSwish, sigmoid, ReLU6, …): with those, `s·p(x/s)` is the
/// activation only if the polynomial depends on s. Tabulated on a geometric grid of s
/// (2^(1/8) apart, 2^-10 … 2^15) and interpolated linearly in log s.
#[derive(Clone, Debug)]
pub struct ScaledHermite {
    degree: usize,
    /// One polynomial (ascending powers) per grid scale.
    rows: Vec<Vec<f64>>,
}

impl ScaledHermite {
    const LOG2_MIN: f64 = -10.0;
    const STEPS_PER_OCTAVE: f64 = 8.0;
    const ROWS: usize = 201;

    /// The table of `f` at `degree`.
    pub fn new(f: impl Fn(f64) -> f64 + Sync, degree: usize) -> Self {
        use rayon::prelude::*;
        let rows = (0..Self::ROWS)
            .into_par_iter()
            .map(|k| {
                let s = (Self::LOG2_MIN + k as f64 / Self::STEPS_PER_OCTAVE).exp2();
                hermite_polynomial(|t| f(s * t) / s, degree)
            })
            .collect();
        ScaledHermite { degree, rows }
    }

    /// The table of an exact activation that is not positively homogeneous (`None` for ReLU,
    /// leaky ReLU and polynomials, which need none).
    pub fn of(a: &peregrine_model::ir::Activation, degree: usize) -> Option<Self> {
        if positively_homogeneous(a) {
            return None;
        }
        a.eval(0.0)?;
        let exact = a.clone();
        Some(Self::new(move |x| exact.eval(x).expect("an exact activation"), degree))
    }

    /// One shared table per distinct activation and degree, built on first use.
    pub fn cached(
        cache: &mut std::collections::HashMap<String, std::sync::Arc<Self>>,
        a: &peregrine_model::ir::Activation,
        degree: usize,
    ) -> Option<std::sync::Arc<Self>> {
        let key = format!("{a:?}/{degree}");
        if let Some(t) = cache.get(&key) {
            return Some(t.clone());
        }
        let t = std::sync::Arc::new(Self::of(a, degree)?);
        cache.insert(key, t.clone());
        Some(t)
    }

    /// Polynomial degree.
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// The polynomial p_s (ascending powers) with `s·p_s(x/s)` ≈ f(x) for |x/s| in the
    /// normal range (scales beyond the grid take its end).
    pub fn polynomial(&self, s: f64) -> Vec<f64> {
        let pos = ((s.max(f64::MIN_POSITIVE).log2() - Self::LOG2_MIN) * Self::STEPS_PER_OCTAVE)
            .clamp(0.0, (Self::ROWS - 1) as f64);
        let k = (pos.floor() as usize).min(Self::ROWS - 2);
        let w = pos - k as f64;
        self.rows[k].iter().zip(&self.rows[k + 1]).map(|(a, b)| a * (1.0 - w) + b * w).collect()
    }
}
