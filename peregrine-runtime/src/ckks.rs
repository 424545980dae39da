//! CKKS-shaped backends in the runtime: any [`Scheme`] linked in, or any plugin, planned by
//! `peregrine-ops` and run through the same [`DynClient`] / [`DynServer`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use peregrine_backend::plugin::{Plugin, PluginClient, PluginServer};
use peregrine_backend::{BResult, Backend, Capabilities, ChainRequest, Client, KeyRequest, Scheme};
use peregrine_model::Model;
use peregrine_ops::{
    compile, decrypt_output, encrypt_input, execute, plan, propose_chain, required_levels, with_key_budget, Plan,
    Program, StepKind, TensorId,
};
use serde_json::json;

use crate::engine::*;
use crate::error::{Result, RuntimeError};

/// A family of CKKS clients and servers reachable at run time: a [`Scheme`] linked into this
/// program ([`Builtin`]) or a plugin library ([`Arc<Plugin>`]). Parameters arrive as JSON.
pub trait Family: Send + Sync + 'static {
    /// The client.
    type Client: Client<Backend = Self::Server> + 'static;
    /// The server.
    type Server: Backend<Ciphertext: 'static> + 'static;
    /// Name on the command line.
    fn name(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// Capabilities for `params` without keys.
    fn capabilities(&self, params: &str) -> Result<Capabilities>;
    /// Generates keys.
    fn keygen(&self, params: &str, request: &KeyRequest) -> Result<Self::Client>;
    /// A client from its saved state.
    fn load_client(&self, secret: &[u8]) -> BResult<Self::Client>;
    /// A server from serialised evaluation keys.
    fn server(&self, keys: &[u8]) -> BResult<Self::Server>;
    /// A server from an evaluation-key file.
    fn server_from_file(&self, path: &Path) -> BResult<Self::Server>;
    /// `params` resized for a leveled run of `levels` levels, if the family can do that.
    fn params_for_levels(&self, _params: &str, _levels: usize) -> Option<String> {
        None
    }
    /// `params` with only `slots` slots, if the family bootstraps sparse slots more cheaply.
    fn params_for_slots(&self, _params: &str, _slots: usize) -> Option<String> {
        None
    }
    /// `params` with the modulus chain `request` asks for, if the family builds such chains.
    fn params_for_chain(&self, _params: &str, _request: &ChainRequest) -> Option<String> {
        None
    }
    /// `params` whose bootstrap accepts values up to `range`, if the family takes a range.
    fn params_for_bootstrap_range(&self, _params: &str, _range: f64) -> Option<String> {
        None
    }
    /// `params` with each other bootstrap shape the family offers (see
    /// [`Scheme::bootstrap_alternatives`]); empty if it offers none.
    fn bootstrap_alternatives(&self, _params: &str) -> Vec<String> {
        Vec::new()
    }
}

/// The ciphertext type of a family's server.
pub type Ct<F> = <<F as Family>::Server as Backend>::Ciphertext;

/// A [`Scheme`] linked into this program, as a [`Family`].
pub struct Builtin<S>(PhantomData<fn() -> S>);

impl<S> Builtin<S> {
    /// The family of scheme `S`.
    pub fn new() -> Self {
        Builtin(PhantomData)
    }
}

impl<S> Default for Builtin<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Scheme + 'static> Builtin<S> {
    fn params(&self, json: &str) -> Result<S::Params> {
        if json.trim().is_empty() {
            return Ok(S::Params::default());
        }
        serde_json::from_str(json).map_err(|source| RuntimeError::Params { backend: S::NAME.into(), source })
    }
}

impl<S> Family for Builtin<S>
where
    S: Scheme + 'static,
    S::Client: 'static,
    S::Server: 'static,
    <S::Server as Backend>::Ciphertext: 'static,
{
    type Client = S::Client;
    type Server = S::Server;
    fn name(&self) -> &str {
        S::NAME
    }
    fn description(&self) -> &str {
        S::DESCRIPTION
    }
    fn capabilities(&self, params: &str) -> Result<Capabilities> {
        Ok(S::capabilities(&self.params(params)?)?)
    }
    fn keygen(&self, params: &str, request: &KeyRequest) -> Result<S::Client> {
        Ok(S::keygen(&self.params(params)?, request)?)
    }
    fn load_client(&self, secret: &[u8]) -> BResult<S::Client> {
        S::load_client(secret)
    }
    fn server(&self, keys: &[u8]) -> BResult<S::Server> {
        S::server(keys)
    }
    fn server_from_file(&self, path: &Path) -> BResult<S::Server> {
        S::server_from_file(path)
    }
    fn params_for_levels(&self, params: &str, levels: usize) -> Option<String> {
        let sized = S::sized_for_levels(&self.params(params).ok()?, levels)?;
        serde_json::to_string(&sized).ok()
    }
    fn params_for_slots(&self, params: &str, slots: usize) -> Option<String> {
        let sparse = S::with_slots(&self.params(params).ok()?, slots)?;
        serde_json::to_string(&sparse).ok()
    }
    fn params_for_chain(&self, params: &str, request: &ChainRequest) -> Option<String> {
        let chained = S::with_chain(&self.params(params).ok()?, request)?;
        serde_json::to_string(&chained).ok()
    }
    fn params_for_bootstrap_range(&self, params: &str, range: f64) -> Option<String> {
        let ranged = S::with_bootstrap_range(&self.params(params).ok()?, range)?;
        serde_json::to_string(&ranged).ok()
    }
    fn bootstrap_alternatives(&self, params: &str) -> Vec<String> {
        // Each shape merged into the user's own JSON (so that what they left to the planner
        // stays left to it).
        let base = if params.trim().is_empty() { Ok(json!({})) } else { serde_json::from_str(params) };
        let Ok(base) = base else { return Vec::new() };
        S::bootstrap_alternatives()
            .into_iter()
            .filter_map(|shape| {
                let mut v: serde_json::Value = base.clone();
                let b = v.as_object_mut()?.entry("bootstrap").or_insert(json!({}));
                for (k, x) in shape.as_object()? {
                    b.as_object_mut()?.insert(k.clone(), x.clone());
                }
                Some(v.to_string())
            })
            .collect()
    }
}

impl Family for Arc<Plugin> {
    type Client = PluginClient;
    type Server = PluginServer;
    fn name(&self) -> &str {
        Plugin::name(self)
    }
    fn description(&self) -> &str {
        Plugin::description(self)
    }
    fn capabilities(&self, params: &str) -> Result<Capabilities> {
        Ok(Plugin::capabilities(self, params)?)
    }
    fn keygen(&self, params: &str, request: &KeyRequest) -> Result<PluginClient> {
        Ok(Plugin::keygen(self, params, request)?)
    }
    fn load_client(&self, secret: &[u8]) -> BResult<PluginClient> {
        Plugin::load_client(self, secret)
    }
    fn server(&self, keys: &[u8]) -> BResult<PluginServer> {
        Plugin::server(self, keys)
    }
    fn server_from_file(&self, path: &Path) -> BResult<PluginServer> {
        Plugin::server_from_file(self, path)
    }
}

