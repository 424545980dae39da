//! Planning: levels, bootstraps, rotation keys and cost of a compiled program on a backend.

use std::collections::{BTreeMap, BTreeSet};

use peregrine_backend::{Capabilities, ChainRequest, KeyRequest};
use serde::Serialize;

use crate::compile::{Program, Step, StepKind, TensorId, TensorInfo};
use crate::OpsError;

/// Operation counts and resources of one inference.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    /// Rotations (key switches for Galois keys).
    pub rotations: usize,
    /// Relinearisations (ciphertext × ciphertext products).
    pub ct_ct_mults: usize,
    /// Key switches in all (rotations + relinearisations).
    pub key_switches: usize,
    /// Ciphertext × plaintext products.
    pub ct_pt_mults: usize,
    /// Rescales.
    pub rescales: usize,
    /// Bootstrapped ciphertexts.
    pub bootstraps: usize,
    /// Levels consumed from a fresh ciphertext to the output (without bootstrapping: the depth).
    pub levels_consumed: usize,
    /// Most ciphertexts alive at once.
    pub peak_live_ciphertexts: usize,
    /// Distinct rotation keys.
    pub rotation_keys: usize,
    /// Estimated evaluation-key memory in bytes (hybrid key switching, dnum 3, at full level).
    pub key_bytes_estimate: u64,
    /// Bytes the program's plaintext diagonals take in their compact form (each is expanded to
    /// one plaintext only while its product runs).
    pub diagonal_bytes: u64,
    /// Estimated work of one inference in the backend's cost units (see
    /// [`peregrine_backend::OpCosts`]; `None` when the backend reports no cost model).
    pub estimated_units: Option<f64>,
    /// Of it, the bootstraps.
    pub bootstrap_units: Option<f64>,
    /// The estimate in seconds on this machine (one thread), when the backend measured its unit.
    pub estimated_seconds: Option<f64>,
}

impl Cost {
    /// What plans are compared by: the estimated work when there is a cost model, else the
    /// bootstrapped ciphertexts, then the key switches.
    fn rank(&self) -> (f64, f64) {
        match self.estimated_units {
            Some(u) => (u, 0.0),
            None => (self.bootstraps as f64, self.key_switches as f64),
        }
    }

    /// Whether this plan is cheaper than `other` (see [`Cost::rank`]).
    pub fn cheaper_than(&self, other: &Cost) -> bool {
        self.rank() < other.rank()
    }
}

/// Per-step planning record.
#[derive(Clone, Debug, Serialize)]
pub struct StepPlan {
    /// Step name.
    pub name: String,
    /// `linear`, `poly` or `bootstrap`.
    pub kind: &'static str,
    /// IR nodes fused in it.
    pub nodes: Vec<String>,
    /// Level of the result.
    pub level: usize,
    /// Levels it consumes.
    pub levels_used: usize,
    /// Rotations it performs.
    pub rotations: usize,
    /// Ciphertext × plaintext products.
    pub ct_pt_mults: usize,
    /// Output ciphertexts.
    pub ciphertexts: usize,
    /// Output packing.
    pub packing: String,
    /// Estimated work in the backend's cost units (`None` without a cost model).
    pub units: Option<f64>,
}

/// A program with levels assigned, bootstraps placed, keys listed and cost counted.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The program (with bootstrap steps inserted).
    pub program: Program,
    /// Level of each tensor.
    pub levels: Vec<usize>,
    /// Per-step records.
    pub steps: Vec<StepPlan>,
    /// Rotation keys to generate.
    pub rotation_keys: BTreeSet<i64>,
    /// Rotations performed as a sequence of keyed rotations (set by [`with_key_budget`]);
    /// steps not listed are keyed directly.
    pub rotation_paths: BTreeMap<i64, Vec<i64>>,
    /// How often each rotation step is used in one inference.
    pub rotation_uses: BTreeMap<i64, usize>,
    /// The highest level at which each rotation key is used (keys can be generated for it).
    pub rotation_levels: BTreeMap<i64, usize>,
    /// Totals.
    pub cost: Cost,
    /// Squares left unrescaled at Δ² for their consumers to rescale ("tower reuse").
    pub lazy_squares: usize,
    /// For each level where something is rescaled: log2 of the largest scale divided by q_ℓ
    /// there (log2 Δ for one product at Δ, 2·log2 Δ where a lazy square's consumer rescales).
    pub rescale_log_scales: BTreeMap<usize, f64>,
    /// The range each bootstrap's input is known to stay within, by the bootstrap step's
    /// output tensor (set from calibration images by the runtime; a bootstrap not listed
    /// uses [`Capabilities::bootstrap_range`]).
    pub bootstrap_ranges: BTreeMap<TensorId, f64>,
    /// Capabilities planned for.
    pub capabilities: Capabilities,
}

impl Plan {
    /// The key request for the client.
    pub fn key_request(&self) -> KeyRequest {
        let rotation_levels = if self.cost.bootstraps == 0 {
            self.rotation_keys.iter().filter_map(|k| Some((*k, *self.rotation_levels.get(k)?))).collect()
        } else {
            // Bootstrapping uses keys at levels of its own: every key at the top.
            BTreeMap::new()
        };
        KeyRequest { rotations: self.rotation_keys.clone(), bootstrap: self.cost.bootstraps > 0, rotation_levels }
    }
}

