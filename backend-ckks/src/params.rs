//! Parameters: what the user asks for ([`CkksParams`]) and the modulus chain built from it
//! ([`Chain`]), checked against the HE-standard 128-bit bound.

use serde::{Deserialize, Serialize};

use peregrine_backend::{security, BResult, BackendError};

use crate::arith::ntt_primes;

/// Parameters of the `ckks` backend (JSON on the command line, e.g.
/// `{"levels": 39, "log_scale": 35}`); every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CkksParams {
    /// log2 of the ring dimension N (slots ≤ N/2).
    pub log_ring_dimension: u32,
    /// Number of levels L (rescales a fresh ciphertext allows): primes q_1 … q_L.
    pub levels: usize,
    /// log2 of the scale Δ and bit size of q_1 … q_L (unless `level_bits` sets them).
    pub log_scale: u32,
    /// Bit sizes of q_1 … q_L, bottom to top, when they differ from `log_scale` (empty: all
    /// `log_scale`). A prime of 2·log_scale bits absorbs two products at scale Δ ("tower
    /// reuse": a square and the next linear layer share one rescale); the planner proposes
    /// such chains. Its length must equal `levels`.
    pub level_bits: Vec<u32>,
    /// Bit size of q_0 (the precision left for the result above Δ).
    pub first_modulus_bits: u32,
    /// Number of key-switching digits (dnum); 0 chooses the fewest that keep 128-bit security.
    pub digits: usize,
    /// Bit size of the special primes P. Primes below 2^50 take tfhe-ntt's AVX-512 IFMA path.
    pub special_prime_bits: u32,
    /// Slots per ciphertext (a power of two ≤ N/2); 0 means N/2.
    pub slots: usize,
    /// Hamming weight of a sparse ternary secret; 0 means a uniform ternary secret.
    pub secret_hamming_weight: usize,
    /// Allow parameters below 128-bit security (tests only; every report says so).
    pub insecure_test_only: bool,
    /// Bootstrapping: its primes sit above the `levels` computation levels (absent: none).
    pub bootstrap: Option<BootstrapParams>,
}

/// How bootstrapping is built (`"bootstrap": {}` takes every default). A ciphertext at level 0
/// is raised to the top of the chain, then CoeffsToSlots (`cts_levels` primes of `cts_bits`),
/// EvalMod (a Chebyshev cosine of degree `cos_degree`, then `double_angles` double-angle steps,
/// on primes of `eval_mod_bits`) and SlotsToCoeffs (`stc_levels` primes of `stc_bits`) bring
/// it back to level `levels` with its value and scale.
///
/// Precision is set by the ratio q_0/Δ between the first prime and the caller's scale: the
/// sine's deviation from the modular reduction costs about 6.6·R³·(Δ/q_0)² (with `arcsine`,
/// about 117·R⁵·(Δ/q_0)⁴) and every error before and in EvalMod is multiplied by q_0/Δ:
/// `first_modulus_bits` ≈ `log_scale` + 8 with `arcsine`, + 12 without.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapParams {
    /// Levels (maps) of CoeffsToSlots.
    pub cts_levels: usize,
    /// Bit size of the CoeffsToSlots primes.
    pub cts_bits: u32,
    /// Bit size of the EvalMod primes; EvalMod runs at a scale of 2^eval_mod_bits.
    pub eval_mod_bits: u32,
    /// Degree of the Chebyshev interpolant of the scaled cosine.
    pub cos_degree: usize,
    /// Double-angle steps after the cosine.
    pub double_angles: usize,
    /// Follow the sine by arcsin's first two terms, s + s³/6 (two more levels): the sine's
    /// deviation from the modular reduction drops from ~(2πx)³/6 to ~3(2πx)⁵/40, so q_0/Δ can
    /// be 2^8 instead of 2^12 and every error EvalMod receives is amplified 16× less.
    pub arcsine: bool,
    /// Bound K on the integer multiple of q_0 ModRaise adds (per coefficient): with a sparse
    /// secret of Hamming weight h it is a sum of h + 1 terms in [−½, ½] (σ ≈ √((h+1)/12)).
    pub k: usize,
    /// Levels (maps) of SlotsToCoeffs.
    pub stc_levels: usize,
    /// Bit size of the SlotsToCoeffs primes.
    pub stc_bits: u32,
    /// Hamming weight of the sparse secret the bootstrap runs under (encapsulation: the
    /// computation keeps the dense secret).
    pub secret_hamming_weight: usize,
    /// Largest |value| a bootstrap accepts.
    pub range: f64,
    /// CoeffsToSlots double-hoisted (baby rotations kept in Q·P without ModDown, diagonals
    /// encoded over Q·P) with about twice the baby steps: 0.5–1 s less per bootstrap at
    /// N = 2^16 (16,384 slots, one thread: 11.3–11.6 s against 12.1–12.5 s measured the same
    /// day), for 5 more rotation keys at the top of the chain and P's limbs in its plaintexts
    /// (+1.0 GiB of keys and +0.2 GiB of plaintexts in the bootstrap example; the degree-4
    /// ResNet-20 peaked at 15.78 GiB with it, 14.34 GiB without). Off by default: memory.
    pub double_hoisting: bool,
}