/// A CKKS-shaped [`Family`] as a [`RuntimeBackend`]: models are compiled and planned by
/// `peregrine-ops` for the capabilities of the parameters.
pub struct CkksBackend<F: Family>(Arc<F>);

impl<F: Family> CkksBackend<F> {
    /// The runtime backend of `family`.
    pub fn new(family: F) -> Self {
        CkksBackend(Arc::new(family))
    }
}

impl<F: Family> RuntimeBackend for CkksBackend<F> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn description(&self) -> &str {
        self.0.description()
    }
    fn default_capabilities(&self) -> Option<Result<Capabilities>> {
        Some(self.0.capabilities(""))
    }
    fn compile(&self, model: &Model, params: &str, options: &CompileOptions) -> Result<Box<dyn CompiledModel>> {
        if let Some(a) = options.activation.filter(|a| *a != "poly") {
            return Err(RuntimeError::ActivationMode(a.to_string()));
        }
        let requested = params;
        let mut programs = Programs::new(model);
        let (mut params, mut caps, mut p, precision) = self.choose(&mut programs, requested)?;
        let mut shapes = Vec::new();
        // Other bootstrap trade-offs of the family (more levels left by a dearer bootstrap, or
        // fewer by a cheaper one), each planned in full; the cheapest by the backend's cost
        // model is kept, unless the user fixed the bootstrap's shape.
        if p.cost.bootstraps > 0
            && !["cts_levels", "cts_bits", "cos_degree"].iter().any(|k| mentions_bootstrap(requested, k))
        {
            let alternatives = self.0.bootstrap_alternatives(requested);
            if !alternatives.is_empty() {
                shapes.push(BootstrapShape::of(&params, &caps, &p));
            }
            for alternative in alternatives {
                let Ok((alt_params, alt_caps, alt_plan, _)) = self.choose(&mut programs, &alternative) else {
                    continue;
                };
                shapes.push(BootstrapShape::of(&alt_params, &alt_caps, &alt_plan));
                let (Some(units), Some(alt_units)) = (p.cost.estimated_units, alt_plan.cost.estimated_units) else {
                    continue;
                };
                if alt_units < units {
                    (params, caps, p) = (alt_params, alt_caps, alt_plan);
                }
            }
        }
        // Bootstrap range from calibration images, unless the user set one: the largest value
        // a bootstrap without a spare level meets, with a margin (the others divide by an
        // integer first, see [`peregrine_ops::exec::range_divisor`]). Re-planned until the
        // plan's bootstraps fit: a larger q_0 can cost a level, and so move bootstraps.
        let mut ranges = BootstrapRanges::default();
        let mut calibrated = None;
        if p.cost.bootstraps > 0 && !user_range(requested) {
            if let Some(mut calibration) = Calibration::measure(model, options.calibration, options.data)? {
                calibration.measure_packed(model, programs.get(caps.slots)?)?;
                let mut grown = false;
                for _ in 0..MAX_RANGE_REPLANS {
                    ranges = calibration.bootstrap_ranges(&p);
                    let Some(range) = ranges.range else { break };
                    let fits = caps.bootstrap_range.is_some_and(|r| range <= r);
                    // The first pass sets the calibrated range (smaller or larger than the
                    // parameters'); later passes only grow it.
                    if (grown && fits) || caps.bootstrap_range == Some(range) {
                        break;
                    }
                    let range = if grown { range.max(caps.bootstrap_range.unwrap_or(0.0)) } else { range };
                    let Some(ranged) = self.0.params_for_bootstrap_range(&params, range) else {
                        return Err(RuntimeError::BootstrapRange {
                            range,
                            calibration: ranges
                                .source
                                .as_ref()
                                .map(|(f, _)| f.display().to_string())
                                .unwrap_or_default(),
                        });
                    };
                    // Taken even when a larger q_0 costs a level and so more bootstraps: a
                    // bootstrap whose input leaves its range returns garbage, silently.
                    caps = self.0.capabilities(&ranged)?;
                    p = plan(programs.get(caps.slots)?, &caps)?;
                    params = ranged;
                    grown = true;
                }
                let last = calibration.bootstrap_ranges(&p);
                if let (Some(need), Some(have)) = (last.range, caps.bootstrap_range) {
                    if need > have * (1.0 + 1e-9) {
                        return Err(RuntimeError::BootstrapRange {
                            range: need,
                            calibration: calibration.file.display().to_string(),
                        });
                    }
                }
                calibrated = Some(calibration);
            }
        }
        let mut p = match options.max_rotation_keys {
            Some(k) => with_key_budget(p, k)?,
            None => p,
        };
        // Each bootstrap's own range (its tensor's calibrated largest value with the margin),
        // on the plan finally kept: a backend can turn the headroom below the parameters'
        // range into precision.
        if let Some(calibration) = &calibrated {
            let set = ranges.range;
            ranges = calibration.bootstrap_ranges(&p);
            ranges.range = set;
            p.bootstrap_ranges = ranges.by_output.clone();
        }
        // The programs compiled for other slot counts, and the maps composed while compiling,
        // are freed: give their pages back before keys and ciphertexts need them (a 320×320
        // detector held 6.7 GB after planning, most of it free but kept by the allocator).
        drop(programs);
        drop(calibrated);
        release_free_memory();
        Ok(Box::new(CkksModel {
            family: self.0.clone(),
            params,
            plan: Arc::new(p),
            model: model.graph().name.clone(),
            precision,
            ranges,
            shapes,
        }))
    }
}

/// A bootstrap shape the planner weighed: its parameters, the levels it leaves, and the plan
/// it gave.
#[derive(Clone, Debug)]
struct BootstrapShape {
    /// `cts_levels`, `cts_bits`, `cos_degree` of the parameters' `bootstrap` object.
    shape: serde_json::Value,
    /// Computation levels between bootstraps.
    levels: usize,
    bootstraps: usize,
    units: Option<f64>,
    seconds: Option<f64>,
}

impl BootstrapShape {
    fn of(params: &str, caps: &Capabilities, p: &Plan) -> Self {
        let b = serde_json::from_str::<serde_json::Value>(params).ok().and_then(|v| v.get("bootstrap").cloned());
        let field = |k: &str| b.as_ref().and_then(|b| b.get(k).cloned()).unwrap_or(serde_json::Value::Null);
        BootstrapShape {
            shape: json!({"cts_levels": field("cts_levels"), "cts_bits": field("cts_bits"), "cos_degree": field("cos_degree")}),
            levels: caps.max_level,
            bootstraps: p.cost.bootstraps,
            units: p.cost.estimated_units,
            seconds: p.cost.estimated_seconds,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"shape": self.shape, "levels": self.levels, "bootstraps": self.bootstraps,
               "estimated_units": self.units, "estimated_seconds": self.seconds})
    }
}