/// Levels a polynomial of degree `d` consumes with per-slot coefficients: ⌈log2 d⌉ + 1.
pub fn poly_levels(d: usize) -> usize {
    peregrine_backend::poly_depth(d)
}

fn step_needs(step: &Step) -> usize {
    match &step.kind {
        StepKind::Linear { plan, .. } => usize::from(plan.consumes_level()),
        StepKind::Poly { degree, .. } => poly_levels(*degree),
        StepKind::Square { lazy, .. } => usize::from(!lazy),
        StepKind::Product { .. } => 1,
        StepKind::Folded { degree, .. } => ceil_log2(*degree),
        StepKind::Bootstrap { .. } | StepKind::Reduce { .. } => 0,
    }
}

/// Rotations of a rotate-and-sum step: `(count, steps)`.
pub fn reduce_rotations(groups: usize, passes: &[(usize, i64)], slots: usize) -> (usize, BTreeSet<i64>) {
    let mut n = 0;
    let mut keys = BTreeSet::new();
    for &(count, stride) in passes {
        for (step, _) in peregrine_gip::Layout::rotate_and_sum_steps(count, stride) {
            let r = step.rem_euclid(slots as i64);
            if r != 0 {
                n += 1;
                keys.insert(r);
            }
        }
    }
    (n * groups, keys)
}

/// ⌈log2 d⌉.
pub fn ceil_log2(d: usize) -> usize {
    if d <= 1 {
        0
    } else {
        (usize::BITS - (d - 1).leading_zeros()) as usize
    }
}

/// Levels a program consumes from input to output without bootstrapping (what a leveled
/// backend's parameters must provide).
pub fn required_levels(program: &Program) -> usize {
    depth(program)[program.output]
}

/// Depth of the program with unlimited levels.
fn depth(program: &Program) -> Vec<usize> {
    let mut d = vec![0usize; program.tensors.len()];
    for s in &program.steps {
        let inp = s.inputs().iter().map(|t| d[*t]).max().unwrap_or(0);
        d[s.output] = inp + step_needs(s);
    }
    d
}

/// Plans `program` for a backend with capabilities `caps`.
///
/// Bootstraps are first placed just in time (as late as possible, which minimises their
/// number along a chain); then each one is tried at the ancestors along its producer chain
/// with fewer ciphertexts, and kept there if the plan gets cheaper: by the backend's cost model
/// when it has one ([`Capabilities::costs`]: fewer bootstraps against the steps that then run
/// at higher, dearer levels), else by the bootstrapped ciphertexts, then the key switches.
pub fn plan(program: Program, caps: &Capabilities) -> Result<Plan, OpsError> {
    // Tower reuse where the chain allows it; without, if a consumer's prime cannot absorb.
    let mut best = match plan_with(program.clone(), caps, &BTreeSet::new(), true) {
        Err(OpsError::TowerMismatch { .. }) => plan_with(program.clone(), caps, &BTreeSet::new(), false)?,
        other => other?,
    };
    if best.cost.bootstraps == 0 {
        return Ok(best);
    }
    // Producer step of every original tensor.
    let mut producer: Vec<Option<usize>> = vec![None; program.tensors.len()];
    for (i, s) in program.steps.iter().enumerate() {
        producer[s.output] = Some(i);
    }
    let mut forced: BTreeSet<TensorId> = BTreeSet::new();
    let original = program.tensors.len();
    loop {
        let mut improved = false;
        let boot_inputs: Vec<TensorId> = best
            .program
            .steps
            .iter()
            .filter_map(|s| match s.kind {
                StepKind::Bootstrap { input } if input < original => Some(input),
                _ => None,
            })
            .collect();
        for t in boot_inputs {
            // Walk back through single-input producers, collecting cheaper ancestors.
            let mut candidates = Vec::new();
            let mut cur = t;
            for _ in 0..16 {
                let Some(si) = producer[cur] else { break };
                let ins = program.steps[si].inputs();
                if ins.len() != 1 || ins[0] == 0 {
                    break;
                }
                cur = ins[0];
                if program.tensors[cur].ciphertexts < program.tensors[t].ciphertexts {
                    candidates.push(cur);
                }
            }
            candidates.sort_by_key(|c| program.tensors[*c].ciphertexts);
            for c in candidates {
                let mut f = forced.clone();
                f.insert(c);
                if let Ok(p) = plan_with(program.clone(), caps, &f, false) {
                    if p.cost.cheaper_than(&best.cost) {
                        best = p;
                        forced = f;
                        improved = true;
                        break;
                    }
                }
            }
        }
        if !improved {
            return Ok(best);
        }
    }
}

/// Appends a bootstrap of tensor `t` to `steps`, to `level`; every later reference to `t`
/// (through `current`) now means the bootstrapped tensor, which is returned.
fn insert_bootstrap(
    program: &mut Program,
    levels: &mut Vec<usize>,
    current: &mut Vec<TensorId>,
    steps: &mut Vec<Step>,
    t: TensorId,
    level: usize,
) -> TensorId {
    let info: TensorInfo = program.tensors[t].clone();
    let name = format!("bootstrap({})", info.name);
    program.tensors.push(TensorInfo { name: format!("{}@bootstrap", info.name), ..info });
    let nt = program.tensors.len() - 1;
    levels.push(level);
    current.push(nt);
    for c in current.iter_mut() {
        if *c == t {
            *c = nt;
        }
    }
    steps.push(Step { name, nodes: vec![], kind: StepKind::Bootstrap { input: t }, output: nt });
    nt
}