impl Default for BootstrapParams {
    fn default() -> Self {
        BootstrapParams {
            cts_levels: 4,
            cts_bits: 57,
            eval_mod_bits: 58,
            cos_degree: 23,
            double_angles: 4,
            arcsine: true,
            k: 14,
            stc_levels: 3,
            stc_bits: 50,
            secret_hamming_weight: 32,
            range: 1.0,
            double_hoisting: false,
        }
    }
}

impl BootstrapParams {
    /// Levels EvalMod uses: the cosine's Chebyshev evaluation (depth ⌈log2(d + 1)⌉ plus one
    /// for its coefficients) and the double angles.
    pub fn eval_mod_levels(&self) -> usize {
        self.cosine_levels() + self.double_angles + 2 * usize::from(self.arcsine)
    }

    /// Levels of the cosine's Chebyshev evaluation: ⌈log2(d + 1)⌉ for the powers, one for the
    /// coefficients.
    pub fn cosine_levels(&self) -> usize {
        (usize::BITS - self.cos_degree.leading_zeros()) as usize + 1
    }

    /// The fewest slots, as log2, a bootstrap can work on: one FFT stage per linear-map level.
    pub fn min_log_slots(&self) -> usize {
        self.cts_levels.max(self.stc_levels)
    }

    /// The smallest log2(q_0/Δ) for values in [−1, 1]: the sine's deviation from the
    /// reduction stays below 2^-20 (8 with the arcsine correction, 12 without).
    pub fn min_log_ratio(&self) -> f64 {
        if self.arcsine {
            8.0
        } else {
            12.0
        }
    }

    /// Levels the whole bootstrap uses above the computation levels.
    pub fn total_levels(&self) -> usize {
        self.cts_levels + self.eval_mod_levels() + self.stc_levels
    }
}

impl Default for CkksParams {
    fn default() -> Self {
        CkksParams {
            log_ring_dimension: 16,
            levels: 24,
            log_scale: 40,
            level_bits: Vec::new(),
            first_modulus_bits: 60,
            digits: 0,
            special_prime_bits: 49,
            slots: 0,
            secret_hamming_weight: 0,
            insecure_test_only: false,
            bootstrap: None,
        }
    }
}

impl CkksParams {
    /// Small insecure parameters for tests: N = 2^log_n, `levels` levels of `log_scale` bits.
    pub fn insecure_for_tests(log_n: u32, levels: usize, log_scale: u32) -> Self {
        CkksParams {
            log_ring_dimension: log_n,
            levels,
            log_scale,
            digits: 2,
            insecure_test_only: true,
            ..CkksParams::default()
        }
    }

    /// The number of slots these parameters give.
    pub fn slot_count(&self) -> usize {
        if self.slots == 0 {
            1 << (self.log_ring_dimension - 1)
        } else {
            self.slots
        }
    }