impl<F: Family> CkksBackend<F> {
    /// Parameters, capabilities, plan and estimated precision for the `requested` parameters:
    /// levels sized to the model (leveled) or to what fits between bootstraps, a tower-reuse
    /// chain where it applies, and the fewest slots that cost no more.
    fn choose(&self, programs: &mut Programs, requested: &str) -> Result<(String, Capabilities, Plan, Precision)> {
        let user_levels = mentions_levels(requested);
        let mut params = requested.to_string();
        let mut caps = match self.0.capabilities(&params) {
            Ok(c) => c,
            // Levels left to the backend: the default count may not fit (under bootstrapping's
            // primes, or in a smaller ring the user names); any size that fits, in the ring the
            // user named if they did, gives the slot count to compile for (other parameters
            // stay errors).
            Err(e) => {
                let sized = (!user_levels).then(|| self.0.params_for_levels(&params, 1)).flatten();
                let sized_caps = sized.as_ref().and_then(|s| self.0.capabilities(s).ok());
                match (sized, sized_caps) {
                    (Some(sized), Some(c)) if named_ring(requested).is_none_or(|n| n == c.ring_dimension) => {
                        params = sized;
                        c
                    }
                    _ => return Err(e),
                }
            }
        };
        // Compiling ResNet-20 takes seconds and the choices below try several parameter sets
        // that often share a slot count: each slot count is compiled once.
        let mut program = programs.get(caps.slots)?;
        // A backend that sizes its own parameters gets exactly the levels the model needs
        // (leveled), or as many as fit between bootstraps, unless the user fixed them.
        let needed = required_levels(&program);
        if needed != caps.max_level && !user_levels {
            if let Some(sized) = self.0.params_for_levels(requested, needed) {
                params = sized;
                caps = self.0.capabilities(&params)?;
                program = programs.get(caps.slots)?;
            }
        }
        // Leveled, with the chain left to the backend: a chain where squares share a prime
        // with the next linear layer ("tower reuse"), if the model has such squares and the
        // backend builds such chains. The program is recompiled for the ring the backend
        // picks; the chain is kept only if its plan leaves squares unrescaled as proposed.
        let towered = if !caps.can_bootstrap && !user_levels && !mentions(requested, "level_bits") {
            self.towered(programs, requested, &caps)?
        } else {
            None
        };
        let mut precision = Precision::default();
        let mut p = match towered {
            Some(t) => {
                let p;
                (params, caps, p, precision) = t;
                p
            }
            None => plan(program, &caps)?,
        };
        // A ring the user named is kept or refused, never silently replaced.
        if let Some(n) = named_ring(requested) {
            if caps.ring_dimension != n {
                // What the planner would choose without the named ring (tower reuse included).
                let mut free: serde_json::Value = serde_json::from_str(requested).unwrap_or_default();
                if let Some(m) = free.as_object_mut() {
                    m.remove("log_ring_dimension");
                }
                let chosen = self.choose(programs, &free.to_string())?;
                if chosen.1.ring_dimension == n {
                    // The named ring holds the model after all (by another chain): use it.
                    return Ok(chosen);
                }
                let (_, c, q, _) = chosen;
                return Err(RuntimeError::RingTooSmall {
                    named_log: n.trailing_zeros(),
                    needed_log: c.ring_dimension.trailing_zeros(),
                    levels: q.cost.levels_consumed,
                    log_qp: c.log_qp.unwrap_or(f64::NAN),
                });
            }
        }
        // A backend that bootstraps sparse slots more cheaply gets the fewest slots whose plan
        // costs no more (the layouts still fit), unless the user fixed the slot count.
        if caps.can_bootstrap && !mentions(requested, "slots") {
            while let Some(sparse) = self.0.params_for_slots(&params, caps.slots / 2) {
                let Ok(sparse_caps) = self.0.capabilities(&sparse) else { break };
                let Ok(sparse_plan) = programs.get(sparse_caps.slots).and_then(|prog| Ok(plan(prog, &sparse_caps)?))
                else {
                    break;
                };
                // By the backend's cost model when it has one (a sparse bootstrap is cheaper,
                // but a layout may need more ciphertexts), else by the counts.
                let keep = match (sparse_plan.cost.estimated_units, p.cost.estimated_units) {
                    (Some(sparse_units), Some(units)) => sparse_units <= units,
                    _ => {
                        sparse_plan.cost.bootstraps <= p.cost.bootstraps
                            && sparse_plan.cost.key_switches <= p.cost.key_switches
                    }
                };
                if !keep {
                    break;
                }
                (params, caps, p) = (sparse, sparse_caps, sparse_plan);
            }
        }
        Ok((params, caps, p, precision))
    }

    /// Parameters, capabilities and plan with a tower-reuse chain for `model`, when the family
    /// builds one and the model has squares that can share a prime; with the output precision
    /// the chain leaves ([`simulated_output_bits`]). Unless the user named the ring (or the
    /// parameters are insecure test ones), a ring that leaves less than [`MIN_OUTPUT_BITS`]
    /// is replaced by the next larger one, whose larger Δ buys precision.
    fn towered(
        &self,
        programs: &mut Programs,
        requested: &str,
        caps: &Capabilities,
    ) -> Result<Option<(String, Capabilities, Plan, Precision)>> {
        let mut min_log_ring = 0;
        let mut smaller = Vec::new();
        let mut best: Option<(String, Capabilities, Plan, Precision)> = None;
        loop {
            let Some((params, caps, p)) = self.towered_in(programs, requested, caps, min_log_ring)? else {
                return Ok(best);
            };
            let bits = simulated_output_bits(programs.model, programs.get(caps.slots)?, &p)?;
            let log_n = caps.ring_dimension.trailing_zeros();
            let fixed = mentions(requested, "log_ring_dimension") || caps.security_bits.is_none() || log_n >= 17;
            let enough = bits.is_none_or(|b| b >= MIN_OUTPUT_BITS);
            let precision = Precision { bits, smaller: smaller.clone() };
            if enough || fixed {
                return Ok(Some((params, caps, p, precision)));
            }
            best.get_or_insert((params, caps, p, precision));
            smaller.extend(bits.map(|b| (log_n, b)));
            min_log_ring = log_n + 1;
        }
    }