/// The smallest plaintext scale (bits) a tower-reuse product may use: below it, encoding's
/// rounding (≈ √(N/12) per slot) leaves the weights too few bits. A uniform chain (primes
/// ≈ Δ) never reaches it, so there squares keep their own rescale.
pub const MIN_PLAINTEXT_BITS: f64 = 10.0;

/// Squares that may be left unrescaled: every consumer is a linear step that multiplies (and
/// so rescales), or a rotate-and-sum whose consumers are (it does not touch the scale); none
/// is the program's output. Keyed by the square's input (the tensor its producer writes).
fn lazy_candidates(program: &Program) -> BTreeSet<TensorId> {
    let mut consumers: Vec<Vec<&Step>> = vec![Vec::new(); program.tensors.len()];
    for s in &program.steps {
        for t in s.inputs() {
            consumers[t].push(s);
        }
    }
    fn absorbed(t: TensorId, program: &Program, consumers: &[Vec<&Step>]) -> bool {
        t != program.output
            && consumers[t].iter().all(|s| match &s.kind {
                StepKind::Linear { plan, .. } => plan.consumes_level(),
                StepKind::Reduce { .. } => absorbed(s.output, program, consumers),
                _ => false,
            })
    }
    program
        .steps
        .iter()
        .filter_map(|s| match s.kind {
            StepKind::Square { input, .. } if absorbed(s.output, program, &consumers) => Some(input),
            _ => None,
        })
        .collect()
}

