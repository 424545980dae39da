//! Bootstrapping: a ciphertext at level 0 comes back at level L with the same value and scale.
//!
//! 1. **Encapsulation and ModRaise.** The ciphertext is switched to a sparse secret s' (weight
//!    h), its level-0 polynomials are read as centred integers and written over the whole
//!    chain, and it is switched back to the dense secret: it now decrypts to Δ·μ + q_0·I, I an
//!    integer polynomial with |I| ≤ K (a sum of h + 1 rounding terms per coefficient).
//! 2. **CoeffsToSlots**: the inverse special FFT (from [`crate::dft`], `cts_levels` merged maps
//!    evaluated baby-step giant-step: hoisted baby rotations, giant steps summed with one
//!    ModDown; with `double_hoisting` the babies stay in Q·P, each giant step divides one part
//!    by P, one ModDown in all) puts the coefficients y = Δμ/q_0 + I, scaled into [−1, 1], into the slots (real and
//!    imaginary halves split with one conjugation; multiplying by X^(N/2) multiplies slots by i).
//! 3. **EvalMod**: sin(2πy)/(2π) ≈ Δμ/q_0 removes I: a Chebyshev interpolant of
//!    cos(2π(y − ¼)/2^r), then r double angles cos 2θ = 2cos²θ − 1.
//! 4. **SlotsToCoeffs**: the forward special FFT returns the coefficients to their place,
//!    times q_0/(2πΔ), so the result holds μ at the caller's scale Δ.
//!
//! Scales are exact throughout: every plaintext and constant is encoded at the scale that puts
//! its product at the intended scale after the rescale, so additions need no correction.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rayon::prelude::*;

use peregrine_backend::{BResult, Backend, BackendError, CtMeta};

use crate::backend::CkksServer;
use crate::context::Context;
use crate::dft::{coeff_to_slot_stages, merge, slot_to_coeff_stages, Complex, SlotTransform};
use crate::encoding::Encoder;
use crate::eval::{Ciphertext, ExtParts};
use crate::params::BootstrapParams;

/// Cost of a baby rotation relative to a giant one in a double-hoisted map (see
/// `CkksServer::apply_transform`): a baby pays only its key product, a giant a ModUp of every
/// digit, a key product and half a ModDown, about a fifth at N = 2^16 by `cost.rs`. Measured
/// at N = 2^16, 16,384 slots, one thread: 0.25 gave 11.32–11.47 s per bootstrap against
/// 12.14–12.72 s at 0.5.
const DOUBLE_HOISTED_BABY_WEIGHT: f64 = 0.25;

/// The same for a single-hoisted map (a baby also pays its ModDown): 0.35 (15 babies, 3 giants)
/// was slower than 0.5 (7 and 7) at N = 2^16, the extra babies costing memory traffic.
const BABY_WEIGHT: f64 = 0.5;

/// One giant step: its rotation and the (baby index, diagonal) terms summed before it.
pub type GiantStep<D> = (i64, Vec<(usize, D)>);

/// A linear map on the slots split for baby-step giant-step evaluation:
/// `out = Σ_G rot(Σ_j d_{G,j} ⊙ rot(v, j), G)` with the diagonals pre-rotated by −G.
#[derive(Clone, Debug)]
pub struct TransformPlan {
    /// Number of slots the map acts on (its rotations are taken modulo it).
    pub slots: usize,
    /// Level of the ciphertext the map is applied to.
    pub level: usize,
    /// Baby-step rotations (slots), the first one 0.
    pub babies: Vec<i64>,
    /// Giant steps with their (baby index, pre-rotated diagonal) terms.
    pub giants: Vec<GiantStep<Vec<Complex>>>,
    /// Double hoisting: babies kept in Q·P, diagonals encoded over Q·P (CoeffsToSlots with
    /// [`BootstrapParams::double_hoisting`]: the top of the chain, where a ModDown is dearest).
    /// Otherwise each baby is divided by P and the diagonals hold Q only (always for
    /// SlotsToCoeffs: low levels, where P's limbs would add half again to the plaintexts for no
    /// measurable gain).
    pub double_hoisted: bool,
}

impl TransformPlan {
    /// Splits `t` (times `factor`) into baby and giant steps: rotations by multiples of the
    /// offsets' common stride, the baby count chosen to minimise key-switching work (a hoisted
    /// baby rotation counted as [`BABY_WEIGHT`] of a giant one, or
    /// [`DOUBLE_HOISTED_BABY_WEIGHT`]).
    pub fn new(t: &SlotTransform, level: usize, factor: f64, double_hoisted: bool) -> Self {
        let weight = if double_hoisted { DOUBLE_HOISTED_BABY_WEIGHT } else { BABY_WEIGHT };
        let n = t.slots as i64;
        let signed = |r: usize| if r as i64 > n / 2 { r as i64 - n } else { r as i64 };
        let stride = t.diagonals.keys().map(|&r| signed(r).unsigned_abs()).filter(|&r| r != 0).fold(0u64, gcd).max(1);
        let stride = stride as i64;
        let split = |b: i64| -> BTreeMap<i64, Vec<(i64, usize)>> {
            let mut giants: BTreeMap<i64, Vec<(i64, usize)>> = BTreeMap::new();
            for &r in t.diagonals.keys() {
                let u = signed(r) / stride;
                let j = u.rem_euclid(b);
                giants.entry((u - j) * stride).or_default().push((j * stride, r));
            }
            giants
        };
        let cost = |b: i64| {
            let g = split(b);
            let babies: std::collections::BTreeSet<i64> = g.values().flatten().map(|(j, _)| *j).collect();
            babies.iter().filter(|&&j| j != 0).count() as f64 * weight + g.keys().filter(|&&s| s != 0).count() as f64
        };
        let b = (0..8).map(|e| 1i64 << e).min_by(|&x, &y| cost(x).total_cmp(&cost(y))).expect("candidates");
        let split = split(b);
        let mut babies: Vec<i64> = split.values().flatten().map(|(j, _)| *j).collect();
        babies.push(0);
        babies.sort_unstable();
        babies.dedup();
        let giants = split
            .into_iter()
            .map(|(g, terms)| {
                let terms = terms
                    .into_iter()
                    .map(|(j, r)| {
                        let d = &t.diagonals[&r];
                        let shifted: Vec<Complex> = (0..n)
                            .map(|p| {
                                let c = d[(p - g).rem_euclid(n) as usize];
                                Complex::new(c.re * factor, c.im * factor)
                            })
                            .collect();
                        (babies.binary_search(&j).expect("baby present"), shifted)
                    })
                    .collect();
                (g, terms)
            })
            .collect();
        TransformPlan { slots: t.slots, level, babies, giants, double_hoisted }
    }