    /// [`Self::towered`] for rings of at least 2^`min_log_ring`, without the precision check.
    fn towered_in(
        &self,
        programs: &mut Programs,
        requested: &str,
        caps: &Capabilities,
        min_log_ring: u32,
    ) -> Result<Option<(String, Capabilities, Plan)>> {
        let program = programs.get(caps.slots)?;
        let Some(mut request) = propose_chain(&program, caps) else { return Ok(None) };
        // A ring the user names is kept (a larger ring buys precision: a larger Δ).
        request.keep_ring = mentions(requested, "log_ring_dimension");
        request.min_log_ring = min_log_ring;
        let Some(params) = self.0.params_for_chain(requested, &request) else { return Ok(None) };
        let caps = self.0.capabilities(&params)?;
        let program = programs.get(caps.slots)?;
        // The ring (and so the layouts) may have changed: the chain must still be the one
        // this program asks for.
        let Some(mut again) = propose_chain(&program, &caps) else { return Ok(None) };
        again.keep_ring = request.keep_ring;
        again.min_log_ring = min_log_ring;
        let (params, caps) = if again == request {
            (params, caps)
        } else {
            let Some(params) = self.0.params_for_chain(requested, &again) else { return Ok(None) };
            let caps = self.0.capabilities(&params)?;
            (params, caps)
        };
        let program = programs.get(caps.slots)?;
        let p = plan(program, &caps)?;
        if p.lazy_squares == 0 || p.cost.bootstraps > 0 {
            return Ok(None);
        }
        Ok(Some((params, caps, p)))
    }
}

/// What [`simulated_output_bits`] said of the chosen chain and of smaller rings set aside.
#[derive(Clone, Debug, Default)]
struct Precision {
    /// Bits the chosen parameters leave (None: not estimated).
    bits: Option<f64>,
    /// (log2 N, bits) of smaller secure rings that left too few.
    smaller: Vec<(u32, f64)>,
}

/// Output precision a leveled plan must leave, in bits relative to the largest output
/// ([`simulated_output_bits`]): at 8 bits the largest logit error is below 0.4 % of the
/// largest logit. The degree-2 ResNet-20 at N = 2^15 (Δ = 2^22) falls short of it.
pub const MIN_OUTPUT_BITS: f64 = 8.0;

/// Synthetic inputs [`simulated_output_bits`] runs.
const PRECISION_PROBES: usize = 3;

/// Bits of output precision `p` (planned from `program`) leaves under CKKS-sized noise: the
/// `clear` backend with the same ring and prime sizes, [`NoiseModel::ckks`] for that ring, runs the same plan on
/// [`PRECISION_PROBES`] smooth synthetic inputs (deterministic), against the f64 reference;
/// bits = −log2(max |Δoutput| / max |output|). `None` when `clear` cannot mirror the plan.
pub fn simulated_output_bits(model: &Model, program: Program, p: &Plan) -> Result<Option<f64>> {
    use backend_clear::{ClearParams, ClearScheme, NoiseModel};
    let caps = &p.capabilities;
    let Some((&q0, rest)) = caps.log_moduli.split_first() else { return Ok(None) };
    let bits = |b: f64| b.round() as u32;
    let params = ClearParams {
        log_ring_dimension: caps.ring_dimension.trailing_zeros(),
        log_scale: bits(caps.log_scale),
        first_modulus_bits: bits(q0),
        levels: rest.len(),
        level_bits: rest.iter().map(|&b| bits(b)).collect(),
        noise: Some(NoiseModel::ckks(caps.ring_dimension)),
        seed: 20_261_204,
        ..ClearParams::default()
    };
    let Ok(clear_caps) = ClearScheme::capabilities(&params) else { return Ok(None) };
    let mirrored = plan(program, &clear_caps)?;
    if mirrored.lazy_squares != p.lazy_squares || mirrored.cost.levels_consumed != p.cost.levels_consumed {
        return Ok(None);
    }
    let client = ClearScheme::keygen(&params, &mirrored.key_request())?;
    let server = ClearScheme::server(&client.evaluation_keys()?)?;
    let reference = peregrine_model::reference::Reference::<f64>::new(model);
    let &[c, h, w] = model.graph().input.shape.as_slice() else { return Ok(None) };
    let (mut err, mut mag) = (0f64, 0f64);
    let probe = |x: Vec<f64>| -> Result<(Vec<f64>, Vec<f64>)> {
        let cts = encrypt_input(&client, &mirrored, &x)?;
        let (out, _) = execute(&mirrored, &server, cts, |_, _, _| {})?;
        let got = decrypt_output(&client, &mirrored, &out)?;
        let xin = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, c, h, w]), x)
            .map_err(|e| peregrine_model::ModelError::Shape(e.to_string()))?;
        Ok((got, reference.run(&xin)?.iter().copied().collect()))
    };
    // A probe the plan cannot hold (a value beyond its modulus) says nothing of precision on
    // inputs the model was trained for: it is skipped.
    // One thread: `clear` draws its noise from one seeded generator, so parallel operations
    // would take the draws in scheduling order and the estimate would vary from run to run
    // (by ~0.4 bits on the degree-2 ResNet-20).
    let serial = rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
    let run = |x: Vec<f64>| match &serial {
        Some(pool) => pool.install(|| probe(x)),
        None => probe(x),
    };
    let mut counted = 0;
    for seed in 0..PRECISION_PROBES as u64 {
        let Ok((got, want)) = run(smooth_input(c, h, w, seed)) else { continue };
        counted += 1;
        for (g, r) in got.iter().zip(&want) {
            err = err.max((g - r).abs());
            mag = mag.max(r.abs());
        }
    }
    drop(serial);
    release_free_memory();
    if counted == 0 {
        return Ok(None);
    }
    Ok((mag > 0.0 && err.is_finite()).then(|| -(err.max(f64::MIN_POSITIVE) / mag).log2()))
}

/// Returns memory the allocator holds but nothing uses to the system. The probes above run on
/// their own thread, whose allocations glibc serves from that thread's arena; once the thread
/// is gone the arena keeps the pages (gigabytes for a bootstrapped ResNet-20's plan), which no
/// other thread reuses: the degree-4 ResNet-20's encrypted run peaked at 16.4 GiB instead of
/// 14.1–14.4 GiB. `malloc_trim(0)` releases free pages in every arena (glibc only; elsewhere a
/// no-op).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim takes a byte count, touches only the allocator's own free
        // lists and is thread-safe; it is called with no pointer and its result is ignored.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// A smooth synthetic image (four random low-frequency waves per channel, amplitudes 0.25–0.5,