/// Plans with bootstraps forced right after the tensors in `forced`, the rest just in time;
/// with `tower`, squares whose consumers' prime can absorb them are left unrescaled.
fn plan_with(
    mut program: Program,
    caps: &Capabilities,
    forced: &BTreeSet<TensorId>,
    tower: bool,
) -> Result<Plan, OpsError> {
    if caps.slots != program.slots {
        return Err(OpsError::SlotMismatch { program: program.slots, backend: caps.slots });
    }
    let top = caps.max_level;
    let mut levels = vec![0usize; program.tensors.len()];
    levels[0] = top;
    let log_delta = caps.log_scale;
    // log2 of each tensor's scale, the squares' inputs chosen for tower reuse, the largest
    // scale rescaled at each level.
    let mut log_scales = vec![log_delta; program.tensors.len()];
    let candidates = if tower && !caps.can_bootstrap { lazy_candidates(&program) } else { BTreeSet::new() };
    let mut lazy_inputs: BTreeSet<TensorId> = BTreeSet::new();
    let mut rescaled: BTreeMap<usize, f64> = BTreeMap::new();
    // q_level can rescale a product of an input at 2^log_scale back to Δ if the plaintext scale
    // that takes, Δ·q/2^log_scale, keeps the weights to MIN_PLAINTEXT_BITS bits.
    let absorbs = |level: usize, log_scale: f64| {
        caps.log_moduli.get(level).is_some_and(|&q| q + log_delta - log_scale >= MIN_PLAINTEXT_BITS)
    };
    // current[t] = the tensor that holds t's latest (possibly bootstrapped) version.
    let mut current: Vec<TensorId> = (0..program.tensors.len()).collect();
    let mut steps_out: Vec<Step> = Vec::new();
    let old_steps = std::mem::take(&mut program.steps);
    let full_depth = depth(&Program { steps: old_steps.clone(), ..program.clone() });
    for mut step in old_steps {
        // A linear step feeding a square that may stay unrescaled: it is, if the prime its
        // consumers will rescale by (at the square's level) holds two products at Δ.
        if let StepKind::Linear { inputs, plan: dp, power } = &mut step.kind {
            if *power == 2 && candidates.contains(&step.output) {
                let rot_min = dp
                    .outputs
                    .iter()
                    .flat_map(|o| o.giants.iter().flat_map(|g| g.terms.iter().map(|t| t.input)))
                    .map(|i| levels[current[inputs[i]]])
                    .min();
                if let Some(l) = rot_min.filter(|&l| l >= 1) {
                    if absorbs(l - 1, 2.0 * log_delta) {
                        *power = 1;
                        lazy_inputs.insert(step.output);
                    }
                }
            }
        }
        // A linear step that prepares the input of a square / folded polynomial must leave that
        // consumer enough levels: no bootstrap may sit between them (it would reset the scale).
        let powered = match &step.kind {
            StepKind::Linear { power, .. } if *power > 1 => ceil_log2(*power),
            _ => 0,
        };
        // A sum (global pooling's rotate-and-sum, before its 1/(H·W)) is only formed with a
        // level to spare when bootstrapping: its consumer multiplies, so at level 0 it would be
        // bootstrapped as a sum, H·W times beyond its mean's range; with a spare level a
        // bootstrap divides it first (`exec::range_divisor`), and at level 0 the pooled input is
        // bootstrapped instead.
        let need = match step.kind {
            StepKind::Reduce { .. } if caps.can_bootstrap => 1,
            _ => step_needs(&step) + powered,
        };
        // Rewire inputs to their latest versions.
        match &mut step.kind {
            StepKind::Linear { inputs, .. } => inputs.iter_mut().for_each(|t| *t = current[*t]),
            StepKind::Product { inputs } => inputs.iter_mut().for_each(|t| *t = current[*t]),
            StepKind::Poly { input, .. }
            | StepKind::Bootstrap { input }
            | StepKind::Reduce { input, .. }
            | StepKind::Square { input, .. }
            | StepKind::Folded { input, .. } => *input = current[*input],
        }
        let rotating: Vec<TensorId> = match &step.kind {
            StepKind::Linear { inputs, plan, .. } => {
                let mut r: BTreeSet<usize> = BTreeSet::new();
                for o in &plan.outputs {
                    for g in &o.giants {
                        for t in &g.terms {
                            r.insert(t.input);
                        }
                    }
                }
                r.into_iter().map(|i| inputs[i]).collect()
            }
            _ => step.inputs(),
        };
        for t in rotating {
            if levels[t] < need {
                if !caps.can_bootstrap {
                    return Err(OpsError::LevelsExhausted {
                        needed: full_depth.iter().copied().max().unwrap_or(0),
                        available: top,
                        step: step.name.clone(),
                    });
                }
                let out_level = caps.bootstrap_level.unwrap_or(0);
                if out_level < need {
                    return Err(OpsError::LevelsExhausted {
                        needed: need,
                        available: out_level,
                        step: step.name.clone(),
                    });
                }
                let nt = insert_bootstrap(&mut program, &mut levels, &mut current, &mut steps_out, t, out_level);
                match &mut step.kind {
                    StepKind::Linear { inputs, .. } => inputs.iter_mut().for_each(|x| {
                        if *x == t {
                            *x = nt
                        }
                    }),
                    StepKind::Product { inputs } => inputs.iter_mut().for_each(|x| {
                        if *x == t {
                            *x = nt
                        }
                    }),
                    StepKind::Poly { input, .. }
                    | StepKind::Bootstrap { input }
                    | StepKind::Reduce { input, .. }
                    | StepKind::Square { input, .. }
                    | StepKind::Folded { input, .. } => *input = nt,
                }
            }
        }
        let out_level = match &mut step.kind {
            StepKind::Linear { inputs, plan, .. } => {
                let mut rot = BTreeSet::new();
                let mut pass = BTreeSet::new();
                for o in &plan.outputs {
                    for g in &o.giants {
                        for t in &g.terms {
                            rot.insert(t.input);
                        }
                    }
                    for (i, _) in &o.passthrough {
                        pass.insert(*i);
                    }
                }
                let r = rot.iter().map(|i| levels[inputs[*i]] - 1).min();
                let p = pass.iter().map(|i| levels[inputs[*i]]).min();
                match (r, p) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => inputs.iter().map(|t| levels[*t]).min().unwrap_or(top),
                }
            }
            StepKind::Square { input, lazy, .. } => {
                if lazy_inputs.contains(input) {
                    *lazy = true;
                    levels[*input]
                } else {
                    levels[*input] - need
                }
            }
            StepKind::Poly { input, .. } | StepKind::Folded { input, .. } => levels[*input] - need,
            StepKind::Product { inputs } => levels[inputs[0]].min(levels[inputs[1]]) - need,
            StepKind::Bootstrap { .. } => caps.bootstrap_level.unwrap_or(0),
            StepKind::Reduce { input, .. } => levels[*input],
        };
        levels[step.output] = out_level;
        // Scales: what each step leaves, and what each rescale divides (bootstrapped tensors,
        // appended, are at Δ).
        log_scales.resize(program.tensors.len().max(log_scales.len()), log_delta);
        let out_scale = match &step.kind {
            StepKind::Linear { inputs, plan: dp, .. } => {
                let biggest = inputs.iter().map(|t| log_scales[*t]).fold(f64::MIN, f64::max);
                if dp.consumes_level() {
                    let op = out_level + 1;
                    if biggest > log_delta + 0.5 {
                        if !absorbs(op, biggest) {
                            return Err(OpsError::TowerMismatch {
                                step: step.name.clone(),
                                detail: format!(
                                    "an input at scale 2^{biggest:.0} is rescaled by q_{op} of {:.0} bits",
                                    caps.log_moduli.get(op).copied().unwrap_or(0.0)
                                ),
                            });
                        }
                        // Inputs added unmultiplied join the products before the rescale.
                        for o in &dp.outputs {
                            for (i, _) in &o.passthrough {
                                let t = inputs[*i];
                                if log_scales[t] > log_delta + 0.5 && levels[t] < op {
                                    return Err(OpsError::TowerMismatch {
                                        step: step.name.clone(),
                                        detail: format!(
                                            "an input added at level {} is below the rescale at {op}",
                                            levels[t]
                                        ),
                                    });
                                }
                            }
                        }
                    }
                    let e = rescaled.entry(op).or_insert(f64::MIN);
                    *e = e.max(biggest);
                    log_delta
                } else {
                    biggest
                }
            }
            StepKind::Square { input, lazy, .. } => {
                if *lazy {
                    2.0 * log_scales[*input]
                } else {
                    let e = rescaled.entry(levels[*input]).or_insert(f64::MIN);
                    *e = e.max(log_delta);
                    log_delta
                }
            }
            StepKind::Poly { input, .. } | StepKind::Folded { input, .. } => {
                for l in out_level + 1..=levels[*input] {
                    let e = rescaled.entry(l).or_insert(f64::MIN);
                    *e = e.max(log_delta);
                }
                log_delta
            }
            StepKind::Product { inputs } => {
                if inputs.iter().any(|t| log_scales[*t] > log_delta + 0.5) {
                    return Err(OpsError::TowerMismatch {
                        step: step.name.clone(),
                        detail: "a product of two ciphertexts needs both at the default scale".into(),
                    });
                }
                let e = rescaled.entry(out_level + 1).or_insert(f64::MIN);
                *e = e.max(log_delta);
                log_delta
            }
            StepKind::Reduce { input, .. } => log_scales[*input],
            StepKind::Bootstrap { .. } => log_delta,
        };
        log_scales[step.output] = out_scale;
        let produced = step.output;
        steps_out.push(step);
        if forced.contains(&produced)
            && powered == 0
            && caps.can_bootstrap
            && out_level < caps.bootstrap_level.unwrap_or(0)
        {
            insert_bootstrap(
                &mut program,
                &mut levels,
                &mut current,
                &mut steps_out,
                produced,
                caps.bootstrap_level.unwrap_or(0),
            );
        }
    }
    program.steps = steps_out;
    let (steps, cost, uses, rotation_levels) = account(&program, &levels, caps);
    Ok(Plan {
        program,
        levels,
        steps,
        rotation_keys: uses.keys().copied().collect(),
        rotation_paths: BTreeMap::new(),
        rotation_uses: uses,
        rotation_levels,
        cost,
        lazy_squares: lazy_inputs.len(),
        rescale_log_scales: rescaled,
        bootstrap_ranges: BTreeMap::new(),
        capabilities: caps.clone(),
    })
}

