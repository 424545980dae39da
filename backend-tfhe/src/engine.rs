//! Encrypted execution of a [`QuantPlan`]: the client encrypts quantised pixels, the server
//! runs weighted sums and one bootstrap per activation element (in parallel over elements),
//! the client decrypts the output accumulators.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::lwe::{Lut, Lwe, LweClient, LweError, LweResult, LweServer};
use crate::quant::{apply_table, IntSum, QuantPlan};

/// Encrypts one preprocessed image (client side).
pub fn encrypt_image(client: &LweClient, plan: &QuantPlan, x: &[f64]) -> LweResult<Vec<Lwe>> {
    check_bits(client.params(), plan)?;
    plan.quantise_input(x).into_iter().map(|q| client.encrypt(q)).collect()
}

/// Decrypts the output accumulators (client side) into real logits and the raw integers.
pub fn decrypt_logits(client: &LweClient, plan: &QuantPlan, out: &[Lwe]) -> (Vec<f64>, Vec<i64>) {
    let raw: Vec<i64> = out.iter().map(|c| client.decrypt(c)).collect();
    (plan.decode_output(&raw), raw)
}

fn check_bits(params: &crate::lwe::LweParams, plan: &QuantPlan) -> LweResult<()> {
    if params.bits != plan.config.bits || params.extra_bits != plan.config.extra_bits {
        return Err(LweError::PlanMismatch {
            plan_bits: plan.config.bits,
            plan_extra: plan.config.extra_bits,
            key_bits: params.bits,
            key_extra: params.extra_bits,
        });
    }
    Ok(())
}

/// A plan borrowed, or shared with whoever else holds it.
enum PlanRef<'a> {
    Borrowed(&'a QuantPlan),
    Shared(Arc<QuantPlan>),
}

impl std::ops::Deref for PlanRef<'_> {
    type Target = QuantPlan;
    fn deref(&self) -> &QuantPlan {
        match self {
            PlanRef::Borrowed(p) => p,
            PlanRef::Shared(p) => p,
        }
    }
}

/// The lookup tables of a plan, built once per server (one per stage and channel).
pub struct PreparedPlan<'a> {
    plan: PlanRef<'a>,
    luts: Vec<Vec<Lut>>,
}

impl PreparedPlan<'static> {
    /// [`PreparedPlan::new`] for a plan shared with others (e.g. a server that outlives the call).
    pub fn shared(server: &LweServer, plan: Arc<QuantPlan>) -> LweResult<Self> {
        let luts = Self::tables(server, &plan)?;
        Ok(PreparedPlan { plan: PlanRef::Shared(plan), luts })
    }
}

impl<'a> PreparedPlan<'a> {
    /// Builds every lookup table; refuses a plan made for another precision.
    pub fn new(server: &LweServer, plan: &'a QuantPlan) -> LweResult<Self> {
        let luts = Self::tables(server, plan)?;
        Ok(PreparedPlan { plan: PlanRef::Borrowed(plan), luts })
    }

    /// The plan.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }

    fn tables(server: &LweServer, plan: &QuantPlan) -> LweResult<Vec<Vec<Lut>>> {
        check_bits(server.params(), plan)?;
        let o = server.params().offset();
        let luts = plan
            .stages
            .iter()
            .map(|st| st.tables.iter().map(|t| server.lut(|b| t[(b + o) as usize])).collect())
            .collect();
        Ok(luts)
    }
}

/// Per-image figures of an encrypted run.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Programmable bootstraps performed.
    pub bootstraps: usize,
    /// Sums evaluated in the clear because they had no encrypted term (no bootstrap).
    pub constant_sums: usize,
    /// `(stage node, seconds)` in order, then `("output", seconds)`.
    pub stage_seconds: Vec<(String, f64)>,
}

fn sum_of(server: &LweServer, s: &IntSum, values: &[Option<Lwe>]) -> LweResult<Option<Lwe>> {
    if s.terms.is_empty() {
        return Ok(None);
    }
    let terms: Vec<(&Lwe, i64)> = s
        .terms
        .iter()
        .map(|&(src, w)| (values[src as usize].as_ref().expect("a source is freed only after its last use"), w as i64))
        .collect();
    server.weighted_sum(&terms, s.bias).map(Some)
}

/// Runs the plan on encrypted inputs (server side): returns the encrypted output accumulators.
/// `on_stage(done, total)` is called after each stage.
pub fn run(
    server: &LweServer,
    prepared: &PreparedPlan,
    inputs: Vec<Lwe>,
    on_stage: impl FnMut(usize, usize),
) -> LweResult<(Vec<Lwe>, RunReport)> {
    run_inner(server, prepared, inputs, on_stage, |_, _| {})
}

/// [`run`], handing every stage's bootstrapped outputs (in element order) to
/// `observe(stage, outputs)` before later stages consume them: how a test or a measuring client
/// checks each bootstrap against the simulation in a whole-network run.
pub fn run_observed(
    server: &LweServer,
    prepared: &PreparedPlan,
    inputs: Vec<Lwe>,
    observe: impl FnMut(usize, &[&Lwe]),
) -> LweResult<(Vec<Lwe>, RunReport)> {
    run_inner(server, prepared, inputs, |_, _| {}, observe)
}