/// spread ≈ 0.5 where normalised CIFAR images have ≈ 1: polynomial networks amplify inputs
/// unlike their training images, and at full spread some probes leave every range), the
/// same for the same `seed`.
fn smooth_input(c: usize, h: usize, w: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        let waves: Vec<[f64; 4]> = (0..4)
            .map(|_| [next() * 3.0, next() * 3.0, next() * std::f64::consts::TAU, 0.25 + next() * 0.25])
            .collect();
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (y as f64 / h as f64, x as f64 / w as f64);
                out[(ch * h + y) * w + x] = waves
                    .iter()
                    .map(|[fy, fx, ph, a]| a * (std::f64::consts::TAU * (fy * u + fx * v) + ph).cos())
                    .sum::<f64>();
            }
        }
    }
    out
}

/// Calibration images a plan's bootstrap ranges are measured on.
pub const CALIBRATION_IMAGES: usize = 64;

/// Margin over the largest calibrated value of a bootstrapped tensor. A CKKS bootstrap's
/// range is a precision budget rather than a wall: its error grows with the range (q_0/Δ
/// grows with it), and values somewhat beyond it lose precision gradually (the sine's
/// deviation from the modular reduction), so the margin is small.
pub const RANGE_MARGIN: f64 = 1.25;

/// The cleartext model's largest |value| per node on calibration images: the first training
/// batch beside the evaluated data file (never the evaluated images themselves).
struct Calibration {
    file: PathBuf,
    images: usize,
    /// Largest |value| of each node's output, by node name.
    node_max: BTreeMap<String, f64>,
    /// The first [`PACKED_CALIBRATION_IMAGES`] images, preprocessed (C-H-W).
    inputs: Vec<Vec<f64>>,
    /// Largest |value| in any slot of each tensor of the packed program (by tensor name), on
    /// `inputs`: what a bootstrap of it meets, junk slots included — and the only measure of
    /// tensors that are no node's output (a pooling's sum, an activation's scaled input).
    packed_max: BTreeMap<String, f64>,
    /// Images of `inputs` the packed program could not run (a value beyond every modulus).
    packed_skipped: usize,
    /// Calibration images left out because the model runs away on them ([`runaway_free`]).
    runaway: usize,
}

/// How far above the median image an image's largest value may be before it counts as a
/// runaway (a polynomial chain amplified beyond the ranges it was fitted on).
pub const RUNAWAY_FACTOR: f64 = 100.0;

/// The images (indices) on which the model does not run away: every node's values finite, and
/// the image's largest value at most [`RUNAWAY_FACTOR`] times the median image's. Such an
/// image's encrypted run fails whatever the ranges; calibrating on it would only size every
/// bootstrap for values no working input reaches.
fn runaway_free(per_node: &[(String, Vec<f64>)], images: usize) -> Vec<usize> {
    let largest: Vec<f64> = (0..images).map(|i| per_node.iter().map(|(_, m)| m[i]).fold(0f64, f64::max)).collect();
    let mut finite: Vec<f64> = largest.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f64::total_cmp);
    let Some(&median) = finite.get(finite.len() / 2) else { return Vec::new() };
    (0..images).filter(|&i| largest[i].is_finite() && largest[i] <= median * RUNAWAY_FACTOR).collect()
}

/// Calibration images the packed program runs on (on `clear`, without noise) to measure the
/// tensors that are no node's output.
pub const PACKED_CALIBRATION_IMAGES: usize = 8;

/// Times the range is re-planned when a larger q_0 moves bootstraps.
const MAX_RANGE_REPLANS: usize = 4;

impl Calibration {
    /// Runs the cleartext model on [`CALIBRATION_IMAGES`] images of `file`, else of
    /// `data_batch_1` beside `data`; `None` when neither is given or there is no such file.
    fn measure(model: &Model, file: Option<&Path>, data: Option<&Path>) -> Result<Option<Self>> {
        let beside = || {
            let dir = data.and_then(|d| if d.is_dir() { Some(d) } else { d.parent() })?;
            peregrine_data::batch_file(dir, "data_batch_1")
        };
        let Some(file) = file.map(Path::to_path_buf).or_else(beside) else { return Ok(None) };
        let spec = &model.graph().input;
        let (pixels, count) = peregrine_data::calibration_pixels(&file, spec, CALIBRATION_IMAGES)?;
        let batch = peregrine_data::preprocess::<f64>(&pixels, count, spec)?;
        let nodes = &model.graph().nodes;
        let count = count.max(1);
        // Each node's largest |value| per image.
        let mut per_node: Vec<(String, Vec<f64>)> = Vec::new();
        peregrine_model::reference::Reference::<f64>::new(model).run_inspect(&batch, |i, v| {
            let each = v.len() / count;
            let maxima = v
                .iter()
                .copied()
                .collect::<Vec<f64>>()
                .chunks(each.max(1))
                .map(|c| c.iter().fold(0f64, |m, x| if x.is_nan() { f64::INFINITY } else { m.max(x.abs()) }))
                .collect();
            per_node.push((nodes[i].name.clone(), maxima));
        })?;
        let per_image = batch.len() / count;
        let flat: Vec<f64> = batch.iter().copied().collect();
        let images: Vec<&[f64]> = flat.chunks(per_image.max(1)).collect();
        let kept = runaway_free(&per_node, images.len());
        let mut node_max = BTreeMap::new();
        for (name, maxima) in &per_node {
            let m = kept.iter().map(|&i| maxima[i]).fold(0f64, f64::max);
            node_max.insert(name.clone(), m);
        }
        let input_max = kept.iter().flat_map(|&i| images[i].iter()).fold(0f64, |m, x| m.max(x.abs()));
        node_max.insert(peregrine_model::ir::INPUT.to_string(), input_max);
        let inputs = kept.iter().take(PACKED_CALIBRATION_IMAGES).map(|&i| images[i].to_vec()).collect();
        Ok(Some(Calibration {
            file,
            images: kept.len(),
            runaway: images.len() - kept.len(),
            node_max,
            inputs,
            packed_max: BTreeMap::new(),
            packed_skipped: 0,
        }))
    }