type Accounting = (Vec<StepPlan>, Cost, BTreeMap<i64, usize>, BTreeMap<i64, usize>);

fn account(program: &Program, levels: &[usize], caps: &Capabilities) -> Accounting {
    let mut cost = Cost::default();
    let mut uses: BTreeMap<i64, usize> = BTreeMap::new();
    let mut at_level: BTreeMap<i64, usize> = BTreeMap::new();
    let mut records = Vec::new();
    let model = caps.costs.as_ref();
    let (mut total_units, mut boot_units) = (0.0, 0.0);
    for s in &program.steps {
        let out = &program.tensors[s.output];
        let (mut rot, mut ptm) = (0, 0);
        let inputs = s.inputs();
        let lin = levels[inputs[0]].saturating_sub(levels[s.output]);
        let level_in = levels[inputs[0]];
        let before = (cost.ct_ct_mults, cost.rescales);
        let mut used = |step: i64, n: usize| {
            *uses.entry(step).or_default() += n;
            let l = at_level.entry(step).or_default();
            *l = (*l).max(level_in);
        };
        match &s.kind {
            StepKind::Linear { plan, .. } => {
                rot = plan.rotation_count();
                ptm = plan.plaintext_mults();
                cost.diagonal_bytes += plan.diagonal_bytes() as u64;
                for b in plan.babies.values().flatten() {
                    used(*b, 1);
                }
                for g in plan.outputs.iter().flat_map(|o| o.giants.iter()).filter(|g| g.step != 0) {
                    used(g.step, 1);
                }
                if plan.consumes_level() {
                    cost.rescales += plan.outputs.iter().filter(|o| !o.giants.is_empty()).count();
                }
            }
            StepKind::Poly { degree, coeffs, .. } => {
                let cts = coeffs.len();
                let d = *degree;
                cost.ct_ct_mults += cts * d.saturating_sub(1);
                let terms: usize = coeffs.iter().map(|c| c.iter().skip(1).filter(|v| !v.is_empty()).count()).sum();
                ptm = terms;
                cost.rescales += cts * d.saturating_sub(1) + terms;
            }
            StepKind::Bootstrap { .. } => cost.bootstraps += out.ciphertexts,
            StepKind::Product { .. } => {
                cost.ct_ct_mults += out.ciphertexts;
                cost.rescales += out.ciphertexts;
            }
            StepKind::Square { offset, lazy, .. } => {
                cost.ct_ct_mults += offset.len();
                if !lazy {
                    cost.rescales += offset.len();
                }
            }
            StepKind::Folded { degree, coeffs, .. } => {
                let d = *degree;
                let powers = crate::exec::needed_powers(d).len().saturating_sub(1);
                for per_ct in coeffs {
                    let terms: Vec<usize> = (1..d).filter(|k| !per_ct[*k].is_empty()).collect();
                    let relins = powers + terms.iter().map(|k| (k - 1).count_ones() as usize).sum::<usize>();
                    cost.ct_ct_mults += relins;
                    ptm += terms.len();
                    cost.rescales += relins + terms.len();
                }
            }
            StepKind::Reduce { groups, passes, .. } => {
                let (n, k) = reduce_rotations(groups.len(), passes, program.slots);
                rot = n;
                for step in k {
                    used(step, groups.len());
                }
            }
        }
        cost.rotations += rot;
        cost.ct_pt_mults += ptm;
        let units = model.map(|m| {
            let relins = (cost.ct_ct_mults - before.0) as f64;
            let rescales = (cost.rescales - before.1) as f64;
            // Products run one level below the input on average in polynomials; linear steps
            // and key switches at the input's level.
            let rotations = match &s.kind {
                StepKind::Linear { plan, .. } => {
                    // Baby rotations are hoisted per input ciphertext; giant ones are full key
                    // switches.
                    let babies: usize = plan.babies.values().map(BTreeSet::len).sum();
                    // One decomposition per rotated input ciphertext.
                    let decomposed = plan.babies.values().filter(|b| !b.is_empty()).count() as f64;
                    let giants = rot.saturating_sub(babies) as f64;
                    babies as f64 * m.hoisted_rotation_at(level_in)
                        + decomposed * (m.key_switch_at(level_in) - m.hoisted_rotation_at(level_in))
                        + giants * m.key_switch_at(level_in)
                }
                _ => rot as f64 * m.key_switch_at(level_in),
            };
            let at = level_in.saturating_sub(1);
            let u = match &s.kind {
                StepKind::Bootstrap { .. } => out.ciphertexts as f64 * m.bootstrap,
                _ => {
                    rotations
                        + relins * m.ct_ct_at(at)
                        + ptm as f64 * m.ct_pt_at(level_in)
                        + rescales * m.rescale_at(level_in.max(1))
                }
            };
            if matches!(s.kind, StepKind::Bootstrap { .. }) {
                boot_units += u;
            }
            total_units += u;
            u
        });
        records.push(StepPlan {
            name: s.name.clone(),
            kind: s.kind_name(),
            nodes: s.nodes.clone(),
            level: levels[s.output],
            levels_used: lin,
            rotations: rot,
            ct_pt_mults: ptm,
            ciphertexts: out.ciphertexts,
            packing: out.packing.clone(),
            units,
        });
    }
    cost.key_switches = cost.rotations + cost.ct_ct_mults;
    if let Some(m) = model {
        cost.estimated_units = Some(total_units);
        cost.bootstrap_units = Some(boot_units);
        cost.estimated_seconds = m.seconds(total_units);
    }
    cost.levels_consumed =
        if cost.bootstraps == 0 { caps.max_level - levels[program.output] } else { depth(program)[program.output] };
    // Liveness: a tensor lives from its step to its last use.
    let mut last_use = vec![0usize; program.tensors.len()];
    for (i, s) in program.steps.iter().enumerate() {
        for t in s.inputs() {
            last_use[t] = i;
        }
    }
    last_use[program.output] = program.steps.len();
    let mut live = program.tensors[0].ciphertexts;
    let mut peak = live;
    for (i, s) in program.steps.iter().enumerate() {
        live += program.tensors[s.output].ciphertexts;
        peak = peak.max(live);
        for t in s.inputs() {
            if last_use[t] == i {
                live -= program.tensors[t].ciphertexts;
            }
        }
    }
    cost.peak_live_ciphertexts = peak;
    cost.rotation_keys = uses.len();
    let l1 = caps.log_moduli.len() as u64;
    let dnum = 3u64;
    let alpha = l1.div_ceil(dnum);
    let per_key = 2 * dnum * caps.ring_dimension as u64 * (l1 + alpha) * 8;
    cost.key_bytes_estimate = per_key * (uses.len() as u64 + 1);
    (records, cost, uses, at_level)
}

