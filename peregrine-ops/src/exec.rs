//! Execution of a plan on any backend, plus the client-side packing helpers.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use peregrine_backend::{power_basis, BResult, Backend, Client};
use rayon::prelude::*;
use serde::Serialize;

use crate::compile::{Program, Step, StepKind, TensorId};
use crate::plan::Plan;
use crate::OpsError;

/// Time spent per kind of work inside linear steps, summed over threads, in microseconds
/// (printed per step to stderr when `PEREGRINE_PROFILE` is set).
pub(crate) mod profile {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    pub static HOISTED: AtomicU64 = AtomicU64::new(0);
    pub static COMPOSED: AtomicU64 = AtomicU64::new(0);
    pub static ENCODE: AtomicU64 = AtomicU64::new(0);
    pub static MULTIPLY: AtomicU64 = AtomicU64::new(0);
    pub static GIANT: AtomicU64 = AtomicU64::new(0);

    pub fn on() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("PEREGRINE_PROFILE").is_some())
    }

    /// Runs `f`, adding its wall time to `counter` when profiling.
    pub fn time<T>(counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
        if !on() {
            return f();
        }
        let t = Instant::now();
        let r = f();
        counter.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }

    /// Prints and resets the counters, with the process's resident memory after the step and
    /// its peak during the step (the peak is reset after each report, where Linux allows).
    pub fn report(step: &str) {
        if !on() {
            return;
        }
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) as f64 / 1e6;
        eprintln!(
            "profile {step}: hoisted rotations {:.2} s, composed {:.2} s, encode {:.2} s, multiply-add {:.2} s, giant rotations {:.2} s; resident {} MiB, peak {} MiB",
            take(&HOISTED),
            take(&COMPOSED),
            take(&ENCODE),
            take(&MULTIPLY),
            take(&GIANT),
            status_mib("VmRSS:"),
            status_mib("VmHWM:"),
        );
        // "5" resets the peak resident size (proc(5), clear_refs); ignored where unsupported.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// A memory figure of this process from Linux's `/proc/self/status` (`VmRSS:` resident,
    /// `VmHWM:` peak), in MiB; 0 where unknown.
    pub fn status_mib(key: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024)
    }
}

/// Rotations of one input ciphertext: `(step, rotated ciphertext)`.
type Rotations<B> = Vec<(i64, <B as Backend>::Ciphertext)>;

/// Wall time of one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepTiming {
    /// Step name.
    pub name: String,
    /// `linear`, `poly` or `bootstrap`.
    pub kind: &'static str,
    /// Seconds.
    pub seconds: f64,
    /// Level of the result.
    pub level: usize,
}

/// Rotates by `step`, through the plan's composed path when it has no direct key.
fn rotate<B: Backend>(
    b: &B,
    paths: &BTreeMap<i64, Vec<i64>>,
    x: &B::Ciphertext,
    step: i64,
    slots: usize,
) -> BResult<B::Ciphertext> {
    match paths.get(&step.rem_euclid(slots as i64)) {
        None => b.rotate(x, step),
        Some(path) => {
            let mut y = b.rotate(x, path[0])?;
            for &p in &path[1..] {
                y = b.rotate(&y, p)?;
            }
            Ok(y)
        }
    }
}

/// `acc + x`, or `x` when nothing has been accumulated yet.
fn accumulate<B: Backend>(b: &B, acc: Option<B::Ciphertext>, x: B::Ciphertext) -> BResult<B::Ciphertext> {
    match acc {
        None => Ok(x),
        Some(a) => b.add(&a, &x),
    }
}

fn dense(sparse: &[(u32, f64)], slots: usize) -> Vec<f64> {
    let mut v = vec![0.0; slots];
    for &(s, x) in sparse {
        v[s as usize] = x;
    }
    v
}

/// Client side: packs a flat input tensor (C-H-W order) into the plan's input layout and encrypts it.
pub fn encrypt_input<C: Client>(
    client: &C,
    plan: &Plan,
    input: &[f64],
) -> Result<Vec<<C::Backend as Backend>::Ciphertext>, OpsError> {
    let layout = &plan.program.tensors[0].layout;
    if input.len() != layout.len() {
        return Err(OpsError::Shape(format!("input has {} values, the plan expects {}", input.len(), layout.len())));
    }
    let caps = client.capabilities();
    layout
        .pack(input)
        .iter()
        .map(|v| client.encode(v, plan.levels[0], caps.default_scale()).and_then(|p| client.encrypt(&p)))
        .collect::<BResult<Vec<_>>>()
        .map_err(|e| OpsError::Backend { step: "encrypt input".into(), cause: e })
}