    /// Checks the ranges and builds the modulus chain (and checks its security).
    pub fn chain(&self) -> BResult<Chain> {
        let bad = |m: String| Err(BackendError::InvalidParameters(m));
        if !(4..=17).contains(&self.log_ring_dimension) {
            return bad(format!("log_ring_dimension must be 4..=17, got {}", self.log_ring_dimension));
        }
        if !(20..=60).contains(&self.log_scale) {
            return bad(format!("log_scale must be 20..=60, got {}", self.log_scale));
        }
        if !(self.log_scale..=61).contains(&self.first_modulus_bits) {
            return bad(format!(
                "first_modulus_bits must be between log_scale ({}) and 61, got {}",
                self.log_scale, self.first_modulus_bits
            ));
        }
        if !(30..=61).contains(&self.special_prime_bits) {
            return bad(format!("special_prime_bits must be 30..=61, got {}", self.special_prime_bits));
        }
        if self.levels == 0 || self.levels > 80 {
            return bad(format!("levels must be 1..=80, got {}", self.levels));
        }
        if !self.level_bits.is_empty() {
            if self.level_bits.len() != self.levels {
                return bad(format!(
                    "level_bits lists {} primes but levels is {}: give one bit size per level q_1 … q_L",
                    self.level_bits.len(),
                    self.levels
                ));
            }
            if let Some(b) = self.level_bits.iter().find(|b| !(20..=60).contains(*b)) {
                return bad(format!("level_bits must be 20..=60 each, got {b}"));
            }
            if self.bootstrap.is_some() {
                return bad(
                    "level_bits cannot be combined with bootstrap (bootstrapping returns to a uniform chain)".into()
                );
            }
        }
        if let Some(b) = &self.bootstrap {
            for (what, bits) in [("cts_bits", b.cts_bits), ("eval_mod_bits", b.eval_mod_bits), ("stc_bits", b.stc_bits)]
            {
                if !(30..=60).contains(&bits) {
                    return bad(format!("bootstrap.{what} must be 30..=60, got {bits}"));
                }
            }
            if !(1..=6).contains(&b.cts_levels) || !(1..=6).contains(&b.stc_levels) {
                return bad(format!(
                    "bootstrap.cts_levels and stc_levels must be 1..=6, got {} and {}",
                    b.cts_levels, b.stc_levels
                ));
            }
            if !(3..=255).contains(&b.cos_degree) || b.double_angles > 6 || !(1..=64).contains(&b.k) {
                return bad(format!(
                    "bootstrap: cos_degree must be 3..=255, double_angles ≤ 6 and k 1..=64 (got {}, {}, {})",
                    b.cos_degree, b.double_angles, b.k
                ));
            }
            if !(1..=self.secret_hamming_weight_limit()).contains(&b.secret_hamming_weight) {
                return bad(format!(
                    "bootstrap.secret_hamming_weight must be 1..={}, got {}",
                    self.secret_hamming_weight_limit(),
                    b.secret_hamming_weight
                ));
            }
            if !(b.range.is_finite() && b.range > 0.0) {
                return bad(format!("bootstrap.range must be positive, got {}", b.range));
            }
            // EvalMod's sine stands in for the reduction modulo q_0 only while Δ·R ≪ q_0.
            let need = self.log_scale as f64 + b.min_log_ratio() + b.range.log2().max(0.0);
            if (self.first_modulus_bits as f64) < need.ceil() {
                return bad(format!(
                    "bootstrapping values up to {} at scale 2^{} needs first_modulus_bits ≥ {:.0} (q_0/Δ ≥ 2^{} times the range), got {}",
                    b.range,
                    self.log_scale,
                    need.ceil(),
                    b.min_log_ratio(),
                    self.first_modulus_bits
                ));
            }
        }
        let n = 1usize << self.log_ring_dimension;
        let slots = self.slot_count();
        if !slots.is_power_of_two() || slots > n / 2 {
            return bad(format!("slots must be a power of two ≤ N/2 = {}, got {slots}", n / 2));
        }
        if self.secret_hamming_weight > n {
            return bad(format!("secret_hamming_weight {} exceeds N = {n}", self.secret_hamming_weight));
        }
        let boot_levels = self.bootstrap.as_ref().map_or(0, BootstrapParams::total_levels);
        let primes_q = self.levels + 1 + boot_levels;
        if self.digits > primes_q {
            return bad(format!("digits ({}) cannot exceed the number of primes ({primes_q})", self.digits));
        }
        let two_n = 2 * n as u64;
        let mut q = ntt_primes(self.first_modulus_bits, 1, two_n, &[]);
        if self.level_bits.is_empty() {
            q.extend(ntt_primes(self.log_scale, self.levels, two_n, &q));
        } else {
            for &bits in &self.level_bits {
                let more = ntt_primes(bits, 1, two_n, &q);
                q.extend(more);
            }
        }
        if let Some(b) = &self.bootstrap {
            // Bottom to top: SlotsToCoeffs, EvalMod, CoeffsToSlots (a bootstrap runs downwards).
            for (bits, count) in
                [(b.stc_bits, b.stc_levels), (b.eval_mod_bits, b.eval_mod_levels()), (b.cts_bits, b.cts_levels)]
            {
                let more = ntt_primes(bits, count, two_n, &q);
                q.extend(more);
            }
        }
        let log_q: f64 = q.iter().map(|&x| (x as f64).log2()).sum();
        let bound = security::max_log_qp_128(n);
        let layout = |digits: usize| {
            let groups = digit_groups(primes_q, digits);
            let widest: f64 =
                groups.iter().map(|g| g.iter().map(|&i| (q[i] as f64).log2()).sum::<f64>()).fold(0.0, f64::max);
            let k = (widest / self.special_prime_bits as f64).ceil() as usize;
            let fits = bound.is_some_and(|b| log_q + k as f64 * self.special_prime_bits as f64 <= b);
            (digits, groups, k, fits)
        };
        let chosen = if self.digits > 0 {
            Some(layout(self.digits))
        } else {
            // Three digits or more: fewer make every key switch slower (base conversions and
            // NTTs over many special primes) for little saving in key size.
            (3.min(primes_q)..=primes_q)
                .map(layout)
                .find(|l| l.3)
                .or_else(|| self.insecure_test_only.then(|| layout(3.min(primes_q))))
        };
        let Some((digits, groups, k, _)) = chosen else {
            return bad(format!(
                "insecure parameters: log2 Q = {log_q:.0} bits leaves no room for key-switching primes under the \
                 128-bit bound of {} bits for N = 2^{} (HE standard, uniform ternary secret); use fewer levels, \
                 a smaller log_scale or a larger ring — or set insecure_test_only for tests",
                bound.unwrap_or(0.0),
                self.log_ring_dimension
            ));
        };
        let mut all = q.clone();
        let p = ntt_primes(self.special_prime_bits, k, two_n, &all);
        all.extend(&p);
        let log_qp = log_q + p.iter().map(|&x| (x as f64).log2()).sum::<f64>();
        let security_bits = if self.secret_hamming_weight == 0 { security::check_128(n, log_qp).ok() } else { None };
        if security_bits.is_none() && !self.insecure_test_only {
            let why = if self.secret_hamming_weight != 0 {
                "a sparse secret is outside the HE-standard tables".to_string()
            } else {
                format!(
                    "log2(Q·P) = {log_qp:.1} exceeds {} for N = 2^{}",
                    bound.unwrap_or(0.0),
                    self.log_ring_dimension
                )
            };
            return bad(format!("insecure parameters: {why}; set insecure_test_only only for tests"));
        }
        Ok(Chain { q, p, digits, groups, log_qp, security_bits, slots, levels: self.levels })
    }

