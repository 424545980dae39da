//! Parameters of the OpenFHE backend and the 128-bit security check.

use serde::{Deserialize, Serialize};

use peregrine_backend::BackendError;

pub use peregrine_backend::security::{max_log_qp_128, MAX_LOG_QP_128};

/// Secret-key distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretDist {
    /// Uniform ternary secret (the HE standard's assumption).
    UniformTernary,
    /// Uniform ternary secret, with a sparse secret encapsulated inside bootstrapping.
    SparseEncapsulated,
}

/// Parameters of the OpenFHE CKKS backend (JSON on the command line and across the plugin ABI).
///
/// The defaults are production parameters: N = 2^16, uniform ternary secret, HYBRID key
/// switching, bootstrapping, 128-bit security checked against [`MAX_LOG_QP_128`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenFheParams {
    /// log2 of the ring dimension N (slots = N/2).
    pub log_ring_dimension: u32,
    /// Levels available to the network: from a fresh ciphertext when not bootstrapping, and
    /// after each bootstrap otherwise.
    pub levels: usize,
    /// log2 of the scale Δ (bit size of q_1 … q_L).
    pub log_scale: u32,
    /// Bit size of q_0.
    pub first_modulus_bits: u32,
    /// Enable bootstrapping (adds its depth to the modulus chain).
    pub bootstrap: bool,
    /// Bootstrapping level budget [coefficients-to-slots, slots-to-coefficients].
    pub level_budget: [u32; 2],
    /// HYBRID key-switching digits (0: OpenFHE's default).
    pub large_digits: u32,
    /// Secret-key distribution: `uniform_ternary`, or `sparse_encapsulated` (the key is uniform
    /// ternary; bootstrapping switches to a sparse key only around its modulus raise, which
    /// makes the sine approximation far narrower: less depth, more precision).
    pub secret: SecretDist,
    /// Largest |value| the bootstrap is asked to refresh. Above 1 the input is first scaled by
    /// 1/⌈range⌉, which reserves one more modulus and multiplies the bootstrap error by ⌈range⌉.
    pub bootstrap_range: f64,
    /// Allow parameters below 128-bit security. For tests only; never for real data.
    pub insecure_test_only: bool,
}

impl Default for OpenFheParams {
    fn default() -> Self {
        // N = 2^16, Δ = 2^59, q_0 = 2^60, sparse-encapsulated bootstrapping with level budget
        // [3, 3] (depth 16), 6 key-switching digits: log2(Q) = 1239 and Q·P
        // within the 1747 bits allowed at 128-bit, leaving 4 levels between bootstraps. Budget
        // [2, 2] leaves 5 but its keys did not fit in 24 GiB here. With a uniform-ternary
        // secret the bootstrap keeps ~10 bits (its sine approximation must cover 512
        // overflows), with the encapsulated sparse secret ~19 (measured at N = 2^12).
        OpenFheParams {
            log_ring_dimension: 16,
            levels: 5,
            log_scale: 59,
            first_modulus_bits: 60,
            bootstrap: true,
            level_budget: [3, 3],
            large_digits: 6,
            secret: SecretDist::SparseEncapsulated,
            bootstrap_range: 1.0,
            insecure_test_only: false,
        }
    }
}

impl OpenFheParams {
    /// Small, fast, INSECURE parameters for unit tests: N = 2^`log_n`, no bootstrapping.
    pub fn insecure_for_tests(log_n: u32, levels: usize) -> Self {
        OpenFheParams {
            log_ring_dimension: log_n,
            levels,
            log_scale: 40,
            first_modulus_bits: 50,
            bootstrap: false,
            large_digits: 0,
            insecure_test_only: true,
            ..Self::default()
        }
    }

    /// Ring dimension N.
    pub fn ring_dimension(&self) -> usize {
        1usize << self.log_ring_dimension
    }

    /// Checks the values that do not need OpenFHE.
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |m: String| Err(BackendError::InvalidParameters(m));
        if !(3..=17).contains(&self.log_ring_dimension) {
            return bad(format!("log_ring_dimension must be in 3..=17, got {}", self.log_ring_dimension));
        }
        if !self.insecure_test_only && self.log_ring_dimension < 15 {
            return bad(format!(
                "N = 2^{} cannot hold a useful CKKS modulus at 128-bit security; use log_ring_dimension 15..=17 \
                 (or set insecure_test_only for tests)",
                self.log_ring_dimension
            ));
        }
        if !(20..=60).contains(&self.log_scale) || !(self.log_scale..=60).contains(&self.first_modulus_bits) {
            return bad(format!(
                "log_scale must be in 20..=60 and first_modulus_bits in log_scale..=60 (got {} and {})",
                self.log_scale, self.first_modulus_bits
            ));
        }
        if self.levels == 0 {
            return bad("levels must be at least 1".into());
        }
        if self.bootstrap && (self.level_budget.iter().any(|&b| b == 0 || b > 6)) {
            return bad(format!("level_budget entries must be in 1..=6, got {:?}", self.level_budget));
        }
        if !(self.bootstrap_range > 0.0 && self.bootstrap_range.is_finite()) {
            return bad(format!("bootstrap_range must be positive, got {}", self.bootstrap_range));
        }
        Ok(())
    }

    /// Checks 128-bit security of a built context: log2(Q·P) against the HE-standard table
    /// for N ([`peregrine_backend::security`]); test parameters report no security.
    pub fn check_security(&self, ring_dim: usize, log_qp: f64) -> Result<Option<u32>, BackendError> {
        if self.insecure_test_only {
            return Ok(None);
        }
        peregrine_backend::security::check_128(ring_dim, log_qp).map(Some)
    }
}
