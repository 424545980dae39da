//! The cost model `ckks` reports to the planner: the work of each operation at each level, in
//! number-theoretic transforms of one limb (one NTT of N coefficients = 1 unit), derived from
//! the chain and the key-switching digits; a bootstrap's cost from its own plan (the same maps,
//! baby and giant steps, and Chebyshev products it runs). The unit's seconds are measured once
//! per ring dimension and process, for display only: the planner compares units.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use peregrine_backend::OpCosts;

use crate::bootstrap::{BootPlan, TransformPlan};
use crate::context::Context;

/// One pass of multiply-accumulates over a limb (N modular products with Shoup constants),
/// in NTT units: measured 0.05–0.07 ms against 0.15 ms for an NTT at N = 2^16 (IFMA,
/// `kernel_bits`), about 0.4.
pub const PASS: f64 = 0.4;

/// Key-switching components at one level, in units.
#[derive(Clone, Copy, Debug)]
struct Switch {
    /// INTT of the input and each digit's extension to the key basis (conversion and NTT).
    mod_up: f64,
    /// Digits × key products, both parts, over the key basis.
    inner: f64,
    /// Both parts' division by P (INTT of P, conversion, NTT, subtract-and-scale).
    mod_down: f64,
}

fn switch_at(ctx: &Context, level: usize) -> Switch {
    let nq = (level + 1) as f64;
    let k = ctx.chain.p.len() as f64;
    let digits = ctx.digits_at(level);
    let mod_up = nq
        + digits
            .iter()
            .map(|g| {
                let (a, targets) = (g.len() as f64, nq + k - g.len() as f64);
                a * targets * PASS + targets
            })
            .sum::<f64>();
    let inner = 2.0 * digits.len() as f64 * (nq + k) * PASS;
    let mod_down = 2.0 * (k + k * nq * PASS + nq + nq * PASS);
    Switch { mod_up, inner, mod_down }
}

fn rescale_at(level: usize) -> f64 {
    // Both parts: the last limb's INTT, then per remaining limb an NTT and a subtract-and-scale.
    2.0 * (1.0 + level as f64 * (1.0 + PASS))
}

/// Units of one linear map of a bootstrap. Double-hoisted: baby rotations sharing one
/// decomposition, each its key product only (no ModDown); the diagonal products over Q·P; per
/// giant rotation the division of one part by P, a decomposition and a key product; one
/// ModDown of both parts. Single-hoisted: each baby also its ModDown, products over Q, giant
/// rotations a decomposition and key product each. Then one rescale.
fn transform_units(ctx: &Context, t: &TransformPlan) -> f64 {
    let l = t.level;
    let s = switch_at(ctx, l);
    let babies = t.babies.iter().filter(|&&b| b != 0).count() as f64;
    let giants = t.giants.iter().filter(|(g, _)| *g != 0).count() as f64;
    let diagonals = t.giants.iter().map(|(_, terms)| terms.len()).sum::<usize>() as f64;
    let nq = (l + 1) as f64;
    let shared = s.mod_up + s.mod_down + rescale_at(l);
    if t.double_hoisted {
        let ext = nq + ctx.chain.p.len() as f64;
        shared + babies * s.inner + diagonals * 2.0 * ext * PASS + giants * (s.mod_down / 2.0 + s.mod_up + s.inner)
    } else {
        shared + babies * (s.inner + s.mod_down) + diagonals * 2.0 * nq * PASS + giants * (s.mod_up + s.inner)
    }
}

/// Units of one EvalMod: the Chebyshev powers and their baby-step giant-step products, the
/// double angles and the arcsine's two products, each a relinearised product and a rescale,
/// priced at the level it runs at.
fn eval_mod_units(ctx: &Context, plan: &BootPlan) -> f64 {
    let product = |l: usize| {
        let s = switch_at(ctx, l);
        4.0 * (l + 1) as f64 * PASS + s.mod_up + s.inner + s.mod_down + rescale_at(l)
    };
    let d = plan.cheb.len() - 1;
    let babies = 1usize << (usize::BITS - d.leading_zeros()).div_ceil(2);
    let mut units = 0.0;
    // Powers T_2 … T_{babies−1}: T_k at level eval − ⌈log2 k⌉.
    let ceil_log2 = |k: usize| (usize::BITS - (k - 1).leading_zeros()) as usize;
    for k in 2..babies.min(d + 1) {
        units += product(plan.eval_level - ceil_log2(k) + 1);
    }
    // Giant powers T_babies, T_2·babies, … .
    let mut g = babies;
    while g <= d {
        units += product(plan.eval_level - ceil_log2(g) + 1);
        g *= 2;
    }
    // One product per split of the recursion: the number of giant blocks minus one.
    let blocks = (d + 1).div_ceil(babies);
    let cheb_out = plan.eval_level - plan.params.cosine_levels();
    units += blocks.saturating_sub(1) as f64 * product(cheb_out + 1);
    // Coefficient products: one pass per baby power per block, a rescale per block.
    units += blocks as f64 * (babies as f64 * 2.0 * (cheb_out + 2) as f64 * PASS + rescale_at(cheb_out + 1));
    for i in 0..plan.params.double_angles {
        units += product(cheb_out - i);
    }
    if plan.params.arcsine {
        let l = cheb_out - plan.params.double_angles;
        units += product(l) + product(l - 1);
    }
    units
}