    /// The rotation steps it needs (normalised to 0..slots), none for 0.
    pub fn steps(&self) -> impl Iterator<Item = i64> + '_ {
        self.babies
            .iter()
            .chain(self.giants.iter().map(|(g, _)| g))
            .map(move |s| s.rem_euclid(self.slots as i64))
            .filter(|&s| s != 0)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Where a bootstrap's steps run and what they need, computed from the parameters alone (the
/// client uses it for its keys, the server to encode its plaintexts).
///
/// **Sparse slots** (n < N/2 slots, a message in the subring of Y = X^(N/2n)): after ModRaise
/// the rotations by n, 2n, … (the trace to the subring) keep the N/(2n)·(Δμ + q_0·I)
/// coefficients of Y only; the linear maps then act on 2n slots, the last CoeffsToSlots map
/// writing the real parts into slots 0..n and the imaginary parts into n..2n, so that one
/// EvalMod serves both halves; the first SlotsToCoeffs map puts them together again.
#[derive(Clone, Debug)]
pub struct BootPlan {
    /// The bootstrapping parameters.
    pub params: BootstrapParams,
    /// Slots the linear maps act on: N/2 with full slots, 2n with n < N/2 sparse slots.
    pub slots: usize,
    /// Whether the slots are sparse (real and imaginary halves packed into one ciphertext).
    pub sparse: bool,
    /// Rotation steps of the trace to the subring after ModRaise (empty with full slots).
    pub subsum: Vec<i64>,
    /// Level after ModRaise: the top of the chain.
    pub top: usize,
    /// Level after CoeffsToSlots, where EvalMod starts.
    pub eval_level: usize,
    /// Level after EvalMod, where SlotsToCoeffs starts.
    pub stc_level: usize,
    /// Level of the result (L).
    pub out_level: usize,
    /// Half-width B of the interval EvalMod's interpolant covers (in units of q_0).
    pub half_width: f64,
    /// Chebyshev coefficients of cos(2π·B·t/2^r) on t ∈ [−1, 1].
    pub cheb: Vec<f64>,
    /// CoeffsToSlots maps, first applied first.
    pub cts: Vec<TransformPlan>,
    /// SlotsToCoeffs maps, first applied first (the last one without its q_0/(2πΔ) factor).
    pub stc: Vec<TransformPlan>,
}

impl BootPlan {
    /// The plan of `ctx` (which must have bootstrapping parameters).
    pub fn new(ctx: &Context) -> BResult<Self> {
        let params = ctx.params.bootstrap.clone().ok_or(BackendError::BootstrapUnsupported)?;
        let n = ctx.chain.slots;
        if (n.trailing_zeros() as usize) < params.min_log_slots() {
            return Err(BackendError::Unsupported {
                backend: "ckks".into(),
                what: "bootstrap with fewer slots than 2^cts_levels or 2^stc_levels (each linear-map level needs an FFT stage)",
            });
        }
        let sparse = n < ctx.n() / 2;
        let slots = if sparse { 2 * n } else { n };
        // The trace multiplies the subring's coefficients by N/(2n).
        let trace_gain = (ctx.n() / 2 / n) as f64;
        let subsum: Vec<i64> = (0..(ctx.n() / 2 / n).trailing_zeros()).map(|j| (n << j) as i64).collect();
        let top = ctx.top_level();
        let eval_level = top - params.cts_levels;
        let stc_level = eval_level - params.eval_mod_levels();
        let out_level = stc_level - params.stc_levels;
        debug_assert_eq!(out_level, ctx.max_level());
        let half_width = params.k as f64 + 1.0;
        let cheb = chebyshev_interpolant(
            |t| (std::f64::consts::TAU * half_width * t / (1u64 << params.double_angles) as f64).cos(),
            params.cos_degree,
        );
        // CoeffsToSlots: the real and imaginary halves are split as w + conj(w) and
        // −i(w − conj(w)) (sparse: as u + conj(u), u = [w | −i·w]), so the map is scaled by
        // 1/(2B) (and by the inverse of the trace's gain) to leave y/B in each.
        let mut cts_maps: Vec<SlotTransform> =
            merge(&coeff_to_slot_stages(&ctx.encoder), params.cts_levels).iter().map(|t| t.lift(slots)).collect();
        let mut stc_maps: Vec<SlotTransform> =
            merge(&slot_to_coeff_stages(&ctx.encoder), params.stc_levels).iter().map(|t| t.lift(slots)).collect();
        if sparse {
            let half =
                |a: Complex, b: Complex| -> Vec<Complex> { (0..slots).map(|p| if p < n { a } else { b }).collect() };
            let (one, i, minus_i) = (Complex::new(1.0, 0.0), Complex::new(0.0, 1.0), Complex::new(0.0, -1.0));
            let last = cts_maps.len() - 1;
            cts_maps[last] = cts_maps[last].masked(&half(one, minus_i));
            // [s_re | s_im] → s_re + i·s_im in every half: u = D0 ⊙ s + D1 ⊙ rot(s, n).
            let repack = SlotTransform::from_diagonals(slots, [(0, half(one, i)), (n, half(i, one))]);
            stc_maps[0] = stc_maps[0].after(&repack);
        }
        let cts = cts_maps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let factor = if i == 0 { 0.5 / half_width / trace_gain } else { 1.0 };
                TransformPlan::new(t, top - i, factor, params.double_hoisting)
            })
            .collect();
        let stc = stc_maps.iter().enumerate().map(|(i, t)| TransformPlan::new(t, stc_level - i, 1.0, false)).collect();
        Ok(BootPlan {
            params,
            slots,
            sparse,
            subsum,
            top,
            eval_level,
            stc_level,
            out_level,
            half_width,
            cheb,
            cts,
            stc,
        })
    }

    /// Rotation keys a bootstrap needs: step (in 0..N/2) → highest level it is used at.
    pub fn rotations(&self) -> BTreeMap<i64, usize> {
        let mut out = BTreeMap::new();
        for &s in &self.subsum {
            out.insert(s, self.top);
        }
        for t in self.cts.iter().chain(&self.stc) {
            for s in t.steps() {
                let e = out.entry(s).or_insert(0);
                *e = t.level.max(*e);
            }
        }
        out
    }
}