    /// The largest sparse-secret weight a bootstrap may use (a quarter of N).
    fn secret_hamming_weight_limit(&self) -> usize {
        (1usize << self.log_ring_dimension) / 4
    }
}

/// The modulus chain and key-switching layout built from [`CkksParams`].
#[derive(Clone, Debug)]
pub struct Chain {
    /// Ciphertext primes q_0 … q_L.
    pub q: Vec<u64>,
    /// Special primes p_0 … p_{k−1}.
    pub p: Vec<u64>,
    /// Number of key-switching digits.
    pub digits: usize,
    /// The q-prime indices of each digit.
    pub groups: Vec<Vec<usize>>,
    /// log2(Q·P).
    pub log_qp: f64,
    /// 128 when the HE-standard bound holds; `None` for insecure test parameters.
    pub security_bits: Option<u32>,
    /// Slots per ciphertext.
    pub slots: usize,
    /// Computation levels L (a fresh ciphertext's level; bootstrapping's primes lie above).
    pub levels: usize,
}

/// `count` primes split into `digits` contiguous groups of nearly equal size.
pub fn digit_groups(count: usize, digits: usize) -> Vec<Vec<usize>> {
    let alpha = count.div_ceil(digits);
    (0..count).collect::<Vec<_>>().chunks(alpha).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parameters_are_128_bit_secure_and_say_so() {
        let c = CkksParams::default().chain().unwrap();
        assert_eq!(c.security_bits, Some(128));
        assert!(c.log_qp <= 1747.0);
        assert_eq!(c.q.len(), 25);
    }

    #[test]
    fn resnet_depth_fits_2_16_at_scale_35() {
        let p = CkksParams { levels: 39, log_scale: 35, ..CkksParams::default() };
        let c = p.chain().unwrap();
        assert_eq!(c.security_bits, Some(128), "{c:?}");
    }

    #[test]
    fn insecure_parameters_are_refused_unless_asked_for() {
        let p = CkksParams { log_ring_dimension: 12, levels: 6, ..CkksParams::default() };
        let e = p.chain().unwrap_err().to_string();
        assert!(e.contains("insecure"), "{e}");
        let p = CkksParams { insecure_test_only: true, ..p };
        assert_eq!(p.chain().unwrap().security_bits, None);
        let p = CkksParams { levels: 60, log_scale: 40, ..CkksParams::default() };
        assert!(p.chain().unwrap_err().to_string().contains("insecure"));
        let p = CkksParams { secret_hamming_weight: 64, ..CkksParams::default() };
        assert!(p.chain().unwrap_err().to_string().contains("sparse"));
    }
}