/// Bytes of one key-switching key for these capabilities (hybrid key switching, dnum 3).
fn key_bytes(caps: &Capabilities) -> u64 {
    let l1 = caps.log_moduli.len() as u64;
    let dnum = 3u64;
    2 * dnum * caps.ring_dimension as u64 * (l1 + l1.div_ceil(dnum)) * 8
}

/// Shortest signed-binary (non-adjacent form) decomposition of a left rotation by `r` into
/// rotations by ±2^i, normalised into `0..slots`.
pub fn signed_binary_path(r: i64, slots: usize) -> Vec<i64> {
    let s = slots as i64;
    let naf = |mut v: i64| -> Vec<i64> {
        let mut out = Vec::new();
        let mut bit = 1i64;
        while v != 0 {
            if v & 1 != 0 {
                let d = 2 - (v.rem_euclid(4));
                out.push(d * bit);
                v -= d;
            }
            v /= 2;
            bit *= 2;
        }
        out
    };
    let r = r.rem_euclid(s);
    let (a, b) = (naf(r), naf(r - s));
    let best = if b.len() < a.len() { b } else { a };
    best.into_iter().map(|x| x.rem_euclid(s)).collect()
}

/// Relative cost of one key switch at `level` under hybrid key switching: digits (about ten
/// primes each) × limbs of Q·P (about eight special primes), so a low-level switch still
/// costs a fair share of a high-level one.
fn switch_cost(level: usize) -> f64 {
    ((level + 9) * ((level + 10) / 10)) as f64
}

/// Keys and composition paths for every needed step: `(keys, paths)`.
type KeyScheme = (BTreeSet<i64>, BTreeMap<i64, Vec<i64>>);

