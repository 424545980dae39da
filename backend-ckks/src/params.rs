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
    /// log2 of the scale Δ and bit size of q_1 … q_L.
    pub log_scale: u32,
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
}

impl Default for CkksParams {
    fn default() -> Self {
        CkksParams {
            log_ring_dimension: 16,
            levels: 24,
            log_scale: 40,
            first_modulus_bits: 60,
            digits: 0,
            special_prime_bits: 49,
            slots: 0,
            secret_hamming_weight: 0,
            insecure_test_only: false,
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
        let n = 1usize << self.log_ring_dimension;
        let slots = self.slot_count();
        if !slots.is_power_of_two() || slots > n / 2 {
            return bad(format!("slots must be a power of two ≤ N/2 = {}, got {slots}", n / 2));
        }
        if self.secret_hamming_weight > n {
            return bad(format!("secret_hamming_weight {} exceeds N = {n}", self.secret_hamming_weight));
        }
        let primes_q = self.levels + 1;
        if self.digits > primes_q {
            return bad(format!("digits ({}) cannot exceed the number of primes ({primes_q})", self.digits));
        }
        let two_n = 2 * n as u64;
        let mut q = ntt_primes(self.first_modulus_bits, 1, two_n, &[]);
        q.extend(ntt_primes(self.log_scale, self.levels, two_n, &q));
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
        Ok(Chain { q, p, digits, groups, log_qp, security_bits, slots })
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