    /// Runs `program` on the `clear` backend (no noise, bootstraps emulated without a range
    /// check) on the first calibration images and records every tensor's largest |value| over
    /// all its slots.
    fn measure_packed(&mut self, model: &Model, program: Program) -> Result<()> {
        use backend_clear::{ClearBootstrap, ClearParams, ClearScheme};
        let params = ClearParams {
            log_ring_dimension: program.slots.trailing_zeros() + 1,
            levels: 60,
            bootstrap: Some(ClearBootstrap { output_level: 60, range: f64::MAX }),
            ..ClearParams::default()
        };
        let caps = ClearScheme::capabilities(&params)?;
        let planned = plan(program, &caps)?;
        let client = ClearScheme::keygen(&params, &planned.key_request())?;
        let server = ClearScheme::server(&client.evaluation_keys()?)?;
        let expected = model.graph().input.shape.iter().product::<usize>();
        let mut packed_max = BTreeMap::new();
        self.packed_skipped = 0;
        for x in self.inputs.iter().filter(|x| x.len() == expected) {
            let cts = encrypt_input(&client, &planned, x)?;
            let mut err = None;
            let mut seen: BTreeMap<String, f64> = BTreeMap::new();
            let ran = execute(&planned, &server, cts, |step, t, out| {
                if matches!(step.kind, StepKind::Bootstrap { .. }) || err.is_some() {
                    return;
                }
                let mut m = 0f64;
                for ct in out {
                    match client.decrypt_values(ct) {
                        Ok(v) => m = v.iter().fold(m, |m, x| m.max(x.abs())),
                        Err(e) => err = Some(e),
                    }
                }
                let e = seen.entry(planned.program.tensors[t].name.clone()).or_insert(0f64);
                *e = e.max(m);
            });
            // An image the model runs away on (a polynomial chain beyond any modulus) says
            // nothing of the ranges of images it works on: it is skipped, and counted.
            if ran.is_err() || err.is_some() {
                self.packed_skipped += 1;
                continue;
            }
            for (k, v) in seen {
                let e = packed_max.entry(k).or_insert(0f64);
                *e = e.max(v);
            }
        }
        self.packed_max = packed_max;
        release_free_memory();
        Ok(())
    }

    /// The largest value each bootstrap of `p` meets and the range the parameters must give:
    /// the largest among bootstraps whose input has no level to spare (the others divide by an
    /// integer first), or the smallest of all when every one has. A tensor's largest value is
    /// the larger of its packed measure (all slots) and its node's, else the largest value of
    /// any node.
    fn bootstrap_ranges(&self, p: &Plan) -> BootstrapRanges {
        let any = self.node_max.values().chain(self.packed_max.values()).fold(0f64, |m, &x| m.max(x));
        let mut by_output = BTreeMap::new();
        let mut spare = Vec::new();
        let per_bootstrap: Vec<(String, f64)> = p
            .program
            .steps
            .iter()
            .filter_map(|s| match s.kind {
                StepKind::Bootstrap { input } => {
                    let name = p.program.tensors[input].name.trim_end_matches("@bootstrap").to_string();
                    let (node, packed) = (self.node_max.get(&name), self.packed_max.get(&name));
                    let m = match (node, packed) {
                        (None, None) => any,
                        (a, b) => a.copied().unwrap_or(0.0).max(b.copied().unwrap_or(0.0)),
                    };
                    if m > 0.0 {
                        by_output.insert(s.output, m * RANGE_MARGIN);
                    }
                    spare.push(p.levels[input] >= 1);
                    Some((name, m))
                }
                _ => None,
            })
            .collect();
        let tight = per_bootstrap.iter().zip(&spare).filter(|(_, s)| !**s).fold(0f64, |m, ((_, x), _)| m.max(*x));
        let smallest = per_bootstrap.iter().map(|(_, x)| *x).filter(|x| *x > 0.0).fold(f64::INFINITY, f64::min);
        let largest = if tight > 0.0 {
            tight
        } else if smallest.is_finite() {
            smallest
        } else {
            0.0
        };
        let range = (largest > 0.0).then_some(largest * RANGE_MARGIN);
        let packed = (self.inputs.len() - self.packed_skipped, self.packed_skipped);
        BootstrapRanges {
            source: Some((self.file.clone(), self.images)),
            per_bootstrap,
            spare,
            packed,
            runaway: self.runaway,
            range,
            by_output,
        }
    }
}

/// What calibration said of a plan's bootstraps.
#[derive(Clone, Debug, Default)]
struct BootstrapRanges {
    /// The calibration file and its image count (None: not calibrated).
    source: Option<(PathBuf, usize)>,
    /// (bootstrapped tensor, largest |value| on the calibration images), in plan order.
    per_bootstrap: Vec<(String, f64)>,
    /// Whether each bootstrap's input has a level to spare (to divide by an integer first).
    spare: Vec<bool>,
    /// Images the packed program was measured on, and those skipped (it ran away on them).
    packed: (usize, usize),
    /// Calibration images left out because the model runs away on them.
    runaway: usize,
    /// The range set from them (None: the parameters' own range was kept).
    range: Option<f64>,
    /// Each bootstrap's own range (largest value × margin), by its step's output tensor.
    by_output: BTreeMap<TensorId, f64>,
}

impl BootstrapRanges {
    fn describe(&self, set: Option<f64>) -> String {
        let set_value = set;
        let set = set.map_or("none".to_string(), |r| format!("{r:.2}"));
        match &self.source {
            None => format!(
                "bootstrap range {set}: not calibrated (set by the parameters, or no data_batch_1 beside --data and no --calibration); values beyond it lose precision"
            ),
            Some((file, n)) => {
                let each: Vec<String> = self
                    .per_bootstrap
                    .iter()
                    .zip(&self.spare)
                    .map(|((t, m), spare)| {
                        let r = m * RANGE_MARGIN;
                        match peregrine_ops::exec::range_divisor(Some(r), set_value, usize::from(*spare)) {
                            1 => format!("{t} {m:.2} (runs within {r:.2})"),
                            g => format!("{t} {m:.2} (within {r:.2}: its spare level divides by {g} first)"),
                        }
                    })
                    .collect();
                format!(
                    "bootstrap range {set}{}: largest |value| on {n} calibration images of {}{} × {RANGE_MARGIN} margin (tensors of the packed program measured on {} of them{}); each bootstrap runs within its own tensor's range (a backend may turn the headroom into precision): {}",
                    if self.range.is_none() { " (not calibrated: no bootstrapped value measured)" } else { "" },
                    file.display(),
                    if self.runaway > 0 { format!(" ({} more left out: the model runs away on them)", self.runaway) } else { String::new() },
                    self.packed.0,
                    if self.packed.1 > 0 { format!(", {} skipped: the model ran beyond every modulus on them", self.packed.1) } else { String::new() },
                    each.join(", ")
                )
            }
        }
    }

    fn json(&self, set: Option<f64>) -> serde_json::Value {
        json!({
            "range": set,
            "calibrated": self.range.is_some(),
            "file": self.source.as_ref().map(|(f, _)| f.clone()),
            "images": self.source.as_ref().map(|(_, n)| *n),
            "margin": RANGE_MARGIN,
            "runaway_images": self.runaway,
            "packed_images": self.packed.0,
            "per_bootstrap": self.per_bootstrap.iter().zip(&self.spare).map(|((t, m), spare)| json!({"tensor": t, "largest_abs": m, "range": m * RANGE_MARGIN, "spare_level": spare, "divisor": peregrine_ops::exec::range_divisor(Some(m * RANGE_MARGIN), set, usize::from(*spare))})).collect::<Vec<_>>(),
        })
    }
}