/// The ±2^i scheme: every step that is not keyed is composed along its signed-binary path,
/// so the ±2^i keys those paths use are kept; the rest of the budget keys the steps whose
/// composition would cost most (uses × extra hops × cost at their level), repeatedly, as
/// keyed steps free ±2^i keys no other path needs. `None` if the paths alone exceed the budget.
fn binary_scheme(plan: &Plan, max_keys: usize) -> Option<KeyScheme> {
    let slots = plan.program.slots;
    let path_of: BTreeMap<i64, Vec<i64>> =
        plan.rotation_uses.keys().map(|&s| (s, signed_binary_path(s, slots))).collect();
    let saving = |s: &i64| {
        let level = plan.rotation_levels.get(s).copied().unwrap_or(plan.capabilities.max_level);
        let hops = path_of[s].len().saturating_sub(1);
        plan.rotation_uses[s] as f64 * hops as f64 * switch_cost(level)
    };
    let mut by_saving: Vec<i64> = plan.rotation_uses.keys().copied().filter(|s| path_of[s].len() > 1).collect();
    by_saving.sort_by(|a, b| saving(b).total_cmp(&saving(a)).then(a.cmp(b)));
    let mut direct: BTreeSet<i64> = plan.rotation_uses.keys().copied().filter(|s| path_of[s].len() == 1).collect();
    loop {
        let base: BTreeSet<i64> =
            path_of.iter().filter(|(s, _)| !direct.contains(s)).flat_map(|(_, p)| p.iter().copied()).collect();
        let keys: BTreeSet<i64> = base.union(&direct).copied().collect();
        if keys.len() > max_keys {
            return None;
        }
        match by_saving.iter().position(|s| !direct.contains(s)) {
            Some(i) if keys.len() < max_keys => {
                direct.insert(by_saving[i]);
            }
            _ => {
                let paths = path_of.into_iter().filter(|(s, _)| !keys.contains(s)).collect();
                return Some((keys, paths));
            }
        }
    }
}

/// The heaviest steps (uses × key-switch cost at their level) keyed, plus `extra` generators;
/// every other step composed along a shortest path over the keyed steps (breadth-first over
/// the slot rotations). `None` if some step cannot be reached.
fn shortest_path_scheme(plan: &Plan, max_keys: usize, extra: &[i64]) -> Option<KeyScheme> {
    let slots = plan.program.slots;
    let weight = |s: &i64| {
        let level = plan.rotation_levels.get(s).copied().unwrap_or(plan.capabilities.max_level);
        plan.rotation_uses.get(s).copied().unwrap_or(0) as f64 * switch_cost(level)
    };
    let mut by_weight: Vec<i64> = plan.rotation_uses.keys().copied().collect();
    by_weight.sort_by(|a, b| weight(b).total_cmp(&weight(a)).then(a.cmp(b)));
    let mut keys: BTreeSet<i64> = extra.iter().map(|e| e.rem_euclid(slots as i64)).filter(|&e| e != 0).collect();
    if keys.len() > max_keys {
        return None;
    }
    for s in by_weight {
        if keys.len() >= max_keys {
            break;
        }
        keys.insert(s);
    }
    let gens: Vec<i64> = keys.iter().copied().collect();
    // Breadth-first search from rotation 0: `via[x]` is the last generator on a shortest path.
    let mut via = vec![u32::MAX; slots];
    via[0] = 0;
    let mut queue = std::collections::VecDeque::from([0usize]);
    while let Some(x) = queue.pop_front() {
        for (g, &k) in gens.iter().enumerate() {
            let y = (x + k as usize) % slots;
            if via[y] == u32::MAX && y != 0 {
                via[y] = g as u32;
                queue.push_back(y);
            }
        }
    }
    let mut paths = BTreeMap::new();
    for &s in plan.rotation_uses.keys() {
        if keys.contains(&s) {
            continue;
        }
        let mut x = s.rem_euclid(slots as i64) as usize;
        let mut path = Vec::new();
        while x != 0 {
            let g = *via.get(x)?;
            if g == u32::MAX {
                return None;
            }
            path.push(gens[g as usize]);
            x = (x + slots - gens[g as usize] as usize) % slots;
        }
        paths.insert(s, path);
    }
    Some((keys, paths))
}