/// Client side: decrypts a packed tensor and reads it back in C-H-W order.
pub fn decrypt_tensor<C: Client>(
    client: &C,
    plan: &Plan,
    tensor: TensorId,
    cts: &[<C::Backend as Backend>::Ciphertext],
) -> Result<Vec<f64>, OpsError> {
    let layout = &plan.program.tensors[tensor].layout;
    let slots = cts
        .iter()
        .map(|c| client.decrypt_values(c))
        .collect::<BResult<Vec<_>>>()
        .map_err(|e| OpsError::Backend { step: "decrypt".into(), cause: e })?;
    Ok(layout.unpack(&slots))
}

/// Client side: decrypts the model output.
pub fn decrypt_output<C: Client>(
    client: &C,
    plan: &Plan,
    cts: &[<C::Backend as Backend>::Ciphertext],
) -> Result<Vec<f64>, OpsError> {
    decrypt_tensor(client, plan, plan.program.output, cts)
}

/// Server side: runs the plan on encrypted input. `observe(step, output tensor, ciphertexts)`
/// is called after every step (e.g. for a client-side precision trace in tests and tools).
pub fn execute<B: Backend>(
    plan: &Plan,
    backend: &B,
    input: Vec<B::Ciphertext>,
    mut observe: impl FnMut(&Step, TensorId, &[B::Ciphertext]),
) -> Result<(Vec<B::Ciphertext>, Vec<StepTiming>), OpsError> {
    let prog = &plan.program;
    if input.len() != prog.tensors[0].ciphertexts {
        return Err(OpsError::Shape(format!(
            "{} input ciphertexts, the plan expects {}",
            input.len(),
            prog.tensors[0].ciphertexts
        )));
    }
    let mut last_use = vec![0usize; prog.tensors.len()];
    for (i, s) in prog.steps.iter().enumerate() {
        for t in s.inputs() {
            last_use[t] = i;
        }
    }
    last_use[prog.output] = usize::MAX;
    let mut values: Vec<Option<Vec<B::Ciphertext>>> = (0..prog.tensors.len()).map(|_| None).collect();
    values[0] = Some(input);
    let mut timings = Vec::with_capacity(prog.steps.len());
    let delta = plan.capabilities.default_scale();
    let operands = product_operands(prog);
    for (i, step) in prog.steps.iter().enumerate() {
        let t0 = Instant::now();
        let level = plan.levels[step.output];
        let wrap = |e| OpsError::Backend { step: step.name.clone(), cause: e };
        // The second operand of a product comes out at the scale that lands the product on Δ
        // exactly (Δ_x · s / q = Δ): a prime is never exactly Δ, and a product at Δ·(Δ/q) could
        // not be added to a tensor at Δ afterwards.
        let operand_scale = operands.get(&step.output).and_then(|&(x, product)| {
            let x = values[x].as_deref()?.first()?;
            Some(backend.modulus(plan.levels[product] + 1) * delta / backend.scale(x))
        });
        let out = match &step.kind {
            StepKind::Linear { inputs, plan: dp, power } => {
                let ins: Vec<&[B::Ciphertext]> =
                    inputs.iter().map(|t| values[*t].as_deref().expect("computed")).collect();
                let every_output_rescaled = dp.outputs.iter().all(|o| !o.giants.is_empty());
                let target = match operand_scale {
                    _ if *power > 1 => power_input_scale(backend, level, *power, delta),
                    Some(s) if every_output_rescaled => s,
                    _ => delta,
                };
                linear(backend, dp, &ins, level, target, &plan.rotation_paths).map_err(wrap)?
            }
            StepKind::Square { input, lazy, negate, offset } => {
                let x = values[*input].as_deref().expect("computed");
                x.par_iter()
                    .zip(offset.par_iter())
                    .map(|(ct, off)| {
                        // A lazy square stays at scale Δ²: its consumer's prime absorbs it.
                        let sq = backend.square(ct)?;
                        let sq = if *lazy { sq } else { backend.rescale(&sq)? };
                        let sq = if *negate { backend.negate(&sq)? } else { sq };
                        if off.is_empty() {
                            Ok(sq)
                        } else {
                            let pt = backend.encode(&dense(off, prog.slots), backend.level(&sq), backend.scale(&sq))?;
                            backend.add_plain(&sq, &pt)
                        }
                    })
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
            StepKind::Product { inputs } => {
                let a = values[inputs[0]].as_deref().expect("computed");
                let b = values[inputs[1]].as_deref().expect("computed");
                a.par_iter()
                    .zip(b.par_iter())
                    .map(|(x, y)| {
                        // Both at the lower of the two levels, then multiply and rescale. An
                        // operand above that level spends one of its spare levels on landing
                        // the product on Δ exactly (times 1 at the right scale) when its
                        // producer could not (a bootstrapped gate, a map times a map).
                        let l = backend.level(x).min(backend.level(y));
                        let q = backend.modulus(l);
                        let off = (backend.scale(x) * backend.scale(y) / q / delta - 1.0).abs() > 1e-12;
                        let at_l = |u: &B::Ciphertext, v: &B::Ciphertext| -> BResult<Option<B::Ciphertext>> {
                            if backend.level(u) == l {
                                return Ok(None);
                            }
                            if !off {
                                return backend.drop_to_level(u, l).map(Some);
                            }
                            let want = q * delta / backend.scale(v);
                            let u = backend.drop_to_level(u, l + 1)?;
                            let s = want * backend.modulus(l + 1) / backend.scale(&u);
                            backend.rescale(&backend.mul_scalar(&u, 1.0, s)?).map(Some)
                        };
                        let (xl, yl) = (at_l(x, y)?, at_l(y, x)?);
                        let p = backend.mul(xl.as_ref().unwrap_or(x), yl.as_ref().unwrap_or(y))?;
                        backend.rescale(&p)
                    })
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
            StepKind::Poly { input, degree, coeffs } => {
                let x = values[*input].as_deref().expect("computed");
                let target = operand_scale.unwrap_or(delta);
                x.par_iter()
                    .zip(coeffs.par_iter())
                    .map(|(ct, c)| poly(backend, ct, *degree, c, target, prog.slots))
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
            StepKind::Folded { input, degree, negate, coeffs } => {
                let x = values[*input].as_deref().expect("computed");
                x.par_iter()
                    .zip(coeffs.par_iter())
                    .map(|(ct, c)| folded(backend, ct, *degree, *negate, c, prog.slots))
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
            StepKind::Reduce { input, groups, passes } => {
                let x = values[*input].as_deref().expect("computed");
                groups
                    .par_iter()
                    .map(|g| reduce(backend, x, g, passes, &plan.rotation_paths, prog.slots))
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
            StepKind::Bootstrap { input } => {
                let x = values[*input].as_deref().expect("computed");
                // A bootstrap starts from the lowest level: the levels above would be wasted.
                let range = plan.bootstrap_ranges.get(&step.output).copied();
                let divisor = x
                    .first()
                    .map_or(1, |ct| range_divisor(range, plan.capabilities.bootstrap_range, backend.level(ct)));
                x.par_iter()
                    .map(|ct| {
                        // A tensor beyond the parameters' range spends its spare level on a
                        // division by an integer g, and is multiplied by g (exactly, no level)
                        // after: its bootstrap error grows by g, as a range g times larger would.
                        let low = if divisor > 1 {
                            let one = backend.drop_to_level(ct, 1)?;
                            let s = backend.modulus(1) * delta / backend.scale(&one);
                            backend.rescale(&backend.mul_scalar(&one, 1.0 / divisor as f64, s)?)?
                        } else {
                            backend.drop_to_level(ct, 0)?
                        };
                        let y = match range {
                            Some(r) => backend.bootstrap_within(&low, r / divisor as f64)?,
                            None => backend.bootstrap(&low)?,
                        };
                        if divisor > 1 {
                            backend.mul_integer(&y, divisor)
                        } else {
                            Ok(y)
                        }
                    })
                    .collect::<BResult<Vec<_>>>()
                    .map_err(wrap)?
            }
        };
        profile::report(&step.name);
        timings.push(StepTiming {
            name: step.name.clone(),
            kind: step.kind_name(),
            seconds: t0.elapsed().as_secs_f64(),
            level,
        });
        observe(step, step.output, &out);
        values[step.output] = Some(out);
        for t in step.inputs() {
            if last_use[t] == i {
                values[t] = None;
            }
        }
    }
    Ok((values[prog.output].take().expect("output computed"), timings))
}

/// The second operands of products (`tensor → (first operand, product's output)`), each used by
/// that product alone and not its own square.
fn product_operands(prog: &Program) -> HashMap<TensorId, (TensorId, TensorId)> {
    let mut uses: HashMap<TensorId, usize> = HashMap::new();
    for s in &prog.steps {
        for t in s.inputs() {
            *uses.entry(t).or_default() += 1;
        }
    }
    prog.steps
        .iter()
        .filter_map(|s| match &s.kind {
            &StepKind::Product { inputs: [x, g] } if x != g && uses[&g] == 1 && g != prog.output => {
                Some((g, (x, s.output)))
            }
            _ => None,
        })
        .collect()
}

fn linear<B: Backend>(
    b: &B,
    plan: &peregrine_gip::DiagonalPlan,
    inputs: &[&[B::Ciphertext]],
    out_level: usize,
    delta: f64,
    paths: &BTreeMap<i64, Vec<i64>>,
) -> BResult<Vec<B::Ciphertext>> {
    let slots = plan.slots;
    let op_level = out_level + 1;
    // Baby-step rotations, hoisted per input ciphertext.
    let mut needed: HashMap<(usize, usize), Vec<i64>> = HashMap::new();
    for o in &plan.outputs {
        for g in &o.giants {
            for t in &g.terms {
                needed.entry((t.input, t.in_ct)).or_default();
            }
        }
    }
    for (k, bs) in &plan.babies {
        needed.entry(*k).or_default().extend(bs.iter().copied());
    }
    let keys: Vec<(usize, usize)> = needed.keys().copied().collect();
    let rotated: Vec<((usize, usize), Rotations<B>)> = keys
        .par_iter()
        .map(|&(inp, ict)| {
            let base = b.drop_to_level(&inputs[inp][ict], op_level)?;
            let steps = &needed[&(inp, ict)];
            let mut out = vec![(0i64, base.clone())];
            // Keyed steps are hoisted together; composed ones go one by one.
            let (direct, composed): (Vec<i64>, Vec<i64>) =
                steps.iter().partition(|s| !paths.contains_key(&s.rem_euclid(slots as i64)));
            if !direct.is_empty() {
                out.extend(
                    direct.iter().copied().zip(profile::time(&profile::HOISTED, || b.rotate_many(&base, &direct))?),
                );
            }
            for s in composed {
                // Start from a hoisted rotation on the step's path when there is one: a key
                // switch saved.
                let path = &paths[&s.rem_euclid(slots as i64)];
                let start = path.iter().position(|h| direct.contains(h));
                let y = profile::time(&profile::COMPOSED, || -> BResult<B::Ciphertext> {
                    Ok(match start {
                        Some(i) => {
                            let mut y = out.iter().find(|(d, _)| *d == path[i]).expect("hoisted").1.clone();
                            for (j, &h) in path.iter().enumerate() {
                                if j != i {
                                    y = b.rotate(&y, h)?;
                                }
                            }
                            y
                        }
                        None => rotate(b, paths, &base, s, slots)?,
                    })
                })?;
                out.push((s, y));
            }
            Ok(((inp, ict), out))
        })
        .collect::<BResult<Vec<_>>>()?;
    let mut table: HashMap<(usize, usize, i64), &B::Ciphertext> = HashMap::new();
    for ((inp, ict), list) in &rotated {
        for (s, c) in list {
            table.insert((*inp, *ict, *s), c);
        }
    }
    let q = b.modulus(op_level);
    plan.outputs
        .par_iter()
        .map(|o| {
            // Giant steps run in parallel: each sums its products; the sums are then rotated
            // by their giant steps and added, a few at a time through `rotate_sum` (which lets
            // the backend share work: ckks divides by P once per batch, not once per giant).
            let total = o
                .giants
                .par_iter()
                .map(|g| -> BResult<(B::Ciphertext, i64)> {
                    // Products summed a batch at a time (the backend may fuse each batch into
                    // one pass); batches bound the plaintexts held at once.
                    const BATCH: usize = 8;
                    let mut acc: Option<B::Ciphertext> = None;
                    for batch in g.terms.chunks(BATCH) {
                        let xs: Vec<&B::Ciphertext> =
                            batch.iter().map(|t| table[&(t.input, t.in_ct, t.baby)]).collect();
                        let pts = profile::time(&profile::ENCODE, || {
                            batch
                                .iter()
                                .zip(&xs)
                                .map(|(t, x)| b.encode(&t.diag.to_dense(slots), op_level, delta * q / b.scale(x)))
                                .collect::<BResult<Vec<_>>>()
                        })?;
                        let pairs: Vec<(&B::Ciphertext, &B::Plaintext)> = xs.iter().copied().zip(pts.iter()).collect();
                        acc = profile::time(&profile::MULTIPLY, || -> BResult<_> {
                            Ok(Some(accumulate(b, acc, b.mul_plain_sum(&pairs)?)?))
                        })?;
                    }
                    let acc = acc.expect("a giant has terms");
                    // A composed giant step: every hop but the last now, the last in the sum.
                    match paths.get(&g.step.rem_euclid(slots as i64)) {
                        Some(path) if g.step != 0 => profile::time(&profile::GIANT, || {
                            let (last, first) = path.split_last().expect("a path has hops");
                            let mut y = acc;
                            for &h in first {
                                y = b.rotate(&y, h)?;
                            }
                            Ok((y, *last))
                        }),
                        _ => Ok((acc, g.step)),
                    }
                })
                .try_fold(GiantSum::default, |mut sum, x| {
                    sum.pending.push(x?);
                    sum.flush_if_full(b)?;
                    Ok(sum)
                })
                .try_reduce(GiantSum::default, |mut x, y| {
                    x.total = match (x.total.take(), y.total) {
                        (Some(u), Some(v)) => Some(b.add(&u, &v)?),
                        (u, v) => u.or(v),
                    };
                    x.pending.extend(y.pending);
                    x.flush_if_full(b)?;
                    Ok(x)
                })?
                .finish(b)?;
            // Inputs added unmultiplied at another scale than Δ (an unrescaled square) join the
            // products before the rescale, times 1 at the scale that lands them on Δ.
            type Inputs = Vec<(usize, usize)>;
            let (early, late): (Inputs, Inputs) = o.passthrough.iter().partition(|&&(inp, ict)| {
                (b.scale(&inputs[inp][ict]) / delta - 1.0).abs() > 1e-9 && !o.giants.is_empty()
            });
            let mut total = total;
            for (inp, ict) in early {
                let x = b.drop_to_level(&inputs[inp][ict], op_level)?;
                let y = b.mul_scalar(&x, 1.0, delta * q / b.scale(&x))?;
                total = Some(accumulate(b, total, y)?);
            }
            let mut out = match total {
                Some(t) => Some(b.rescale(&t)?),
                None => None,
            };
            for (inp, ict) in late {
                let x = b.drop_to_level(&inputs[inp][ict], out_level)?;
                out = Some(accumulate(b, out, x)?);
            }
            let out = match out {
                Some(x) => x,
                None => {
                    // An output ciphertext with no contribution: an encryption of zero.
                    let x = b.drop_to_level(&inputs[0][0], out_level)?;
                    b.sub(&x, &x)?
                }
            };
            if o.bias.is_empty() {
                Ok(out)
            } else {
                let pt = b.encode(&dense(&o.bias, slots), out_level, b.scale(&out))?;
                b.add_plain(&out, &pt)
            }
        })
        .collect()
}

/// Giant-step sums being rotated and added: `(sum, giant step)` pairs wait in `pending` until
/// [`GIANTS_PER_ROTATE_SUM`] of them go through one [`Backend::rotate_sum`].
struct GiantSum<C> {
    total: Option<C>,
    pending: Vec<(C, i64)>,
}

impl<C> Default for GiantSum<C> {
    fn default() -> Self {
        GiantSum { total: None, pending: Vec::new() }
    }
}

/// Giant steps rotated and summed by one `rotate_sum` call (bounds the ciphertexts waiting).
const GIANTS_PER_ROTATE_SUM: usize = 8;

impl<C> GiantSum<C> {
    fn flush<B: Backend<Ciphertext = C>>(&mut self, b: &B) -> BResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let terms: Vec<(&C, i64)> = self.pending.iter().map(|(c, s)| (c, *s)).collect();
        let sum = profile::time(&profile::GIANT, || b.rotate_sum(&terms))?;
        self.pending.clear();
        self.total = Some(accumulate(b, self.total.take(), sum)?);
        Ok(())
    }

    fn flush_if_full<B: Backend<Ciphertext = C>>(&mut self, b: &B) -> BResult<()> {
        if self.pending.len() >= GIANTS_PER_ROTATE_SUM {
            self.flush(b)?;
        }
        Ok(())
    }

    /// The sum of every rotated giant (`None` if there was none).
    fn finish<B: Backend<Ciphertext = C>>(mut self, b: &B) -> BResult<Option<C>> {
        self.flush(b)?;
        Ok(self.total)
    }
}

/// The powers of x that [`folded`] builds for degree `d`: x^(2^e) for 2^e < d, x^d, and what
/// x^d's construction needs (always including 1).
pub fn needed_powers(d: usize) -> std::collections::BTreeSet<usize> {
    fn need(k: usize, set: &mut std::collections::BTreeSet<usize>) {
        if !set.insert(k) || k == 1 {
            return;
        }
        let hi = 1usize << (usize::BITS - 1 - k.leading_zeros());
        if hi == k {
            need(k / 2, set);
        } else {
            need(hi, set);
            need(k - hi, set);
        }
    }
    let mut set = std::collections::BTreeSet::new();
    let mut p = 1;
    while p < d {
        need(p, &mut set);
        p *= 2;
    }
    need(d, &mut set);
    set
}

/// The integer a bootstrap's input is divided by before it (and multiplied by after): 1 when
/// its range is unknown or within the parameters' range `full`, or when the input has no level
/// to spend on the division (`level` 0); else ⌈range / full⌉.
pub fn range_divisor(range: Option<f64>, full: Option<f64>, level: usize) -> i64 {
    match (range, full) {
        (Some(r), Some(f)) if level >= 1 && f > 0.0 && r > f && (r / f).is_finite() => (r / f).ceil() as i64,
        _ => 1,
    }
}

/// Level reached by x^k and log2 of its scale for an input of scale 1 at `level`, when built by
/// squaring / products of powers of two with a rescale after each product.
fn power_chain(b: &impl Backend, level: usize, k: usize, memo: &mut HashMap<usize, (usize, f64)>) -> (usize, f64) {
    if k == 1 {
        return (level, 0.0);
    }
    if let Some(v) = memo.get(&k) {
        return *v;
    }
    let hi = 1usize << (usize::BITS - 1 - k.leading_zeros());
    let ((la, sa), (lb, sb)) = if hi == k {
        let h = power_chain(b, level, k / 2, memo);
        (h, h)
    } else {
        (power_chain(b, level, hi, memo), power_chain(b, level, k - hi, memo))
    };
    let l = la.min(lb);
    let v = (l - 1, sa + sb - b.modulus(l).log2());
    memo.insert(k, v);
    v
}

/// The scale s at `level` such that x^d built by [`power_chain`] lands exactly on `delta`.
pub fn power_input_scale(b: &impl Backend, level: usize, d: usize, delta: f64) -> f64 {
    let (_, log_rest) = power_chain(b, level, d, &mut HashMap::new());
    ((delta.log2() - log_rest) / d as f64).exp2()
}

fn folded<B: Backend>(
    b: &B,
    x: &B::Ciphertext,
    d: usize,
    negate: bool,
    coeffs: &[Vec<(u32, f64)>],
    slots: usize,
) -> BResult<B::Ciphertext> {
    // Powers of x (x^(2^e) and x^d), each rescaled after its product.
    let mut pw: HashMap<usize, B::Ciphertext> = HashMap::new();
    pw.insert(1, x.clone());
    for k in needed_powers(d) {
        if k == 1 {
            continue;
        }
        let hi = 1usize << (usize::BITS - 1 - k.leading_zeros());
        let p = if hi == k {
            b.square(&pw[&(k / 2)])?
        } else {
            let (u, v) = (&pw[&hi], &pw[&(k - hi)]);
            let l = b.level(u).min(b.level(v));
            b.mul(&b.drop_to_level(u, l)?, &b.drop_to_level(v, l)?)?
        };
        pw.insert(k, b.rescale(&p)?);
    }
    let lead = &pw[&d];
    let (tl, target) = (b.level(lead), b.scale(lead));
    let mut acc = lead.clone();
    let lx = b.level(x);
    for (k, c) in coeffs.iter().enumerate().skip(1) {
        if c.is_empty() {
            continue;
        }
        // b_k ⊙ x^k = (b_k ⊙ x) · Π_{e ∈ bits(k−1)} x^(2^e): first find the plaintext scale
        // that makes the product land exactly on the target scale.
        let bits: Vec<usize> = (0..usize::BITS as usize).filter(|e| (k - 1) >> e & 1 == 1).collect();
        let (mut lvl, mut log_s) = (lx - 1, b.scale(x).log2() - b.modulus(lx).log2());
        for &e in &bits {
            let p = &pw[&(1 << e)];
            let l = lvl.min(b.level(p));
            log_s += b.scale(p).log2() - b.modulus(l).log2();
            lvl = l - 1;
        }
        let ps = (target.log2() - log_s).exp2();
        let mut t = b.rescale(&b.mul_plain(x, &b.encode(&dense(c, slots), lx, ps)?)?)?;
        for &e in &bits {
            let p = &pw[&(1 << e)];
            let l = b.level(&t).min(b.level(p));
            t = b.rescale(&b.mul(&b.drop_to_level(&t, l)?, &b.drop_to_level(p, l)?)?)?;
        }
        let aligned = b.drop_to_level(&t, tl)?;
        let acc_aligned = b.drop_to_level(&acc, tl)?;
        acc = b.add(&acc_aligned, &aligned)?;
    }
    let acc = if coeffs.first().is_some_and(|c0| !c0.is_empty()) {
        let pt = b.encode(&dense(&coeffs[0], slots), tl, b.scale(&acc))?;
        b.add_plain(&acc, &pt)?
    } else {
        acc
    };
    if negate {
        b.negate(&acc)
    } else {
        Ok(acc)
    }
}

fn reduce<B: Backend>(
    b: &B,
    x: &[B::Ciphertext],
    group: &[usize],
    passes: &[(usize, i64)],
    paths: &BTreeMap<i64, Vec<i64>>,
    slots: usize,
) -> BResult<B::Ciphertext> {
    let mut acc = x[group[0]].clone();
    for &i in &group[1..] {
        acc = b.add(&acc, &x[i])?;
    }
    for &(n, stride) in passes {
        let mut p = acc.clone();
        let mut out: Option<B::Ciphertext> = None;
        for (step, kind) in peregrine_gip::Layout::rotate_and_sum_steps(n, stride) {
            let r = if step == 0 { p.clone() } else { rotate(b, paths, &p, step, slots)? };
            if kind == 1 {
                out = Some(accumulate(b, out, r)?);
            } else {
                p = b.add(&p, &r)?;
            }
        }
        acc = out.expect("n >= 1");
    }
    Ok(acc)
}

fn poly<B: Backend>(
    b: &B,
    x: &B::Ciphertext,
    degree: usize,
    coeffs: &[Vec<(u32, f64)>],
    delta: f64,
    slots: usize,
) -> BResult<B::Ciphertext> {
    let powers = power_basis(b, x, degree)?;
    let target = (1..=degree).map(|k| b.level(powers[k].as_ref().expect("built"))).min().expect("degree >= 1") - 1;
    let q = b.modulus(target + 1);
    let mut acc: Option<B::Ciphertext> = None;
    for (k, c) in coeffs.iter().enumerate().skip(1) {
        if c.is_empty() {
            continue;
        }
        let t = b.drop_to_level(powers[k].as_ref().expect("built"), target + 1)?;
        let pt = b.encode(&dense(c, slots), target + 1, delta * q / b.scale(&t))?;
        let term = b.rescale(&b.mul_plain(&t, &pt)?)?;
        acc = Some(accumulate(b, acc, term)?);
    }
    let acc = match acc {
        Some(a) => a,
        None => {
            let z = b.drop_to_level(x, target)?;
            b.sub(&z, &z)?
        }
    };
    match coeffs.first() {
        Some(c0) if !c0.is_empty() => {
            let pt = b.encode(&dense(c0, slots), target, b.scale(&acc))?;
            b.add_plain(&acc, &pt)
        }
        _ => Ok(acc),
    }
}