/// A model's compiled programs by slot count, each compiled once.
struct Programs<'m> {
    model: &'m Model,
    by_slots: std::collections::BTreeMap<usize, Program>,
}

impl<'m> Programs<'m> {
    fn new(model: &'m Model) -> Self {
        Programs { model, by_slots: Default::default() }
    }
    /// The model compiled for `slots` slots.
    fn get(&mut self, slots: usize) -> Result<Program> {
        if let Some(p) = self.by_slots.get(&slots) {
            return Ok(p.clone());
        }
        let p = compile(self.model, slots)?;
        self.by_slots.insert(slots, p.clone());
        Ok(p)
    }
}

/// A model planned for a CKKS family.
struct CkksModel<F: Family> {
    family: Arc<F>,
    params: String,
    plan: Arc<Plan>,
    model: String,
    /// Output precision estimated for a tower-reuse chain ([`simulated_output_bits`]).
    precision: Precision,
    /// Calibrated bootstrap ranges (empty when the plan does not bootstrap or none were measured).
    ranges: BootstrapRanges,
    /// The bootstrap shapes weighed (empty when the family offers one, or the user fixed it),
    /// the first the family's default.
    shapes: Vec<BootstrapShape>,
}

impl<F: Family> CompiledModel for CkksModel<F> {
    fn backend(&self) -> &str {
        self.family.name()
    }
    fn security_bits(&self) -> Option<u32> {
        self.plan.capabilities.security_bits
    }
    fn describe(&self) -> PlanReport {
        let p = &self.plan;
        let c = &p.cost;
        let mut lines = vec![format!(
            "{:<28} {:<9} {:>5} {:>4} {:>6} {:>7} {:>4}  packing",
            "step", "kind", "level", "used", "rots", "ct×pt", "cts"
        )];
        lines.extend(p.steps.iter().map(|s| {
            format!(
                "{:<28} {:<9} {:>5} {:>4} {:>6} {:>7} {:>4}  {}",
                s.name, s.kind, s.level, s.levels_used, s.rotations, s.ct_pt_mults, s.ciphertexts, s.packing
            )
        }));
        lines.push(format!(
            "total: {} rotations, {} ct×ct (relinearisations), {} key switches, {} ct×pt, {} rescales, {} bootstrapped ciphertexts",
            c.rotations, c.ct_ct_mults, c.key_switches, c.ct_pt_mults, c.rescales, c.bootstraps
        ));
        lines.push(format!(
            "levels consumed {}, peak {} live ciphertexts, {} rotation keys (≈ {:.2} GiB of evaluation keys at full level), {:.1} MiB of plaintext diagonals",
            c.levels_consumed,
            c.peak_live_ciphertexts,
            c.rotation_keys,
            c.key_bytes_estimate as f64 / (1u64 << 30) as f64,
            c.diagonal_bytes as f64 / (1u64 << 20) as f64
        ));
        lines.push(chain_summary(&p.capabilities, p.lazy_squares));
        if let (Some(units), Some(model)) = (c.estimated_units, &p.capabilities.costs) {
            let boot = c.bootstrap_units.unwrap_or(0.0);
            lines.push(format!(
                "estimated work {units:.0} units, {:.0} % of it in bootstraps ({:.0} units each){}; {}",
                100.0 * boot / units.max(1e-9),
                model.bootstrap,
                c.estimated_seconds
                    .map_or(String::new(), |s| format!(", ≈ {s:.0} s per image on one thread of this machine")),
                model.basis
            ));
        }
        if let Some(bits) = self.precision.bits {
            let set_aside: Vec<String> =
                self.precision.smaller.iter().map(|(n, b)| format!("N = 2^{n} would leave {b:.1} bits")).collect();
            lines.push(format!(
                "estimated output precision {bits:.1} bits of the largest output (clear backend with CKKS-sized noise for this ring and chain, {PRECISION_PROBES} synthetic inputs; rings are enlarged below {MIN_OUTPUT_BITS} bits{}){}",
                if set_aside.is_empty() { String::new() } else { format!(": {}", set_aside.join(", ")) },
                if bits < MIN_OUTPUT_BITS { " — LOW: outputs may differ from the cleartext model's" } else { "" }
            ));
        }
        if p.cost.bootstraps > 0 {
            lines.push(self.ranges.describe(p.capabilities.bootstrap_range));
        }
        if !self.shapes.is_empty() {
            let each: Vec<String> = self
                .shapes
                .iter()
                .map(|s| {
                    format!(
                        "{} → {} levels, {} bootstraps, {:.0} units{}",
                        s.shape,
                        s.levels,
                        s.bootstraps,
                        s.units.unwrap_or(f64::NAN),
                        s.seconds.map_or(String::new(), |t| format!(" (≈ {t:.0} s)"))
                    )
                })
                .collect();
            lines.push(format!("bootstrap shapes weighed (the cheapest kept): {}", each.join("; ")));
        }
        PlanReport {
            json: json!({"model": self.model, "backend": self.backend(), "capabilities": p.capabilities, "cost": p.cost,
                         "estimated_output_bits": self.precision.bits,
                         "bootstrap_calibration": self.ranges.json(p.capabilities.bootstrap_range),
                         "bootstrap_shapes": self.shapes.iter().map(BootstrapShape::json).collect::<Vec<_>>(),
                         "smaller_rings_set_aside": self.precision.smaller.iter().map(|(n, b)| json!({"log_ring_dimension": n, "estimated_output_bits": b})).collect::<Vec<_>>(),
                         "lazy_squares": p.lazy_squares, "smallest_secure_ring": p.capabilities.log_qp.and_then(smallest_secure_ring),
                         "rotation_keys": p.rotation_keys, "rotation_levels": p.rotation_levels, "steps": p.steps}),
            headline: format!("{} on {} ({})", self.model, self.backend(), p.capabilities.summary()),
            lines,
        }
    }
    fn cost(&self) -> serde_json::Value {
        json!(self.plan.cost)
    }
    fn keygen(&self) -> Result<Box<dyn DynClient>> {
        let client = self.family.keygen(&self.params, &self.plan.key_request())?;
        Ok(Box::new(CkksClient { family: self.family.clone(), plan: self.plan.clone(), client }))
    }
    fn load_client(&self, secret: &[u8]) -> Result<Box<dyn DynClient>> {
        let client = self.family.load_client(secret)?;
        Ok(Box::new(CkksClient { family: self.family.clone(), plan: self.plan.clone(), client }))
    }
    fn server_from_file(&self, path: &Path) -> Result<Box<dyn DynServer>> {
        let server = self.family.server_from_file(path)?;
        Ok(Box::new(CkksServer::<F> { name: self.family.name().to_string(), plan: self.plan.clone(), server }))
    }
}