fn run_inner(
    server: &LweServer,
    prepared: &PreparedPlan,
    inputs: Vec<Lwe>,
    mut on_stage: impl FnMut(usize, usize),
    mut observe: impl FnMut(usize, &[&Lwe]),
) -> LweResult<(Vec<Lwe>, RunReport)> {
    let plan: &QuantPlan = &prepared.plan;
    let n_in = plan.input.len() * plan.input_per_channel;
    if inputs.len() != n_in {
        return Err(LweError::InputCount { expected: n_in, got: inputs.len() });
    }
    let (bits, extra) = (plan.config.bits, plan.config.extra_bits);
    let last_use = plan.last_use();
    let mut values: Vec<Option<Lwe>> = inputs.into_iter().map(Some).collect();
    let mut report = RunReport::default();
    let total = plan.stages.len() + 1;
    for (k, st) in plan.stages.iter().enumerate() {
        let t = Instant::now();
        let luts = &prepared.luts[k];
        let outs: Vec<(Lwe, bool)> = st
            .sums
            .par_iter()
            .map(|s| {
                Ok(match sum_of(server, s, &values)? {
                    Some(acc) => (server.bootstrap(&acc, &luts[s.lut as usize]), true),
                    None => (server.constant(apply_table(&st.tables[s.lut as usize], s.bias, bits, extra)), false),
                })
            })
            .collect::<LweResult<_>>()?;
        let base = values.len();
        for (ct, boot) in outs {
            if boot {
                report.bootstraps += 1;
            } else {
                report.constant_sums += 1;
            }
            values.push(Some(ct));
        }
        observe(k, &values[base..].iter().flatten().collect::<Vec<_>>());
        // Free what no later stage reads.
        for (src, v) in values.iter_mut().enumerate().take(base) {
            if v.is_some() && last_use[src] <= k {
                *v = None;
            }
        }
        report.stage_seconds.push((st.node.clone(), t.elapsed().as_secs_f64()));
        on_stage(k + 1, total);
    }
    let t = Instant::now();
    let out = plan
        .output
        .par_iter()
        .map(|s| Ok(sum_of(server, s, &values)?.unwrap_or_else(|| server.constant(s.bias))))
        .collect::<LweResult<Vec<_>>>()?;
    report.stage_seconds.push(("output".into(), t.elapsed().as_secs_f64()));
    on_stage(total, total);
    Ok((out, report))
}

/// Timing of one stage measured on a sample of its elements.
#[derive(Clone, Debug)]
pub struct StageProbe {
    /// The activation node (or `output`).
    pub node: String,
    /// Elements (bootstraps) in the stage.
    pub elements: usize,
    /// Elements measured.
    pub sampled: usize,
    /// Seconds for the sample (sums and bootstraps, in parallel like a full run).
    pub seconds: f64,
    /// Sampled results that decrypted to a value other than the simulation's (with extra
    /// accumulator bits, a sum within noise of a box boundary may read the neighbouring box).
    pub mismatched: usize,
    /// Largest |decrypted − simulated| over the sample, in units of the stage's output encoding.
    pub max_units_off: i64,
}

impl StageProbe {
    /// Extrapolated seconds for the whole stage.
    pub fn extrapolated_seconds(&self) -> f64 {
        self.seconds * self.elements as f64 / self.sampled.max(1) as f64
    }
}

/// Measures every stage on `sample` evenly spaced elements of one image, for networks too large
/// to run whole: the sources each sampled sum reads are encrypted from the simulation (a
/// measuring device standing in for the earlier stages), the sums and bootstraps run as in
/// [`run`], and the results are decrypted and checked against the simulation.
pub fn probe(
    client: &LweClient,
    server: &LweServer,
    prepared: &PreparedPlan,
    x: &[f64],
    sample: usize,
) -> LweResult<Vec<StageProbe>> {
    let plan: &QuantPlan = &prepared.plan;
    // Simulated value of every source.
    let mut values: Vec<i64> = plan.quantise_input(x);
    let stage_outputs = plan.stage_outputs(&values);
    values.extend(stage_outputs.into_iter().flatten());
    let encrypt_value = |v: i64| -> LweResult<Lwe> {
        // Sources past the padding bit (a wrapped sum) cannot be encrypted fresh; stand in 0.
        let (lo, hi) = client.params().range();
        client.encrypt(if (lo..=hi).contains(&v) { v } else { 0 })
    };
    let mut base = plan.input.len() * plan.input_per_channel;
    let mut probes = Vec::new();
    for (k, st) in plan.stages.iter().enumerate() {
        let step = (st.sums.len() / sample.max(1)).max(1);
        let picked: Vec<usize> = (0..st.sums.len()).step_by(step).take(sample.max(1)).collect();
        let mut slots: Vec<Option<Lwe>> = vec![None; values.len()];
        for &i in &picked {
            for &(src, _) in &st.sums[i].terms {
                if slots[src as usize].is_none() {
                    slots[src as usize] = Some(encrypt_value(values[src as usize])?);
                }
            }
        }
        let t = Instant::now();
        let outs: Vec<Option<Lwe>> = picked
            .par_iter()
            .map(|&i| {
                let s = &st.sums[i];
                Ok(sum_of(server, s, &slots)?.map(|acc| server.bootstrap(&acc, &prepared.luts[k][s.lut as usize])))
            })
            .collect::<LweResult<_>>()?;
        let seconds = t.elapsed().as_secs_f64();
        let off: Vec<i64> = picked
            .iter()
            .zip(&outs)
            .filter_map(|(&i, o)| o.as_ref().map(|c| (client.decrypt(c) - values[base + i]).abs()))
            .collect();
        let mismatched = off.iter().filter(|&&d| d != 0).count();
        let max_units_off = off.iter().copied().max().unwrap_or(0);
        probes.push(StageProbe {
            node: st.node.clone(),
            elements: st.sums.len(),
            sampled: picked.len(),
            seconds,
            mismatched,
            max_units_off,
        });
        base += st.sums.len();
    }
    Ok(probes)
}