/// Limits the rotation keys to `max_keys` and composes every other rotation from keyed ones
/// (more key switches, less key memory). Two schemes are weighed by their key-switch cost
/// (uses × path length × cost at the step's level) and the cheaper is taken: the ±2^i keys
/// plus the most used steps, with signed-binary paths; or the steps that cost most keyed
/// and shortest paths over them. Fails if neither reaches every step.
pub fn with_key_budget(mut plan: Plan, max_keys: usize) -> Result<Plan, OpsError> {
    let slots = plan.program.slots;
    if plan.rotation_uses.len() <= max_keys {
        return Ok(plan);
    }
    let scheme_cost = |(_, paths): &KeyScheme| -> f64 {
        plan.rotation_uses
            .iter()
            .map(|(s, &u)| {
                let level = plan.rotation_levels.get(s).copied().unwrap_or(plan.capabilities.max_level);
                u as f64 * paths.get(s).map_or(1, Vec::len) as f64 * switch_cost(level)
            })
            .sum()
    };
    let one = [1i64];
    let both = [1i64, -1];
    let candidates = [
        binary_scheme(&plan, max_keys),
        shortest_path_scheme(&plan, max_keys, &[]),
        shortest_path_scheme(&plan, max_keys, &one),
        shortest_path_scheme(&plan, max_keys, &both),
    ];
    let Some((keys, paths)) = candidates.into_iter().flatten().min_by(|a, b| scheme_cost(a).total_cmp(&scheme_cost(b)))
    else {
        return Err(OpsError::KeyBudget { budget: max_keys, needed: 1, slots });
    };
    let extra_switches: usize =
        paths.iter().map(|(s, p)| plan.rotation_uses.get(s).copied().unwrap_or(0) * p.len().saturating_sub(1)).sum();
    // Keep only keys that are used, directly or on a path.
    let used: BTreeSet<i64> = plan
        .rotation_uses
        .keys()
        .filter(|k| !paths.contains_key(k))
        .copied()
        .chain(paths.values().flatten().copied())
        .collect();
    plan.rotation_keys = keys.intersection(&used).copied().collect();
    // A key on a path serves the levels of every rotation composed through it.
    let mut levels = plan.rotation_levels.clone();
    for (step, path) in &paths {
        let l = plan.rotation_levels.get(step).copied().unwrap_or(plan.capabilities.max_level);
        for k in path {
            let e = levels.entry(*k).or_default();
            *e = (*e).max(l);
        }
    }
    plan.rotation_levels = levels;
    plan.rotation_paths = paths;
    plan.cost.rotations += extra_switches;
    plan.cost.key_switches += extra_switches;
    plan.cost.rotation_keys = plan.rotation_keys.len();
    plan.cost.key_bytes_estimate = key_bytes(&plan.capabilities) * (plan.rotation_keys.len() as u64 + 1);
    Ok(plan)
}

/// The modulus chain that runs `program` leveled with tower reuse, as multiples of log2 Δ per
/// level q_1 … q_L (bottom to top): the program is planned on a chain of 2·log2 Δ primes, so
/// that every square whose consumers all multiply stays unrescaled, then each prime is cut to
/// the largest scale rescaled at its level. `None` when no square can stay unrescaled (a
/// uniform chain is as short) or the program needs more than 100 levels.
pub fn propose_chain(program: &Program, caps: &Capabilities) -> Option<ChainRequest> {
    const ROOM: usize = 100;
    let log_delta = caps.log_scale;
    let mut wide = caps.clone();
    wide.can_bootstrap = false;
    wide.bootstrap_level = None;
    wide.max_level = ROOM;
    wide.log_moduli = std::iter::once(log_delta + 12.0).chain(std::iter::repeat_n(2.0 * log_delta, ROOM)).collect();
    let p = plan(program.clone(), &wide).ok()?;
    if p.lazy_squares == 0 {
        return None;
    }
    let bottom = p.levels[p.program.output];
    let level_factors = (bottom + 1..=ROOM)
        .map(|l| {
            let s = p.rescale_log_scales.get(&l).copied().unwrap_or(log_delta);
            ((s / log_delta).round() as u32).max(1)
        })
        .collect();
    // Each level's prime must also leave the plaintexts rescaled there enough bits.
    let mut need: BTreeMap<usize, u32> = BTreeMap::new();
    for s in &p.program.steps {
        if let StepKind::Linear { plan: dp, .. } = &s.kind {
            if dp.consumes_level() {
                let bits = plaintext_bits_needed(dp, p.program.slots);
                let e = need.entry(p.levels[s.output] + 1).or_default();
                *e = (*e).max(bits);
            }
        }
    }
    let min_plaintext_bits = (bottom + 1..=ROOM).map(|l| need.get(&l).copied().unwrap_or(0)).collect();
    Some(ChainRequest { level_factors, keep_ring: false, min_log_ring: 0, min_plaintext_bits })
}

/// Root mean square a plaintext's coefficients must reach, in units of the integer they are
/// rounded to: rounding then moves a diagonal by about 0.29 / 4 ≈ 7 % of itself at most, an
/// error the sum over many diagonals averages down. Below ~1 rounding is no longer noise:
/// most coefficients round to 0 and the weights vanish (the degree-2 ResNet-20 at N = 2^15
/// lost its classifier that way: max |Δlogit| 3–12 on `ckks`, 0.1–0.4 with this rule; 2 and
/// 4 measured alike, 18.5 costs a bit of Δ at that ring).
pub const MIN_COEFFICIENT_RMS: f64 = 4.0;

/// Bits of plaintext scale that keep `plan`'s diagonals through encoding: a diagonal d of
/// `slots` slots encodes to coefficients of rms Δ_pt·‖d‖₂/(√2·slots), which must reach
/// [`MIN_COEFFICIENT_RMS`]. Diagonals below 1/8 of the step's largest norm carry too little
/// of the map to size the prime for.
pub fn plaintext_bits_needed(plan: &peregrine_gip::DiagonalPlan, slots: usize) -> u32 {
    let norms: Vec<f64> = plan
        .outputs
        .iter()
        .flat_map(|o| o.giants.iter().flat_map(|g| g.terms.iter().map(|t| t.diag.norm_squared().sqrt())))
        .filter(|n| *n > 0.0)
        .collect();
    let largest = norms.iter().copied().fold(0.0, f64::max);
    // The smallest diagonal that counts sets the scale.
    let smallest = norms.iter().copied().filter(|&n| n >= largest / 8.0).fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return 0;
    }
    (MIN_COEFFICIENT_RMS * std::f64::consts::SQRT_2 * slots as f64 / smallest).log2().ceil().max(0.0) as u32
}