struct CkksClient<F: Family> {
    family: Arc<F>,
    plan: Arc<Plan>,
    client: F::Client,
}

struct CkksServer<F: Family> {
    name: String,
    plan: Arc<Plan>,
    server: F::Server,
}

impl<F: Family> DynClient for CkksClient<F> {
    fn save_secret(&self) -> Result<Vec<u8>> {
        Ok(self.client.save_secret()?)
    }
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> Result<()> {
        Ok(self.client.write_evaluation_keys(out)?)
    }
    fn local_server(&self) -> Result<LocalServer> {
        let name = self.family.name().to_string();
        // Backends with very large keys (OpenFHE at N = 2^16) share them in memory; the bytes
        // are then only counted.
        if let Some(server) = self.client.local_server()? {
            let mut count = ByteCounter::default();
            self.client.write_evaluation_keys(&mut count)?;
            let server = Box::new(CkksServer::<F> { name, plan: self.plan.clone(), server });
            return Ok(LocalServer { server, key_bytes: count.0, shared: true });
        }
        let keys = self.client.evaluation_keys()?;
        let server = Box::new(CkksServer::<F> { name, plan: self.plan.clone(), server: self.family.server(&keys)? });
        Ok(LocalServer { server, key_bytes: keys.len() as u64, shared: false })
    }
    fn encrypt(&self, input: &[f64]) -> Result<Encrypted> {
        Ok(Encrypted::new(encrypt_input(&self.client, &self.plan, input)?))
    }
    fn decrypt(&self, output: &Encrypted) -> Result<Decrypted> {
        let cts: &Vec<Ct<F>> = output.downcast_ref(self.family.name())?;
        Ok(Decrypted { logits: decrypt_output(&self.client, &self.plan, cts)?, raw: None })
    }
    fn decrypt_step(&self, event: &StepEvent) -> Option<Result<Vec<f64>>> {
        let (tensor, values) = event.values.as_ref()?;
        Some(
            values
                .downcast_ref::<Vec<Ct<F>>>(self.family.name())
                .and_then(|cts| Ok(peregrine_ops::exec::decrypt_tensor(&self.client, &self.plan, *tensor, cts)?)),
        )
    }
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>> {
        let cts: &Vec<Ct<F>> = values.downcast_ref(self.family.name())?;
        Ok(cts.iter().map(|c| self.client.serialize_ciphertext(c)).collect::<BResult<_>>()?)
    }
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted> {
        let cts: Vec<Ct<F>> = parts.iter().map(|b| self.client.deserialize_ciphertext(b)).collect::<BResult<_>>()?;
        Ok(Encrypted::new(cts))
    }
}

impl<F: Family> DynServer for CkksServer<F> {
    fn infer(&self, input: Encrypted, trace: bool, on_step: OnStep) -> Result<Inferred> {
        let cts: Vec<Ct<F>> = input.downcast(&self.name)?;
        let prog = &self.plan.program;
        let total = prog.steps.len();
        let mut done = 0;
        let mut last = std::time::Instant::now();
        let (out, timings) = execute(&self.plan, &self.server, cts, |step, tensor, cts: &[Ct<F>]| {
            done += 1;
            let seconds = last.elapsed().as_secs_f64();
            last = std::time::Instant::now();
            let node = prog.tensors[tensor].name.trim_end_matches("@bootstrap").to_string();
            let values = trace.then(|| (tensor, Encrypted::new(cts.to_vec())));
            on_step(StepEvent { name: step.name.clone(), node, done, total, seconds, values });
        })?;
        let steps = timings.into_iter().map(|t| StepSeconds { step: t.name, seconds: t.seconds }).collect();
        Ok((Encrypted::new(out), InferStats { steps, bootstraps: None }))
    }
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>> {
        let cts: &Vec<Ct<F>> = values.downcast_ref(&self.name)?;
        Ok(cts.iter().map(|c| self.server.serialize_ciphertext(c)).collect::<BResult<_>>()?)
    }
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted> {
        let cts: Vec<Ct<F>> = parts.iter().map(|b| self.server.deserialize_ciphertext(b)).collect::<BResult<_>>()?;
        Ok(Encrypted::new(cts))
    }
}

/// The modulus chain in one line: bit sizes bottom to top (runs written `bits×count`), log2(Q·P)
/// and the smallest ring that is 128-bit secure for it.
fn chain_summary(caps: &Capabilities, lazy_squares: usize) -> String {
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for q in caps.log_moduli.iter().skip(1) {
        let b = q.round() as u32;
        match runs.last_mut() {
            Some((x, n)) if *x == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let chain: Vec<String> =
        runs.iter().map(|(b, n)| if *n == 1 { b.to_string() } else { format!("{b}×{n}") }).collect();
    let q0 = caps.log_moduli.first().map_or(0.0, |q| q.round());
    let qp = match caps.log_qp {
        Some(qp) => {
            let ring = smallest_secure_ring(qp)
                .map_or("none tabulated".to_string(), |n| format!("N = 2^{}", n.trailing_zeros()));
            format!("; log2(Q·P) = {qp:.1}, smallest 128-bit ring {ring}")
        }
        None => String::new(),
    };
    let tower = if lazy_squares > 0 {
        format!("; {lazy_squares} squares share a prime with the next linear layer (tower reuse)")
    } else {
        String::new()
    };
    format!("modulus chain (bits): q_0 {q0}, q_1… {}{qp}{tower}", chain.join(", "))
}

/// The smallest tabulated ring dimension whose 128-bit bound admits `log_qp` bits.
fn smallest_secure_ring(log_qp: f64) -> Option<usize> {
    peregrine_backend::security::MAX_LOG_QP_128.iter().find(|(_, b)| *b >= log_qp).map(|(n, _)| *n)
}

/// The ring dimension a JSON parameter string names, if it does.
fn named_ring(params: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(params).ok()?;
    Some(1usize << v.get("log_ring_dimension")?.as_u64().filter(|&n| n < 32)?)
}

/// Whether a JSON parameter string sets `levels` itself.
fn mentions_levels(params: &str) -> bool {
    mentions(params, "levels")
}

/// Whether the JSON object `params` sets `key`.
fn mentions(params: &str, key: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(params).ok().is_some_and(|v| v.get(key).is_some())
}

/// Whether the JSON object `params` sets `key` of its `bootstrap` object.
fn mentions_bootstrap(params: &str, key: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(params)
        .ok()
        .is_some_and(|v| v.get("bootstrap").and_then(|b| b.get(key)).is_some())
}

/// Whether the user set the bootstrap range (`ckks`: `bootstrap.range`; plugins such as
/// `openfhe`: `bootstrap_range`).
fn user_range(params: &str) -> bool {
    mentions_bootstrap(params, "range") || mentions(params, "bootstrap_range")
}