/// Chebyshev coefficients (first kind) of the degree-`degree` interpolant of `f` at the
/// Chebyshev nodes of [−1, 1].
pub fn chebyshev_interpolant(f: impl Fn(f64) -> f64, degree: usize) -> Vec<f64> {
    let m = degree + 1;
    let nodes: Vec<f64> = (0..m).map(|j| (std::f64::consts::PI * (j as f64 + 0.5) / m as f64).cos()).collect();
    let values: Vec<f64> = nodes.iter().map(|&x| f(x)).collect();
    (0..m)
        .map(|k| {
            let s: f64 =
                (0..m).map(|j| values[j] * (std::f64::consts::PI * k as f64 * (j as f64 + 0.5) / m as f64).cos()).sum();
            s * if k == 0 { 1.0 } else { 2.0 } / m as f64
        })
        .collect()
}

/// Evaluates Σ c_k T_k(t) in cleartext (Clenshaw).
pub fn chebyshev_value(c: &[f64], t: f64) -> f64 {
    let (mut b1, mut b2) = (0.0, 0.0);
    for &ck in c.iter().skip(1).rev() {
        let b0 = 2.0 * t * b1 - b2 + ck;
        b2 = b1;
        b1 = b0;
    }
    t * b1 - b2 + c[0]
}

/// Prints the time of each bootstrap phase when `PEREGRINE_PROFILE` is set.
struct PhaseTimer {
    on: bool,
    last: std::time::Instant,
}

impl PhaseTimer {
    fn new() -> Self {
        PhaseTimer { on: std::env::var_os("PEREGRINE_PROFILE").is_some(), last: std::time::Instant::now() }
    }
    fn lap(&mut self, what: &str) {
        if self.on {
            eprintln!("bootstrap {what}: {:.2} s", self.last.elapsed().as_secs_f64());
            self.last = std::time::Instant::now();
        }
    }
}

/// A [`TransformPlan`] with its diagonals encoded for one level.
struct EncodedTransform {
    level: usize,
    /// Baby steps as key steps (0..N/2).
    babies: Vec<i64>,
    /// Giant steps (as key steps) and their encoded terms.
    giants: Vec<GiantStep<Vec<u64>>>,
    /// Scale the diagonals were encoded at.
    scale: f64,
    /// Whether the diagonals are over Q·P and the map runs double-hoisted.
    double_hoisted: bool,
}

impl EncodedTransform {
    /// Encodes `plan`'s diagonals (times `values_factor`) with `encoder` (of the plan's slot
    /// count) at `scale`; its rotation steps normalised to key steps.
    fn new(ctx: &Context, encoder: &Encoder, plan: &TransformPlan, values_factor: f64, scale: f64) -> BResult<Self> {
        let key = |s: i64| s.rem_euclid(plan.slots as i64);
        let giants = plan
            .giants
            .par_iter()
            .map(|(g, terms)| {
                let encoded = terms
                    .par_iter()
                    .map(|(j, d)| {
                        let re: Vec<f64> = d.iter().map(|c| c.re * values_factor).collect();
                        let im: Vec<f64> = d.iter().map(|c| c.im * values_factor).collect();
                        Ok((*j, ctx.encode_complex_with(encoder, (&re, &im), plan.level, scale, plan.double_hoisted)?))
                    })
                    .collect::<BResult<Vec<_>>>()?;
                Ok((key(*g), encoded))
            })
            .collect::<BResult<Vec<_>>>()?;
        let babies = plan.babies.iter().map(|&b| key(b)).collect();
        Ok(EncodedTransform { level: plan.level, babies, giants, scale, double_hoisted: plan.double_hoisted })
    }

    fn memory_bytes(&self) -> usize {
        self.giants.iter().flat_map(|(_, t)| t).map(|(_, p)| p.len() * 8).sum()
    }
}

/// A server's bootstrapping state: the plan and its encoded plaintexts.
pub struct Bootstrapper {
    plan: BootPlan,
    cts: Vec<EncodedTransform>,
    stc: Vec<EncodedTransform>,
    /// Scale EvalMod works at (2^eval_mod_bits).
    eval_scale: f64,
    /// Scale EvalMod's result comes out at (SlotsToCoeffs' input).
    stc_in_scale: f64,
    /// Scale the last SlotsToCoeffs map expects its input at.
    stc_last_in_scale: f64,
    /// The encoder of the plan's slot count (re-encodes the last map for a range gain).
    encoder: Encoder,
}

impl std::fmt::Debug for Bootstrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bootstrapper({} MiB of plaintexts)", self.memory_bytes() >> 20)
    }
}

impl Bootstrapper {
    /// Plans and encodes the linear maps of `ctx`'s bootstrap.
    pub fn new(ctx: &Context) -> BResult<Self> {
        let plan = BootPlan::new(ctx)?;
        let encoder = Encoder::new(ctx.n(), plan.slots);
        let q = |l: usize| ctx.chain.q[l] as f64;
        let eval_scale = (plan.params.eval_mod_bits as f64).exp2();
        // CoeffsToSlots: the raised ciphertext is read at scale q_0 and the last map lands at
        // eval_scale; in between, every map's plaintexts get the same scale (the product of
        // the scales is fixed by the primes, and the weakest map bounds the precision).
        let k = plan.cts.len() as f64;
        let pt_scale = ((eval_scale / q(0)).log2() + plan.cts.iter().map(|t| q(t.level).log2()).sum::<f64>()) / k;
        let pt_scale = pt_scale.exp2();
        let mut s_in = q(0);
        let mut cts = Vec::new();
        for (i, t) in plan.cts.iter().enumerate() {
            let scale = if i + 1 == plan.cts.len() { eval_scale * q(t.level) / s_in } else { pt_scale };
            cts.push(EncodedTransform::new(ctx, &encoder, t, 1.0, scale)?);
            s_in = s_in * scale / q(t.level);
        }
        let stc_in_scale = eval_mod_output_scale(ctx, &plan, eval_scale);
        // SlotsToCoeffs steps the scale down geometrically from EvalMod's towards the nominal
        // Δ = 2^log_scale (each map's plaintexts keep as many bits as its prime allows); the
        // last map multiplies by q_0/(2πΔ) and lands at the caller's Δ: its integers do not
        // depend on Δ (encoded here for Δ = 1, the plaintext's scale is set per call).
        let nominal = (ctx.params.log_scale as f64).exp2();
        let k = plan.stc.len();
        let mut stc = Vec::new();
        let mut s_in = stc_in_scale;
        for (i, t) in plan.stc.iter().enumerate() {
            if i + 1 < k {
                let target = stc_in_scale * (nominal / stc_in_scale).powf((i + 1) as f64 / k as f64);
                stc.push(EncodedTransform::new(ctx, &encoder, t, 1.0, target * q(t.level) / s_in)?);
                s_in = target;
            } else {
                let factor = q(0) / std::f64::consts::TAU;
                stc.push(EncodedTransform::new(ctx, &encoder, t, factor, q(t.level) / s_in)?);
            }
        }
        Ok(Bootstrapper { plan, cts, stc, eval_scale, stc_in_scale, stc_last_in_scale: s_in, encoder })
    }