/// Units of one bootstrap with `plan`: encapsulation (a key switch at level 0 and one at the
/// top), ModRaise, the trace for sparse slots, the maps, EvalMod (twice with full slots: the
/// real and imaginary halves) and the conjugation before it.
pub fn bootstrap_units(ctx: &Context, plan: &BootPlan) -> f64 {
    let top = plan.top;
    let full = |l: usize| {
        let s = switch_at(ctx, l);
        s.mod_up + s.inner + s.mod_down
    };
    let raise = 2.0 * (1.0 + (top + 1) as f64);
    let trace = plan.subsum.len() as f64 * full(top);
    let maps: f64 = plan.cts.iter().chain(&plan.stc).map(|t| transform_units(ctx, t)).sum();
    let halves = if plan.sparse { 1.0 } else { 2.0 };
    full(0) + raise + full(top) + trace + maps + full(plan.eval_level) + halves * eval_mod_units(ctx, plan)
}

/// Seconds of one unit (an NTT of one limb) at ring dimension `n`, measured once per process.
pub fn unit_seconds(ctx: &Context) -> f64 {
    static MEASURED: OnceLock<Mutex<BTreeMap<usize, f64>>> = OnceLock::new();
    let n = ctx.n();
    let table = MEASURED.get_or_init(Default::default);
    if let Some(&s) = table.lock().unwrap_or_else(|p| p.into_inner()).get(&n) {
        return s;
    }
    let mut limb: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % ctx.chain.q[0]).collect();
    let reps = (1usize << 21) / n + 4;
    ctx.ring.ntt(&mut limb, 0);
    let t = Instant::now();
    for _ in 0..reps {
        ctx.ring.ntt(&mut limb, 0);
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    std::hint::black_box(&limb);
    table.lock().unwrap_or_else(|p| p.into_inner()).insert(n, s);
    s
}

/// The cost model of `ctx`, built once per parameter set and process.
pub fn cached(ctx: &Context) -> OpCosts {
    static CACHE: OnceLock<Mutex<BTreeMap<[u8; 32], OpCosts>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&ctx.digest) {
        return c.clone();
    }
    let c = op_costs(ctx);
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(ctx.digest, c.clone());
    c
}

/// The cost model of `ctx` (see the module documentation).
pub fn op_costs(ctx: &Context) -> OpCosts {
    let levels = 0..=ctx.max_level();
    let switches: Vec<Switch> = levels.clone().map(|l| switch_at(ctx, l)).collect();
    let bootstrap = match BootPlan::new(ctx) {
        Ok(plan) if ctx.params.bootstrap.is_some() => bootstrap_units(ctx, &plan),
        _ => 0.0,
    };
    OpCosts {
        key_switch: switches.iter().map(|s| s.mod_up + s.inner + s.mod_down).collect(),
        hoisted_rotation: switches.iter().map(|s| s.inner + s.mod_down).collect(),
        tensor: levels.clone().map(|l| 4.0 * (l + 1) as f64 * PASS).collect(),
        ct_pt: levels.clone().map(|l| 2.0 * (l + 1) as f64 * PASS).collect(),
        rescale: levels.map(rescale_at).collect(),
        bootstrap,
        unit_seconds: unit_seconds(ctx),
        basis: format!(
            "ckks model: units of one NTT of one limb at N = 2^{} (a multiply-accumulate pass = {PASS} units); the unit measured on this machine",
            ctx.n().trailing_zeros()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{BootstrapParams, CkksParams};

    fn ctx(slots: usize) -> std::sync::Arc<Context> {
        let p = CkksParams {
            log_ring_dimension: 12,
            levels: 3,
            log_scale: 40,
            first_modulus_bits: 48,
            insecure_test_only: true,
            slots,
            bootstrap: Some(BootstrapParams::default()),
            ..CkksParams::default()
        };
        crate::backend::context(&p).unwrap()
    }

    /// Costs grow with the level; a hoisted rotation is cheaper than a key switch; a bootstrap
    /// costs many key switches, and fewer with sparse slots (one EvalMod, smaller maps).
    #[test]
    fn costs_grow_with_level_and_sparse_bootstraps_are_cheaper() {
        let full = op_costs(&ctx(0));
        for v in [&full.key_switch, &full.ct_pt, &full.rescale, &full.tensor] {
            assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
        }
        for l in 0..full.key_switch.len() {
            assert!(full.hoisted_rotation[l] < full.key_switch[l]);
        }
        let top = full.key_switch.len() - 1;
        assert!(full.bootstrap > 20.0 * full.key_switch_at(top), "{}", full.bootstrap);
        let sparse = op_costs(&ctx(64));
        assert!(sparse.bootstrap < full.bootstrap, "{} vs {}", sparse.bootstrap, full.bootstrap);
        assert!(full.unit_seconds > 0.0 && full.seconds(1.0).is_some());
    }
}
