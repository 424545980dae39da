//! The CKKS rules on levels and scales, checked once for every backend.
//!
//! A backend keeps a [`CtMeta`] beside each ciphertext and plaintext and derives the metadata
//! of every result through it: the checked methods refuse what CKKS forbids (operands at
//! different levels, additions at different scales, a rescale at level 0, a non-finite
//! constant…) with the same [`BackendError`] whatever the backend, and compute the level and
//! scale of what is allowed. The backend then only has to do the arithmetic.
//!
//! ```
//! use peregrine_backend::{BackendError, CtMeta};
//!
//! let a = CtMeta::new(3, 2f64.powi(40));
//! let product = a.mul("mul", a)?.rescale(2f64.powi(40))?;
//! assert_eq!((product.level, product.scale), (2, 2f64.powi(40)));
//! assert!(matches!(a.add("add", product), Err(BackendError::LevelMismatch { .. })));
//! # Ok::<(), BackendError>(())
//! ```

use std::collections::BTreeSet;

use crate::error::BackendError;
use crate::{normalize_rotation, BResult, Capabilities};

/// Relative tolerance under which two scales count as equal.
pub const SCALE_TOLERANCE: f64 = 1e-9;

/// Level and scale of a ciphertext or plaintext.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CtMeta {
    /// Rescales left before the modulus runs out (counts down to 0).
    pub level: usize,
    /// The factor Δ the values are encoded with.
    pub scale: f64,
}

/// A ciphertext or plaintext that carries its [`CtMeta`].
pub trait HasMeta {
    /// Its level and scale.
    fn meta(&self) -> CtMeta;
}

/// Implements [`HasMeta`] for types that keep their [`CtMeta`] in a field `meta`.
#[macro_export]
macro_rules! has_meta {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::HasMeta for $t {
            fn meta(&self) -> $crate::CtMeta {
                self.meta
            }
        }
    )+};
}

/// The four level/scale accessors of [`Backend`](crate::Backend) (`level`, `scale`,
/// `plaintext_level`, `plaintext_scale`) for ciphertexts and plaintexts that implement
/// [`HasMeta`]; write it inside `impl Backend for …`.
#[macro_export]
macro_rules! meta_accessors {
    () => {
        fn level(&self, ct: &Self::Ciphertext) -> usize {
            $crate::HasMeta::meta(ct).level
        }
        fn scale(&self, ct: &Self::Ciphertext) -> f64 {
            $crate::HasMeta::meta(ct).scale
        }
        fn plaintext_level(&self, pt: &Self::Plaintext) -> usize {
            $crate::HasMeta::meta(pt).level
        }
        fn plaintext_scale(&self, pt: &Self::Plaintext) -> f64 {
            $crate::HasMeta::meta(pt).scale
        }
    };
}

/// The CKKS rule for binary operations: operands at equal levels.
pub fn same_level(op: &'static str, a: usize, b: usize) -> BResult<()> {
    if a != b {
        return Err(BackendError::LevelMismatch { op, left: a, right: b });
    }
    Ok(())
}

/// The CKKS rule for additions: equal scales (to a relative [`SCALE_TOLERANCE`]).
pub fn same_scale(op: &'static str, a: f64, b: f64) -> BResult<()> {
    if ((a - b) / a).abs() > SCALE_TOLERANCE {
        return Err(BackendError::ScaleMismatch { op, left: a.log2(), right: b.log2() });
    }
    Ok(())
}

fn check_scale(op: &'static str, scale: f64) -> BResult<()> {
    if !(scale >= 1.0 && scale.is_finite()) {
        return Err(BackendError::OutOfRange { op, detail: format!("scale {scale} must be finite and at least 1") });
    }
    Ok(())
}

impl CtMeta {
    /// Metadata at `level` and `scale` (unchecked: for values the backend already holds).
    pub fn new(level: usize, scale: f64) -> Self {
        CtMeta { level, scale }
    }

    /// The metadata of `values` encoded at `level` and `scale`, checked against `caps`: at most
    /// `slots` values, all finite, a level the parameters have, a finite scale of at least 1.
    pub fn encode(values: &[f64], level: usize, scale: f64, caps: &Capabilities) -> BResult<Self> {
        if values.len() > caps.slots {
            return Err(BackendError::TooManyValues { len: values.len(), slots: caps.slots });
        }
        if level > caps.max_level {
            return Err(BackendError::OutOfRange {
                op: "encode",
                detail: format!("level {level} above the fresh level {}", caps.max_level),
            });
        }
        check_scale("encode", scale)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(BackendError::OutOfRange { op: "encode", detail: format!("value {i} is not finite") });
        }
        Ok(CtMeta { level, scale })
    }

    /// `a ± b` for a ciphertext and a ciphertext or plaintext: equal levels and scales.
    pub fn add(self, op: &'static str, other: CtMeta) -> BResult<Self> {
        same_level(op, self.level, other.level)?;
        same_scale(op, self.scale, other.scale)?;
        Ok(self)
    }

    /// `a · b` for a ciphertext and a ciphertext or plaintext: equal levels; the scales multiply.
    pub fn mul(self, op: &'static str, other: CtMeta) -> BResult<Self> {
        same_level(op, self.level, other.level)?;
        Ok(CtMeta { level: self.level, scale: self.scale * other.scale })
    }

    /// `a + c` for a constant `c` (encoded at `a`'s scale): `c` must be finite.
    pub fn add_scalar(self, c: f64) -> BResult<Self> {
        if !c.is_finite() {
            return Err(BackendError::OutOfRange { op: "add_scalar", detail: format!("constant {c} is not finite") });
        }
        Ok(self)
    }

    /// `a · c` for a constant `c` encoded at `scale`: finite `c`, a valid scale; scales multiply.
    pub fn mul_scalar(self, c: f64, scale: f64) -> BResult<Self> {
        if !c.is_finite() {
            return Err(BackendError::OutOfRange { op: "mul_scalar", detail: format!("constant {c} is not finite") });
        }
        check_scale("mul_scalar", scale)?;
        Ok(CtMeta { level: self.level, scale: self.scale * scale })
    }

    /// A rescale by `modulus` (the q removed at this level): level ≥ 1; the scale is divided.
    pub fn rescale(self, modulus: f64) -> BResult<Self> {
        if self.level == 0 {
            return Err(BackendError::LevelsExhausted { op: "rescale", needed: 1, have: 0 });
        }
        Ok(CtMeta { level: self.level - 1, scale: self.scale / modulus })
    }

    /// A move down to `level` (not above the current one); the scale is kept.
    pub fn drop_to(self, level: usize) -> BResult<Self> {
        if level > self.level {
            return Err(BackendError::LevelsExhausted { op: "drop_to_level", needed: level, have: self.level });
        }
        Ok(CtMeta { level, scale: self.scale })
    }
}

/// The rotation rule: `step` normalised into `0..slots`; a nonzero step needs a key in `keys`
/// (normalised steps). Returns the normalised step (0: the identity, no key needed).
pub fn rotation_key(step: i64, slots: usize, keys: &BTreeSet<i64>) -> BResult<i64> {
    let s = normalize_rotation(step, slots);
    if s != 0 && !keys.contains(&s) {
        return Err(BackendError::MissingRotationKey(step));
    }
    Ok(s)
}

/// The bootstrapping rule: the parameters must provide it and its keys must have been requested.
pub fn bootstrap_allowed(configured: bool, keys_generated: bool) -> BResult<()> {
    if !configured {
        return Err(BackendError::BootstrapUnsupported);
    }
    if !keys_generated {
        return Err(BackendError::BootstrapNotEnabled);
    }
    Ok(())
}