    /// The last SlotsToCoeffs map for an input multiplied by `gain` before ModRaise: its
    /// diagonals carry q_0/(2π·gain) instead of q_0/2π, so the result lands at the caller's
    /// scale and value. Encoded per call (a few dozen plaintexts at one low level: tens of
    /// milliseconds, against seconds for the bootstrap).
    fn last_stc_for_gain(&self, ctx: &Context, gain: u64) -> BResult<EncodedTransform> {
        let t = self.plan.stc.last().expect("SlotsToCoeffs has maps");
        let factor = ctx.chain.q[0] as f64 / std::f64::consts::TAU / gain as f64;
        let stored = self.stc.last().expect("SlotsToCoeffs has maps");
        EncodedTransform::new(ctx, &self.encoder, t, factor, stored.scale)
    }

    /// Bytes held by the encoded plaintexts.
    pub fn memory_bytes(&self) -> usize {
        self.cts.iter().chain(&self.stc).map(EncodedTransform::memory_bytes).sum()
    }

    /// The plan.
    pub fn plan(&self) -> &BootPlan {
        &self.plan
    }
}

/// The scale EvalMod's output has when its input is at `eval_scale` (the Chebyshev part lands
/// exactly there; each double angle squares the scale and divides by its prime).
fn eval_mod_output_scale(ctx: &Context, plan: &BootPlan, eval_scale: f64) -> f64 {
    let cheb_out = plan.eval_level - plan.params.cosine_levels();
    let q = |l: usize| ctx.chain.q[l] as f64;
    let angles = plan.params.double_angles;
    let s = (0..angles).fold(eval_scale, |s, i| s * s / q(cheb_out - i));
    if plan.params.arcsine {
        let l = cheb_out - angles;
        let u = s * 6.0 * s / q(l);
        s * u / q(l - 1)
    } else {
        s
    }
}

impl CkksServer {
    /// Applies an encoded map; `pt_scale` is the scale the diagonals count at (their encoding
    /// scale, or Δ times it for the last SlotsToCoeffs map). Double-hoisted maps: the baby
    /// rotations share one decomposition and stay in the key-switching basis Q·P without
    /// ModDown; each giant step's diagonal products are summed there (plaintexts encoded over
    /// Q·P), only its c1 is divided by P to be decomposed for the giant rotation, whose result
    /// stays in Q·P too; one ModDown of the total. Otherwise: hoisted babies each divided by P,
    /// one fused product per giant step, the giant rotations summed with one ModDown. Then one
    /// rescale.
    fn apply_transform(&self, ct: &Ciphertext, t: &EncodedTransform, pt_scale: f64) -> BResult<Ciphertext> {
        if ct.level() != t.level {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("a linear map for level {} met a ciphertext at level {}", t.level, ct.level()),
            });
        }
        let meta = CtMeta::new(t.level, ct.meta.scale * pt_scale);
        if !t.double_hoisted {
            // The baby of step 0 is `ct` itself (not a copy).
            let steps: Vec<i64> = t.babies.iter().copied().filter(|&s| s != 0).collect();
            let rotated = self.rotate_many_keyed(ct, &steps)?;
            let mut next = rotated.iter();
            let babies: Vec<&Ciphertext> = t
                .babies
                .iter()
                .map(|&s| if s == 0 { ct } else { next.next().expect("one rotation per nonzero step") })
                .collect();
            let inner: Vec<(Ciphertext, i64)> = t
                .giants
                .iter()
                .map(|(g, terms)| {
                    let pairs: Vec<(&Ciphertext, &[u64])> =
                        terms.iter().map(|(j, p)| (babies[*j], p.as_slice())).collect();
                    (self.make(self.ctx.mul_plain_sum(&pairs), meta), *g)
                })
                .collect();
            drop(babies);
            drop(rotated);
            let refs: Vec<(&Ciphertext, i64)> = inner.iter().map(|(c, g)| (c, *g)).collect();
            let sum = self.rotate_sum_keyed(&refs)?;
            drop(inner);
            return self.rescale_owned(sum);
        }
        let l = t.level;
        let ctx = &self.ctx;
        let key = |s: i64| -> BResult<Option<(&crate::keys::SwitchKey, u64)>> {
            Ok(if s == 0 {
                None
            } else {
                let rk = self.rotation(s, l)?;
                Some((&rk.key, rk.galois))
            })
        };
        let baby_keys = t.babies.iter().map(|&s| key(s)).collect::<BResult<Vec<_>>>()?;
        let giant_keys = t.giants.iter().map(|(g, _)| key(*g)).collect::<BResult<Vec<_>>>()?;
        let babies = ctx.hoisted_rotations_ext(&ct.c0, &ct.c1, &baby_keys, l);
        let len = ctx.ext_basis(l).len() * ctx.n();
        let (mut acc0, mut acc1) = (vec![0u64; len], vec![0u64; len]);
        for ((_, terms), gk) in t.giants.iter().zip(giant_keys) {
            let pairs: Vec<(&ExtParts, &[u64])> = terms.iter().map(|(j, p)| (&babies[*j], p.as_slice())).collect();
            let inner = ctx.mul_plain_sum_ext(&pairs, l);
            ctx.giant_step_into((&mut acc0, &mut acc1), inner, gk, l);
        }
        drop(babies);
        let (c0, c1) = rayon::join(|| ctx.mod_down(acc0, l), || ctx.mod_down(acc1, l));
        self.rescale_owned(self.make((c0, c1), meta))
    }

    /// `ct` at `level` and `scale`: dropped, or multiplied by 1 at the scale that makes the
    /// rescale land on `scale` (one level) when its scale differs.
    fn adjust<'a>(&self, ct: &'a Ciphertext, level: usize, scale: f64) -> BResult<Cow<'a, Ciphertext>> {
        let same = (ct.meta.scale / scale - 1.0).abs() < 1e-12;
        if same && ct.level() >= level {
            return self.at_level(ct, level);
        }
        if ct.level() <= level {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("cannot bring a ciphertext at level {} to level {level} at another scale", ct.level()),
            });
        }
        // Read at level + 1: the product and rescale then run on level + 2 limbs.
        let k = scale * self.modulus(level + 1) / ct.meta.scale;
        let ct = self.mul_scalar_add_at(None, ct, level + 1, 1.0, k)?;
        Ok(Cow::Owned(self.rescale_owned(ct)?))
    }

    /// 2·a·b − c (Chebyshev recurrences), with c (or the constant `-c_const`) brought to the
    /// product's level and scale. Works in place on the product (no copies).
    fn cheb_step(&self, a: &Ciphertext, b: &Ciphertext, c: Option<&Ciphertext>) -> BResult<Ciphertext> {
        let l = a.level().min(b.level());
        let (a, b) = (self.at_level(a, l)?, self.at_level(b, l)?);
        // 2·a·b before the rescale (after it, the rescale's rounding error would be doubled
        // too: 0.5 bit of bootstrap precision measured).
        let mut p = self.mul(&a, &b)?;
        self.ctx.mul_const_assign(&mut p.c0, 2);
        self.ctx.mul_const_assign(&mut p.c1, 2);
        let mut p = self.rescale_owned(p)?;
        match c {
            Some(c) => {
                let c = self.adjust(c, p.level(), p.meta.scale)?;
                self.sub_assign(&mut p, &c)?;
            }
            None => self.add_scalar_assign(&mut p, -1.0)?,
        }
        Ok(p)
    }

    /// Σ c_k T_k(t) at exactly `level` and `scale` (baby-step giant-step in the Chebyshev basis:
    /// p = r + T_m·q with deg r < m). The giant products that land on this level (T_m·q here,
    /// and those of r's own split) are summed before **one** relinearisation and rescale.
    fn cheb_eval(
        &self,
        c: &[f64],
        powers: &BTreeMap<usize, Ciphertext>,
        babies: usize,
        level: usize,
        scale: f64,
    ) -> BResult<Ciphertext> {
        let mut products = Vec::new();
        let mut acc = self.cheb_terms(c, powers, babies, level, scale, &mut products)?;
        if !products.is_empty() {
            let pairs: Vec<(&Ciphertext, &Ciphertext)> = products.iter().map(|(t, q)| (t.as_ref(), q)).collect();
            let prod = self.rescale_owned(self.mul_sum(&pairs)?)?;
            let prod = CkksServer::with_scale(prod, acc.meta.scale)?;
            self.add_assign(&mut acc, &prod)?;
        }
        Ok(acc)
    }

    /// [`CkksServer::cheb_eval`] without its giant products: returns the linear part at `level`
    /// and `scale` and pushes the pairs (T_m, q(t)) at level + 1 whose products, rescaled, land
    /// there too.
    fn cheb_terms<'p>(
        &self,
        c: &[f64],
        powers: &'p BTreeMap<usize, Ciphertext>,
        babies: usize,
        level: usize,
        scale: f64,
        products: &mut Vec<(Cow<'p, Ciphertext>, Ciphertext)>,
    ) -> BResult<Ciphertext> {
        if c.len() <= babies {
            // Σ c_k T_k, every power read at level + 1 and multiplied by its coefficient at the
            // scale that makes the one rescale land on `scale`, accumulated in one pass each.
            let target = scale * self.modulus(level + 1);
            let mut acc: Option<Ciphertext> = None;
            for (k, &ck) in c.iter().enumerate().skip(1) {
                if ck.abs() <= 1e-30 {
                    continue;
                }
                let tk = &powers[&k];
                acc = Some(self.mul_scalar_add_at(acc, tk, level + 1, ck, target / tk.meta.scale)?);
            }
            let mut acc = match acc {
                Some(a) => self.rescale_owned(a)?,
                None => self.adjust(&self.mul_scalar(&powers[&1], 0.0, 1.0)?, level, scale)?.into_owned(),
            };
            acc.meta.scale = CkksServer::with_scale_checked(acc.meta.scale, scale)?;
            self.add_scalar_assign(&mut acc, c[0])?;
            return Ok(acc);
        }
        let m = *powers.keys().filter(|&&k| k >= babies && k < c.len()).max().expect("a giant power");
        // p = r + T_m·q: q_0 = c_m, q_j = 2c_{m+j}; r_k = c_k − c_{2m−k}.
        let q: Vec<f64> = (m..c.len()).map(|k| if k == m { c[m] } else { 2.0 * c[k] }).collect();
        let r: Vec<f64> =
            (0..m).map(|k| if k == 0 || 2 * m - k >= c.len() { c[k] } else { c[k] - c[2 * m - k] }).collect();
        let tm = self.at_level(&powers[&m], level + 1)?;
        let qv = self.cheb_eval(&q, powers, babies, level + 1, scale * self.modulus(level + 1) / tm.meta.scale)?;
        products.push((tm, qv));
        self.cheb_terms(&r, powers, babies, level, scale, products)
    }

    /// Replaces a scale that equals `scale` up to rounding by exactly `scale`.
    fn with_scale(mut ct: Ciphertext, scale: f64) -> BResult<Ciphertext> {
        ct.meta.scale = CkksServer::with_scale_checked(ct.meta.scale, scale)?;
        Ok(ct)
    }

    /// `planned` if `actual` equals it up to rounding, else an error.
    fn with_scale_checked(actual: f64, planned: f64) -> BResult<f64> {
        if (actual / planned - 1.0).abs() > 1e-12 {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("scale 2^{:.3} where 2^{:.3} was planned", actual.log2(), planned.log2()),
            });
        }
        Ok(planned)
    }

    /// EvalMod on one real-valued ciphertext t = (y − ¼)/B: sin(2πy) at the planned scale.
    fn eval_mod(&self, t: &Ciphertext, boot: &Bootstrapper) -> BResult<Ciphertext> {
        let plan = &boot.plan;
        let d = plan.cheb.len() - 1;
        let babies = 1usize << (usize::BITS - d.leading_zeros()).div_ceil(2);
        let mut powers: BTreeMap<usize, Ciphertext> = BTreeMap::new();
        powers.insert(1, t.clone());
        for k in 2..babies.min(d + 1) {
            let next = if k % 2 == 0 {
                self.cheb_step(&powers[&(k / 2)], &powers[&(k / 2)], None)?
            } else {
                self.cheb_step(&powers[&(k / 2 + 1)], &powers[&(k / 2)], Some(&powers[&1]))?
            };
            powers.insert(k, next);
        }
        let mut g = babies;
        while g <= d {
            let half = &powers[&(g / 2)];
            let next = self.cheb_step(half, half, None)?;
            powers.insert(g, next);
            g *= 2;
        }
        let out_level = plan.eval_level - plan.params.cosine_levels();
        let mut c = self.cheb_eval(&plan.cheb, &powers, babies, out_level, boot.eval_scale)?;
        drop(powers);
        for _ in 0..plan.params.double_angles {
            c = self.cheb_step(&c, &c, None)?;
        }
        if plan.params.arcsine {
            // arcsin(s) ≈ s·(1 + s²/6): s²/6 is s² read at 6× its scale (a free relabel).
            let mut sq = self.mul(&c, &c)?;
            sq.meta.scale *= 6.0;
            let mut u = self.rescale_owned(sq)?;
            self.add_scalar_assign(&mut u, 1.0)?;
            let s = self.at_level(&c, u.level())?;
            c = self.rescale_owned(self.mul(&s, &u)?)?;
        }
        Ok(c)
    }

    /// The bootstrap itself (keys and level already checked by the caller). With `gain` > 1
    /// the input is first multiplied by that integer (its values must then stay within the
    /// bootstrap's range: the caller's range is `gain` times smaller), which puts the whole
    /// range to use, and the last SlotsToCoeffs map divides by it again: the bootstrap's own
    /// error, proportional to the range, shrinks by the gain.
    pub(crate) fn run_bootstrap(&self, a: &Ciphertext, boot: &Bootstrapper, gain: u64) -> BResult<Ciphertext> {
        let ctx = &self.ctx;
        let enc = self.keys.encapsulation.as_ref().ok_or(BackendError::BootstrapNotEnabled)?;
        let plan = &boot.plan;
        let mut timer = PhaseTimer::new();
        let gained;
        let (a, last_stc) = if gain > 1 {
            gained = self.make(ctx.mul_const(a, i128::from(gain)), a.meta);
            (&gained, Some(boot.last_stc_for_gain(ctx, gain)?))
        } else {
            (a, None)
        };
        // Encapsulation: to the sparse secret at level 0, raise, back to the dense secret.
        let (u0, u1) = ctx.key_switch(&a.c1, &enc.to_sparse, 0);
        let mut c0 = a.c0.clone();
        crate::eval::add_into(ctx, &mut c0, &u0);
        let (r0, r1) = rayon::join(|| ctx.mod_raise(&c0, plan.top), || ctx.mod_raise(&u1, plan.top));
        let (v0, v1) = ctx.key_switch(&r1, &enc.from_sparse, plan.top);
        let mut raised0 = r0;
        crate::eval::add_into(ctx, &mut raised0, &v0);
        let mut raised = self.make((raised0, v1), CtMeta::new(plan.top, ctx.chain.q[0] as f64));
        // Sparse slots: the trace to the subring of Y = X^(N/2n) drops the other coefficients.
        for &s in &plan.subsum {
            let r = self.rotate_many_keyed(&raised, &[s])?.pop().expect("one rotation");
            self.add_assign(&mut raised, &r)?;
        }
        timer.lap("ModRaise");
        // CoeffsToSlots.
        let mut w = raised;
        for t in &boot.cts {
            w = self.apply_transform(&w, t, t.scale)?;
            timer.lap("CoeffsToSlots map");
        }
        let w = CkksServer::with_scale(w, boot.eval_scale)?;
        let z = if plan.sparse {
            // w = [v | −i·v]: w + conj(w) holds the real parts in slots 0..n and the
            // imaginary ones in n..2n; one EvalMod for both.
            let mut z = self.conjugate(&w)?;
            self.add_assign(&mut z, &w)?;
            drop(w);
            self.add_scalar_assign(&mut z, -0.25 / plan.half_width)?;
            let s = self.eval_mod(&z, boot)?;
            timer.lap("conjugate + EvalMod");
            s
        } else {
            self.eval_mod_halves(&w, boot, &mut timer)?
        };
        let mut z = CkksServer::with_scale(z, boot.stc_in_scale)?;
        // SlotsToCoeffs; the last map multiplies by q_0/(2πΔ) and lands at the caller's Δ.
        let last = boot.stc.len() - 1;
        for (i, t) in boot.stc.iter().enumerate() {
            let t = if i == last { last_stc.as_ref().unwrap_or(t) } else { t };
            let pt_scale = if i < last {
                t.scale
            } else {
                z = CkksServer::with_scale(z, boot.stc_last_in_scale)?;
                t.scale * a.meta.scale
            };
            z = self.apply_transform(&z, t, pt_scale)?;
            timer.lap("SlotsToCoeffs map");
        }
        CkksServer::with_scale(z, a.meta.scale)
    }

    /// Full slots: EvalMod on the real and on the imaginary half of w, recombined as
    /// s_re + i·s_im.
    fn eval_mod_halves(&self, w: &Ciphertext, boot: &Bootstrapper, timer: &mut PhaseTimer) -> BResult<Ciphertext> {
        let ctx = &self.ctx;
        let n = ctx.n();
        let plan = &boot.plan;
        // Real and imaginary halves, each shifted to t = (y − ¼)/B.
        let conj = self.conjugate(w)?;
        let re = self.add(w, &conj)?;
        let diff = self.sub(w, &conj)?;
        let im = {
            let (c0, c1) =
                rayon::join(|| ctx.mul_monomial(&diff.c0, 3 * n / 2), || ctx.mul_monomial(&diff.c1, 3 * n / 2));
            self.make((c0, c1), diff.meta)
        };
        let shift = -0.25 / plan.half_width;
        let (re, im) = (self.add_scalar(&re, shift)?, self.add_scalar(&im, shift)?);
        let (sre, sim) = rayon::join(|| self.eval_mod(&re, boot), || self.eval_mod(&im, boot));
        let (sre, sim) = (sre?, sim?);
        timer.lap("conjugate + EvalMod");
        let sim_i = {
            let (c0, c1) = rayon::join(|| ctx.mul_monomial(&sim.c0, n / 2), || ctx.mul_monomial(&sim.c1, n / 2));
            self.make((c0, c1), sim.meta)
        };
        self.add(&sre, &sim_i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CkksParams;
    use crate::CkksScheme;
    use peregrine_backend::{Client, KeyRequest, Scheme};

    fn params(log_n: u32) -> CkksParams {
        CkksParams {
            log_ring_dimension: log_n,
            levels: 2,
            log_scale: 40,
            first_modulus_bits: 48,
            insecure_test_only: true,
            bootstrap: Some(BootstrapParams::default()),
            ..CkksParams::default()
        }
    }

    fn max_err(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// Follows one bootstrap step by step against the cleartext values it should hold. Runs a
    /// cosine of degree 31 (the default, 23, is 0.6 s faster at N = 2^16 for the same 20 bits
    /// there, but its interpolation error, ~7e-11 of EvalMod's output, would hide the ~3e-12 of
    /// noise the stage bounds below are set to catch at N = 2^10).
    #[test]
    fn every_stage_of_a_bootstrap_holds_what_it_should() {
        staged_bootstrap(false);
    }

    /// The same with CoeffsToSlots double-hoisted (babies in Q·P, plaintexts over Q·P).
    #[test]
    fn every_stage_of_a_double_hoisted_bootstrap_holds_what_it_should() {
        staged_bootstrap(true);
    }

    fn staged_bootstrap(double_hoisting: bool) {
        let mut p = params(std::env::var("LOGN").ok().and_then(|v| v.parse().ok()).unwrap_or(10));
        if let Some(b) = p.bootstrap.as_mut() {
            b.cos_degree = 31;
            b.double_hoisting = double_hoisting;
        }
        if let Ok(e) = std::env::var("FMB") {
            p.first_modulus_bits = e.parse().unwrap();
            p.log_scale = std::env::var("LOGSCALE").map_or(p.first_modulus_bits - 8, |v| v.parse().unwrap());
        }
        if let Ok(e) = std::env::var("CTSB") {
            p.bootstrap.as_mut().unwrap().cts_bits = e.parse().unwrap();
        }
        if let Ok(e) = std::env::var("STCB") {
            p.bootstrap.as_mut().unwrap().stc_bits = e.parse().unwrap();
        }
        if let Ok(e) = std::env::var("EMB") {
            p.bootstrap.as_mut().unwrap().eval_mod_bits = e.parse().unwrap();
        }
        let client = CkksScheme::keygen(&p, &KeyRequest { bootstrap: true, ..Default::default() }).unwrap();
        let server = client.local_server().unwrap().unwrap();
        let ctx = client.context().clone();
        let sk = client.secret();
        let n = ctx.chain.slots;
        let vals: Vec<f64> = (0..n).map(|i| ((i * 7919 + 13) % 2001) as f64 / 1000.0 - 1.0).collect();
        let ct = client.encrypt(&client.encode(&vals, 2, 2f64.powi(p.log_scale as i32)).unwrap()).unwrap();
        let a = server.drop_to_level(&ct, 0).unwrap();
        let boot = server.bootstrapper().unwrap();
        let plan = &boot.plan;
        let enc = server.keys.encapsulation.as_ref().unwrap();
        let (u0, u1) = ctx.key_switch(&a.c1, &enc.to_sparse, 0);
        let mut c0 = a.c0.clone();
        crate::eval::add_into(&ctx, &mut c0, &u0);
        let (r0, r1) = (ctx.mod_raise(&c0, plan.top), ctx.mod_raise(&u1, plan.top));
        let (v0, v1) = ctx.key_switch(&r1, &enc.from_sparse, plan.top);
        let mut raised0 = r0;
        crate::eval::add_into(&ctx, &mut raised0, &v0);
        let raised = server.make((raised0, v1), CtMeta::new(plan.top, ctx.chain.q[0] as f64));
        let dec =
            |ct: &Ciphertext| ctx.decode_coefficients(&ctx.decrypt(sk, &ct.c0, &ct.c1), ct.level(), ct.meta.scale);
        let slots = |ct: &Ciphertext| ctx.decode(&ctx.decrypt(sk, &ct.c0, &ct.c1), ct.level(), ct.meta.scale);
        let y = dec(&raised);
        let ideal: Vec<f64> = ctx.encoder.encode_coeffs(&vals, 2f64.powi(p.log_scale as i32) / ctx.chain.q[0] as f64);
        let frac: Vec<f64> = y.iter().map(|v| v - v.round()).collect();
        eprintln!(
            "raised: max |I| {:.0}, fractional part vs Δμ/q0 {:.3e}",
            y.iter().fold(0.0f64, |m, v| m.max(v.abs())),
            max_err(&frac, &ideal)
        );
        assert!(y.iter().all(|v| v.abs() <= plan.params.k as f64 + 1.0), "|I| above K");
        assert!(max_err(&frac, &ideal) < 1e-11, "ModRaise lost the message");
        let mut w = raised;
        for t in &boot.cts {
            w = server.apply_transform(&w, t, t.scale).unwrap();
        }
        let b = plan.half_width;
        let conj = server.conjugate(&w).unwrap();
        let re = server.add(&w, &conj).unwrap();
        let want_re: Vec<f64> = ctx.encoder.bit_rev.iter().map(|&r| y[r as usize] / b).collect();
        eprintln!("CoeffsToSlots real half: max error {:.3e} (t units)", max_err(&slots(&re), &want_re));
        assert!(max_err(&slots(&re), &want_re) < 1e-12);
        let re = server.add_scalar(&re, -0.25 / b).unwrap();
        let s = server.eval_mod(&re, &boot).unwrap();
        let f = |v: f64| {
            let s = (std::f64::consts::TAU * v).sin();
            if plan.params.arcsine {
                s * (1.0 + s * s / 6.0)
            } else {
                s
            }
        };
        let want_s: Vec<f64> = ctx.encoder.bit_rev.iter().map(|&r| f(y[r as usize])).collect();
        let got_s = slots(&s);
        eprintln!(
            "EvalMod: max error {:.3e}, level {} scale 2^{:.2}",
            max_err(&got_s, &want_s),
            s.level(),
            s.meta.scale.log2()
        );
        assert!(max_err(&got_s, &want_s) < 1e-10);
        assert_eq!(s.level(), plan.stc_level);
        // Imaginary half, combination and SlotsToCoeffs against the cleartext maps.
        let nn = ctx.n();
        let diff = server.sub(&w, &conj).unwrap();
        let im =
            server.make((ctx.mul_monomial(&diff.c0, 3 * nn / 2), ctx.mul_monomial(&diff.c1, 3 * nn / 2)), diff.meta);
        let want_im: Vec<f64> = ctx.encoder.bit_rev.iter().map(|&r| y[r as usize + n] / b).collect();
        eprintln!("CoeffsToSlots imaginary half: max error {:.3e}", max_err(&slots(&im), &want_im));
        assert!(max_err(&slots(&im), &want_im) < 1e-12);
        let im = server.add_scalar(&im, -0.25 / b).unwrap();
        let si = server.eval_mod(&im, &boot).unwrap();
        let si_i = server.make((ctx.mul_monomial(&si.c0, nn / 2), ctx.mul_monomial(&si.c1, nn / 2)), si.meta);
        let mut z = server.add(&s, &si_i).unwrap();
        z.meta.scale = boot.stc_in_scale;
        let mut want: Vec<Complex> =
            ctx.encoder.bit_rev.iter().map(|&r| Complex::new(f(y[r as usize]), f(y[r as usize + n]))).collect();
        let maps = merge(&slot_to_coeff_stages(&ctx.encoder), plan.params.stc_levels);
        let last = boot.stc.len() - 1;
        for (i, (t, m)) in boot.stc.iter().zip(&maps).enumerate() {
            let pt_scale = if i < last { t.scale } else { t.scale * a.meta.scale };
            if i == last {
                z.meta.scale = boot.stc_last_in_scale;
            }
            z = server.apply_transform(&z, t, pt_scale).unwrap();
            want = m.apply(&want);
            if i == last {
                let k = ctx.chain.q[0] as f64 / std::f64::consts::TAU / a.meta.scale;
                want.iter_mut().for_each(|c| *c = Complex::new(c.re * k, c.im * k));
            }
            let wr: Vec<f64> = want.iter().map(|c| c.re).collect();
            let mag = wr.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            eprintln!(
                "SlotsToCoeffs map {i}: max error {:.3e} (values up to {mag:.3e}), scale 2^{:.2}",
                max_err(&slots(&z), &wr),
                z.meta.scale.log2()
            );
            // Errors relative to the values each map holds (≈ 2^-30 at N = 2^10).
            assert!(max_err(&slots(&z), &wr) < 1e-8 * mag, "map {i}");
        }
        let out = server.bootstrap(&a).unwrap();
        let got = client.decrypt_values(&out).unwrap();
        eprintln!("bootstrap: max error {:.3e}", max_err(&got, &vals));
        assert!(max_err(&got, &vals) < 1e-7);
        // Cleartext check of the interpolant itself.
        let worst = (0..2001)
            .map(|i| {
                let t = i as f64 / 1000.0 - 1.0;
                (chebyshev_value(&plan.cheb, t) - (std::f64::consts::TAU * b * t / 16.0).cos()).abs()
            })
            .fold(0.0, f64::max);
        eprintln!("interpolant error {worst:.3e}");
        assert!(worst < 1e-12);
    }
}

#[cfg(test)]
mod plan_tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::params::CkksParams;

    /// The production plan: 4 + 3 maps of 16/31/31/15 and 63/63/32 diagonals, 22 rotation
    /// steps shared by the two transforms, 48 keys, each at the highest level it serves; with
    /// double hoisting 50.
    #[test]
    fn production_plan_shares_rotation_keys_between_its_two_transforms() {
        let p = CkksParams {
            levels: 8,
            log_scale: 40,
            first_modulus_bits: 48,
            digits: 6,
            bootstrap: Some(BootstrapParams::default()),
            ..CkksParams::default()
        };
        let ctx = Context::new(&p).unwrap();
        let plan = BootPlan::new(&ctx).unwrap();
        let diags = |maps: &[TransformPlan]| -> Vec<usize> {
            maps.iter().map(|t| t.giants.iter().map(|(_, g)| g.len()).sum()).collect()
        };
        assert_eq!(diags(&plan.cts), [16, 31, 31, 15]);
        assert_eq!(diags(&plan.stc), [63, 63, 32]);
        let cts: BTreeSet<i64> = plan.cts.iter().flat_map(|t| t.steps()).collect();
        let stc: BTreeSet<i64> = plan.stc.iter().flat_map(|t| t.steps()).collect();
        assert_eq!((cts.len(), stc.len(), cts.intersection(&stc).count()), (32, 38, 22));
        let keys = plan.rotations();
        assert_eq!(keys.len(), 48);
        assert!(plan.cts.iter().chain(&plan.stc).all(|t| !t.double_hoisted));
        // Double-hoisted CoeffsToSlots: more babies (a baby costs about a fifth of a giant
        // there), 4 more steps, 2 more keys with full slots.
        let mut dh = p.clone();
        dh.bootstrap.as_mut().unwrap().double_hoisting = true;
        let plan_dh = BootPlan::new(&Context::new(&dh).unwrap()).unwrap();
        let cts_dh: BTreeSet<i64> = plan_dh.cts.iter().flat_map(|t| t.steps()).collect();
        assert_eq!(cts_dh.len(), 36);
        assert_eq!(plan_dh.rotations().len(), 50);
        assert!(plan_dh.cts.iter().all(|t| t.double_hoisted) && plan_dh.stc.iter().all(|t| !t.double_hoisted));
        assert!(keys.values().all(|&l| l <= plan.top && l > plan.stc_level - plan.params.stc_levels));
        assert_eq!(plan.out_level, 8);
    }
}
