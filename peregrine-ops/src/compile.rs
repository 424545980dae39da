//! Compilation of a model graph into packed homomorphic steps.

use std::collections::HashMap;
use std::sync::Arc;

use peregrine_gip::{lower, DiagonalPlan, Gip, Layout, LinearMap};
use peregrine_model::ir::{Activation, Model, Op, INPUT};
use serde::Serialize;

use crate::OpsError;

/// Index of a tensor in [`Program::tensors`].
pub type TensorId = usize;

/// A packed tensor: its shape and where its elements live.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    /// Name (the IR node that produced it, or `input`).
    pub name: String,
    /// Shape without batch axis.
    pub shape: Vec<usize>,
    /// Packing.
    #[serde(skip)]
    pub layout: Layout,
    /// Human description of the packing.
    pub packing: String,
    /// Number of ciphertexts.
    pub ciphertexts: usize,
}

/// What one step computes.
#[derive(Clone, Debug)]
pub enum StepKind {
    /// A composed linear map scheduled as diagonals (one level if it multiplies).
    Linear {
        /// Input tensors.
        inputs: Vec<TensorId>,
        /// The schedule (shared: plans and program copies hold the diagonals once).
        plan: Arc<DiagonalPlan>,
        /// 1 normally. d ≥ 2 when the output feeds a [`StepKind::Square`] (d = 2) or a
        /// [`StepKind::Folded`] of degree d: the output is then produced at the scale s for which
        /// its d-th power, built by repeated squaring and rescaling, lands exactly on Δ.
        power: usize,
    },
    /// `y = ±x² + offset` with the activation's other coefficients folded into the producing
    /// linear step: a quadratic activation in one level, or in none when `lazy`.
    Square {
        /// Input tensor.
        input: TensorId,
        /// Set by the planner: the square is left unrescaled at scale Δ² and the linear steps
        /// that consume it rescale it together with their own product by one prime of about
        /// 2·log2 Δ bits ("tower reuse": two multiplications per prime).
        lazy: bool,
        /// Whether the result is negated (leading coefficients negative).
        negate: bool,
        /// Per ciphertext sparse `(slot, constant)`.
        offset: Vec<Vec<(u32, f64)>>,
    },
    /// Per-slot polynomial `Σ_k coeffs[ct][k] ⊙ x^k` (coefficient vectors sparse per ciphertext).
    Poly {
        /// Input tensor.
        input: TensorId,
        /// Degree.
        degree: usize,
        /// `coeffs[ct][k]` = sparse `(slot, a_k)`.
        coeffs: Vec<Vec<Vec<(u32, f64)>>>,
    },
    /// Rotate-and-sum: output ciphertext j is the sum of input ciphertexts `groups[j]`, then
    /// for each pass `(n, stride)`: `x ← Σ_{i<n} rot(x, i·stride)` by doubling. No level used;
    /// the output is dirty (only its anchor slots are meaningful).
    Reduce {
        /// Input tensor.
        input: TensorId,
        /// Input ciphertexts summed into each output ciphertext.
        groups: Vec<Vec<usize>>,
        /// Rotate-and-sum passes.
        passes: Vec<(usize, i64)>,
    },
    /// `y = ±(x^d + Σ_{k<d} b_k ⊙ x^k)` with the leading coefficient and input scale folded into
    /// the producing linear step: each `b_k ⊙ x^k` is built as `(b_k ⊙ x)·Π x^(2^e)` over the
    /// bits of k − 1, so the whole activation takes ⌈log2 d⌉ levels.
    Folded {
        /// Input tensor.
        input: TensorId,
        /// Degree d ≥ 3.
        degree: usize,
        /// Whether the result is negated (leading coefficients negative).
        negate: bool,
        /// `coeffs[ct][k]` = sparse `(slot, b_k)` for k < d (k = 0: the constant).
        coeffs: Vec<Vec<Vec<(u32, f64)>>>,
    },
    /// Slot-wise product of two tensors packed alike (ciphertext by ciphertext, relinearised
    /// and rescaled: one level). Squeeze-and-excitation gates are first broadcast into the
    /// map's layout by a [`StepKind::Linear`].
    Product {
        /// The two input tensors (same layout).
        inputs: [TensorId; 2],
    },
    /// Bootstrapping of every ciphertext of a tensor (inserted by the planner).
    Bootstrap {
        /// Input tensor.
        input: TensorId,
    },
}

/// One step of a program.
#[derive(Clone, Debug)]
pub struct Step {
    /// Short name (the last IR node it covers).
    pub name: String,
    /// IR nodes fused into this step.
    pub nodes: Vec<String>,
    /// The computation.
    pub kind: StepKind,
    /// Output tensor.
    pub output: TensorId,
}

impl Step {
    /// Input tensors of the step.
    pub fn inputs(&self) -> Vec<TensorId> {
        match &self.kind {
            StepKind::Linear { inputs, .. } => inputs.clone(),
            StepKind::Product { inputs } => inputs.to_vec(),
            StepKind::Poly { input, .. }
            | StepKind::Bootstrap { input }
            | StepKind::Reduce { input, .. }
            | StepKind::Square { input, .. }
            | StepKind::Folded { input, .. } => vec![*input],
        }
    }
    /// Kind name for reports.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            StepKind::Linear { .. } => "linear",
            StepKind::Poly { .. } => "poly",
            StepKind::Bootstrap { .. } => "bootstrap",
            StepKind::Reduce { .. } => "reduce",
            StepKind::Square { .. } => "square",
            StepKind::Folded { .. } => "poly-folded",
            StepKind::Product { .. } => "product",
        }
    }
}

/// A model compiled to packed steps for ciphertexts of `slots` slots.
#[derive(Clone, Debug)]
pub struct Program {
    /// Slots per ciphertext.
    pub slots: usize,
    /// Every tensor; tensor 0 is the model input.
    pub tensors: Vec<TensorInfo>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The output tensor.
    pub output: TensorId,
    /// IR node name → tensor holding its value, for nodes that were materialised.
    pub node_tensors: HashMap<String, TensorId>,
}

/// A linear map not yet materialised: its input tensors and the IR nodes it covers.
struct Pending {
    /// 1, or the degree of the [`StepKind::Square`] / [`StepKind::Folded`] consumer it is materialised for.
    power: usize,
    map: LinearMap,
    inputs: Vec<TensorId>,
    nodes: Vec<String>,
}

enum Value {
    Ready(TensorId),
    Pending(Pending),
}

struct Compiler<'a> {
    model: &'a Model,
    slots: usize,
    tensors: Vec<TensorInfo>,
    steps: Vec<Step>,
    values: Vec<Option<Value>>,
    consumers: Vec<usize>,
    /// See [`compile_with`].
    large_composition: usize,
}

fn f64s(model: &Model, name: &str) -> Vec<f64> {
    model.weight(name).iter().map(|&v| v as f64).collect()
}

/// Compiles `model` for ciphertexts of `slots` slots.
pub fn compile(model: &Model, slots: usize) -> Result<Program, OpsError> {
    compile_with(model, slots, LARGE_COMPOSITION)
}

/// [`compile`] with another threshold for declining a composition: a linear map is not
/// composed into its consumer when the result would exceed `large_composition` coefficients
/// and [`COMPOSITION_GROWTH`] times both maps (the input is then scheduled as its own step).
pub fn compile_with(model: &Model, slots: usize, large_composition: usize) -> Result<Program, OpsError> {
    let g = model.graph();
    let mut consumers = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for i in &n.inputs {
            if let Some(j) = model.node_index(i) {
                consumers[j] += 1;
            }
        }
    }
    let out_idx = model.node_index(&g.output).expect("validated");
    consumers[out_idx] += 1; // the output is always materialised
    let input_shape = g.input.shape.clone();
    let gip = Gip::fresh(input_shape[0], input_shape[1], input_shape[2], slots);
    let layout = gip.layout().replicated();
    let mut c = Compiler {
        model,
        slots,
        tensors: vec![TensorInfo {
            name: INPUT.into(),
            shape: input_shape,
            packing: layout.describe(),
            ciphertexts: layout.ciphertexts,
            layout,
        }],
        steps: Vec::new(),
        values: (0..g.nodes.len()).map(|_| None).collect(),
        consumers,
        large_composition,
    };
    let mut node_tensors = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let started = std::time::Instant::now();
        let v = c.node(i)?;
        if crate::exec::profile::on() {
            let pending = match &v {
                Value::Pending(p) => format!("pending, {} coefficients", p.map.entries.len()),
                Value::Ready(_) => "ready".into(),
            };
            eprintln!(
                "compile node {}: {pending}, {:.1} s; resident {} MiB",
                node.name,
                started.elapsed().as_secs_f64(),
                crate::exec::profile::status_mib("VmRSS:")
            );
        }
        c.values[i] = Some(v);
        if i == out_idx {
            let t = c.materialize(i)?;
            node_tensors.insert(node.name.clone(), t);
        }
    }
    for (i, node) in g.nodes.iter().enumerate() {
        if let Some(Value::Ready(t)) = &c.values[i] {
            node_tensors.insert(node.name.clone(), *t);
        }
    }
    let output = node_tensors[&g.output];
    Ok(Program { slots, tensors: c.tensors, steps: c.steps, output, node_tensors })
}

impl Compiler<'_> {
    fn shape_of(&self, name: &str) -> Vec<usize> {
        if name == INPUT {
            self.model.graph().input.shape.clone()
        } else {
            self.model.shape(self.model.node_index(name).expect("validated")).clone()
        }
    }

    /// The value of an input as a pending map over ready tensors (identity if ready).
    fn as_pending(&mut self, name: &str, consumer_absorbs: bool) -> Result<Pending, OpsError> {
        if name == INPUT {
            return Ok(Pending {
                power: 1,
                map: LinearMap::identity(self.tensors[0].layout.len()),
                inputs: vec![0],
                nodes: vec![],
            });
        }
        let j = self.model.node_index(name).expect("validated");
        if consumer_absorbs && self.consumers[j] == 1 && matches!(self.values[j], Some(Value::Pending(_))) {
            // The only consumer takes the pending map over (no copy of a possibly large map).
            if let Some(Value::Pending(p)) = self.values[j].take() {
                return Ok(p);
            }
        }
        let t = self.materialize(j)?;
        Ok(Pending { power: 1, map: LinearMap::identity(self.tensors[t].layout.len()), inputs: vec![t], nodes: vec![] })
    }

    /// Node `i`'s linear map, from the lowering every backend shares.
    fn lowered(&self, i: usize) -> Result<LinearMap, OpsError> {
        match lower::node_map(self.model, i) {
            Ok(Some(map)) => Ok(map),
            _ => Err(OpsError::Unsupported(format!("node '{}' is not linear", self.model.graph().nodes[i].name))),
        }
    }

    fn ready(&mut self, name: &str) -> Result<TensorId, OpsError> {
        if name == INPUT {
            return Ok(0);
        }
        let j = self.model.node_index(name).expect("validated");
        self.materialize(j)
    }

    /// Handles one IR node, returning its value.
    fn node(&mut self, i: usize) -> Result<Value, OpsError> {
        let node = &self.model.graph().nodes[i];
        let name = node.name.clone();
        let in_shape = self.shape_of(&node.inputs[0]);
        let out_shape = self.model.shape(i).clone();
        let m = self.model;
        let single = |map: LinearMap, this: &mut Self| -> Result<Value, OpsError> {
            let mut p = this.as_pending(&node.inputs[0], true)?;
            if composition_too_large(&map, &p.map, this.large_composition) {
                // Composing would multiply the coefficients (a 5×5 pool into a convolution:
                // 25 times as many diagonals and rotations): schedule the input on its own.
                let j = m.node_index(&node.inputs[0]).expect("an input is never pending");
                if crate::exec::profile::on() {
                    eprintln!(
                        "compile node {name}: its input {} is scheduled on its own (composing would make {} coefficients from {} and {})",
                        node.inputs[0],
                        map.substitute_bound(&[Some(&p.map)]),
                        map.entries.len(),
                        p.map.entries.len()
                    );
                }
                this.values[j] = Some(Value::Pending(p));
                let t = this.materialize(j)?;
                p = Pending {
                    power: 1,
                    map: LinearMap::identity(this.tensors[t].layout.len()),
                    inputs: vec![t],
                    nodes: vec![],
                };
            }
            p.map = map.after(&p.map);
            p.nodes.push(name.clone());
            Ok(Value::Pending(p))
        };
        let chw = |s: &[usize]| -> (usize, usize, usize) {
            (s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1))
        };
        let (ci, hi, wi) = chw(&in_shape);
        match &node.op {
            Op::Conv2d(_)
            | Op::ConvTranspose2d(_)
            | Op::BatchNorm(_)
            | Op::AvgPool(_)
            | Op::Linear(_)
            | Op::Upsample { .. }
            | Op::SubsampleChannelPad { .. }
            | Op::Flatten => single(self.lowered(i)?, self),
            Op::GlobalAvgPool => {
                // Sum each channel by rotations (no level), then let the next linear map read the
                // per-channel sums at their anchor slots: far fewer diagonals than a dense map.
                let t = self.ready(&node.inputs[0])?;
                let layout = self.tensors[t].layout.clone();
                match layout.gip.clone() {
                    Some(g) if !layout.dirty && hi * wi > 1 => {
                        let cps = g.cts_per_submap();
                        let subs = g.split * g.split;
                        let groups = (0..cps).map(|j| (0..subs).map(|sub| sub * cps + j).collect()).collect();
                        let passes = vec![
                            (wi.div_ceil(g.split), g.mux as i64),
                            (hi.div_ceil(g.split), (g.mux * g.row_stride) as i64),
                        ];
                        let positions = (0..ci).map(|c| g.position(c, 0, 0)).collect();
                        // Rotations and sums keep the input's copies: the sums repeat as it does.
                        let sum_layout = Layout {
                            positions,
                            ciphertexts: cps,
                            slots: self.slots,
                            gip: None,
                            dirty: true,
                            replicas: layout.replicas,
                        };
                        let sum = self.new_tensor(&format!("{name}#sum"), vec![ci, 1, 1], sum_layout);
                        self.steps.push(Step {
                            name: format!("{name}#sum"),
                            nodes: vec![name.clone()],
                            kind: StepKind::Reduce { input: t, groups, passes },
                            output: sum,
                        });
                        let mut mean = LinearMap::affine(ci, 1, &vec![1.0 / (hi * wi) as f64; ci], &vec![0.0; ci]);
                        mean.bias = None;
                        Ok(Value::Pending(Pending { power: 1, map: mean, inputs: vec![sum], nodes: vec![name] }))
                    }
                    _ => single(self.lowered(i)?, self),
                }
            }
            Op::Add | Op::Concat => {
                let outer = self.lowered(i)?;
                let mut subs = Vec::new();
                let mut ids = Vec::new();
                let mut nodes = Vec::new();
                for n in &node.inputs {
                    let p = self.as_pending(n, true)?;
                    ids.extend(p.inputs.iter().copied());
                    nodes.extend(p.nodes.iter().cloned());
                    subs.push(p.map);
                }
                let combined = outer.substitute(&subs.iter().map(Some).collect::<Vec<_>>());
                let (map, inputs) = combined.merge_inputs(&ids);
                nodes.push(name.clone());
                Ok(Value::Pending(Pending { power: 1, map, inputs, nodes }))
            }
            Op::Activation(Activation::Poly { coeffs, input_scale, .. }) => {
                let cm = m.weight(coeffs);
                let (channels, full_terms) = (cm.shape()[0], cm.shape()[1]);
                let full: Vec<f64> = cm.iter().map(|&v| v as f64).collect();
                // Leading coefficients that no input in range can feel (an odd function's even
                // terms, fitted as 1e-18) are dropped: folded, they would divide the others by
                // their vanishing root.
                let terms = effective_terms(&full, channels, full_terms);
                let a: Vec<f64> =
                    (0..channels).flat_map(|c| full[c * full_terms..c * full_terms + terms].to_vec()).collect();
                let hw = hi * wi;
                let scale = input_scale.as_ref().map(|s| f64s(m, s));
                if let Some(v) = self.try_square(i, &a, channels, hw, scale.as_deref())? {
                    return Ok(v);
                }
                if let Some(v) = self.try_folded(i, &a, channels, terms, hw, scale.as_deref())? {
                    return Ok(v);
                }
                // Fold the per-channel input scale into the producing linear map when it is ours alone.
                let mut folded = false;
                let t = match (&scale, &node.inputs[0]) {
                    (Some(s), n) if n != INPUT && self.consumers[m.node_index(n).expect("validated")] == 1 && matches!(self.values[m.node_index(n).expect("validated")], Some(Value::Pending(_))) => {
                        let mut p = self.as_pending(n, true)?;
                        p.map = LinearMap::affine(channels, hw, s, &vec![0.0; channels]).after(&p.map);
                        let j = m.node_index(n).expect("validated");
                        self.values[j] = Some(Value::Pending(p));
                        folded = true;
                        let t = self.materialize(j)?;
                        // The tensor now holds s·x, not the node's value: name it so.
                        self.tensors[t].name = format!("{n}#scaled");
                        t
                    }
                    _ => self.ready(&node.inputs[0])?,
                };
                let t = self.cleaned(t)?;
                let layout = self.tensors[t].layout.clone();
                let mut per_ct = vec![vec![Vec::new(); terms]; layout.ciphertexts];
                for (idx, ct, slot) in layout.copies() {
                    let ch = (idx / hw).min(channels - 1);
                    let s = match (&scale, folded) {
                        (Some(s), false) => s[ch],
                        _ => 1.0,
                    };
                    for k in 0..terms {
                        let v = a[ch * terms + k] * s.powi(k as i32);
                        if v != 0.0 {
                            per_ct[ct as usize][k].push((slot, v));
                        }
                    }
                }
                let out = self.new_tensor(&name, out_shape, layout);
                self.steps.push(Step {
                    name: name.clone(),
                    nodes: vec![name],
                    kind: StepKind::Poly { input: t, degree: terms - 1, coeffs: per_ct },
                    output: out,
                });
                Ok(Value::Ready(out))
            }
            Op::Activation(_) => Err(OpsError::Unsupported(format!(
                "node '{}' is a {} activation, which CKKS cannot evaluate; convert the model to polynomial activations first (peregrine convert / peregrine finetune)",
                name,
                node.op.kind().to_uppercase()
            ))),
            Op::Mul => self.product(i),
            Op::MaxPool(_) => Err(OpsError::Unsupported(format!(
                "node '{name}' is max pooling, which CKKS cannot evaluate; replace it by average pooling (peregrine convert does)"
            ))),
        }
    }

    /// A product of two tensors (`Op::Mul`): the map operand materialised clean, the other
    /// brought into the same layout — a `[C, 1, 1]` gate broadcast over H and W by a linear
    /// step (which also absorbs the gate's pending map) — then one ciphertext product per
    /// ciphertext.
    fn product(&mut self, i: usize) -> Result<Value, OpsError> {
        let m = self.model;
        let node = &m.graph().nodes[i];
        let name = node.name.clone();
        let out_shape = m.shape(i).clone();
        let map_side = usize::from(self.shape_of(&node.inputs[0]) != out_shape);
        let (map_in, gate_in) = (&node.inputs[map_side], &node.inputs[1 - map_side]);
        let x = self.ready(map_in)?;
        let x = self.cleaned(x)?;
        let layout = self.tensors[x].layout.clone();
        let n_out: usize = out_shape.iter().product();
        let gate_len: usize = self.shape_of(gate_in).iter().product();
        let broadcast = if gate_len == n_out {
            LinearMap::identity(n_out)
        } else {
            LinearMap::broadcast(gate_len, n_out / gate_len.max(1))
        };
        let mut p = self.as_pending(gate_in, true)?;
        p.map = broadcast.after(&p.map);
        let same = p.map.is_identity() && p.inputs.len() == 1 && self.tensors[p.inputs[0]].layout == layout;
        let g = if same {
            p.inputs[0]
        } else {
            let step = format!("{name}#operand");
            let ins: Vec<&Layout> = p.inputs.iter().map(|t| &self.tensors[*t].layout).collect();
            let plan = DiagonalPlan::with_passthrough(&p.map, &ins, &layout, true)
                .map_err(|source| OpsError::Layout { step: step.clone(), source })?;
            trace_linear(&step, &p.map, &plan);
            let t = self.new_tensor(&step, out_shape.clone(), layout.clone());
            self.steps.push(Step {
                name: step,
                nodes: p.nodes,
                kind: StepKind::Linear { inputs: p.inputs, plan: Arc::new(plan), power: 1 },
                output: t,
            });
            t
        };
        let out = self.new_tensor(&name, out_shape, layout);
        self.steps.push(Step {
            name: name.clone(),
            nodes: vec![name],
            kind: StepKind::Product { inputs: [x, g] },
            output: out,
        });
        Ok(Value::Ready(out))
    }

    /// Whether activation node `i` can fold into its producer: the leading coefficients `lead`
    /// share one sign and the input is a pending linear map used by nothing else. Returns the
    /// producer's index and whether the sign is positive.
    fn foldable(&self, i: usize, lead: &[f64]) -> Option<(usize, bool)> {
        let positive = lead.iter().all(|v| *v > 0.0);
        if !(positive || lead.iter().all(|v| *v < 0.0)) {
            return None;
        }
        let j = self.model.node_index(&self.model.graph().nodes[i].inputs[0])?;
        (self.consumers[j] == 1 && matches!(self.values[j], Some(Value::Pending(_)))).then_some((j, positive))
    }

    /// A degree-2 activation whose leading coefficients share one sign, fed by a linear map it
    /// alone consumes: fold `√|a2|·(s·x + a1/(2·a2))` into that map and evaluate
    /// `±x'² + (a0 − a1²/(4·a2))` — one level instead of two.
    fn try_square(
        &mut self,
        i: usize,
        a: &[f64],
        channels: usize,
        hw: usize,
        scale: Option<&[f64]>,
    ) -> Result<Option<Value>, OpsError> {
        let m = self.model;
        let node = &m.graph().nodes[i];
        if a.len() != channels * 3 {
            return Ok(None);
        }
        let a2: Vec<f64> = (0..channels).map(|c| a[c * 3 + 2]).collect();
        let Some((j, positive)) = self.foldable(i, &a2) else { return Ok(None) };
        let input = &node.inputs[0];
        let s = |c: usize| scale.map_or(1.0, |s| s[c]);
        let mul: Vec<f64> = (0..channels).map(|c| a2[c].abs().sqrt() * s(c)).collect();
        let shift: Vec<f64> = (0..channels).map(|c| a2[c].abs().sqrt() * a[c * 3 + 1] / (2.0 * a2[c])).collect();
        let constant: Vec<f64> = (0..channels).map(|c| a[c * 3] - a[c * 3 + 1].powi(2) / (4.0 * a2[c])).collect();
        let mut p = self.as_pending(input, true)?;
        p.map = LinearMap::affine(channels, hw, &mul, &shift).after(&p.map);
        p.power = 2;
        self.values[j] = Some(Value::Pending(p));
        let t = self.materialize(j)?;
        self.tensors[t].name = format!("{input}#folded");
        let layout = self.tensors[t].layout.clone();
        let mut offset = vec![Vec::new(); layout.ciphertexts];
        for (idx, ct, slot) in layout.copies() {
            let v = constant[(idx / hw).min(channels - 1)];
            if v != 0.0 {
                offset[ct as usize].push((slot, v));
            }
        }
        let out = self.new_tensor(&node.name, m.shape(i).clone(), layout);
        self.steps.push(Step {
            name: node.name.clone(),
            nodes: vec![node.name.clone()],
            kind: StepKind::Square { input: t, lazy: false, negate: !positive, offset },
            output: out,
        });
        Ok(Some(Value::Ready(out)))
    }

    /// A degree-d ≥ 3 activation whose leading coefficients share one sign, fed by a linear map
    /// it alone consumes: fold `|c_d|^(1/d) · s` into that map so the leading term is a bare
    /// `x^d`, and evaluate in ⌈log2 d⌉ levels (see [`StepKind::Folded`]).
    fn try_folded(
        &mut self,
        i: usize,
        a: &[f64],
        channels: usize,
        terms: usize,
        hw: usize,
        scale: Option<&[f64]>,
    ) -> Result<Option<Value>, OpsError> {
        let m = self.model;
        let node = &m.graph().nodes[i];
        let d = terms - 1;
        if d < 3 {
            return Ok(None);
        }
        let lead: Vec<f64> = (0..channels).map(|c| a[c * terms + d]).collect();
        // x' = α·u carries the same absolute error as u but α times its magnitude: a small α
        // loses log2(1/α) bits, more than the level the fold saves is worth.
        if lead.iter().any(|v| v.abs().powf(1.0 / d as f64) < MIN_FOLD_ROOT) {
            return Ok(None);
        }
        let Some((j, positive)) = self.foldable(i, &lead) else { return Ok(None) };
        let input = &node.inputs[0];
        let sign = if positive { 1.0 } else { -1.0 };
        let alpha: Vec<f64> = lead.iter().map(|v| v.abs().powf(1.0 / d as f64)).collect();
        let mul: Vec<f64> = (0..channels).map(|c| alpha[c] * scale.map_or(1.0, |s| s[c])).collect();
        let mut p = self.as_pending(input, true)?;
        let mut fold = LinearMap::affine(channels, hw, &mul, &vec![0.0; channels]);
        fold.bias = None;
        p.map = fold.after(&p.map);
        p.power = d;
        self.values[j] = Some(Value::Pending(p));
        let t = self.materialize(j)?;
        self.tensors[t].name = format!("{input}#folded");
        let layout = self.tensors[t].layout.clone();
        let mut coeffs = vec![vec![Vec::new(); d]; layout.ciphertexts];
        for (idx, ct, slot) in layout.copies() {
            let c = (idx / hw).min(channels - 1);
            for k in 0..d {
                // c_k (s·x)^k = (c_k / α^k) x'^k, and the result is sign·(x'^d + Σ sign·c_k/α^k x'^k).
                let v = sign * a[c * terms + k] / alpha[c].powi(k as i32);
                if v != 0.0 {
                    coeffs[ct as usize][k].push((slot, v));
                }
            }
        }
        let out = self.new_tensor(&node.name, m.shape(i).clone(), layout);
        self.steps.push(Step {
            name: node.name.clone(),
            nodes: vec![node.name.clone()],
            kind: StepKind::Folded { input: t, degree: d, negate: !positive, coeffs },
            output: out,
        });
        Ok(Some(Value::Ready(out)))
    }

    fn new_tensor(&mut self, name: &str, shape: Vec<usize>, layout: Layout) -> TensorId {
        self.tensors.push(TensorInfo {
            name: name.into(),
            shape,
            packing: layout.describe(),
            ciphertexts: layout.ciphertexts,
            layout,
        });
        self.tensors.len() - 1
    }

    /// A clean copy of a dirty tensor (identity map through masks), or the tensor itself.
    fn cleaned(&mut self, t: TensorId) -> Result<TensorId, OpsError> {
        if !self.tensors[t].layout.dirty {
            return Ok(t);
        }
        let info = self.tensors[t].clone();
        let layout = self.choose_layout(&info.shape, &[]);
        let map = LinearMap::identity(info.layout.len());
        let name = format!("{}#clean", info.name);
        let plan = DiagonalPlan::new(&map, &[&info.layout], &layout)
            .map_err(|source| OpsError::Layout { step: name.clone(), source })?;
        trace_linear(&name, &map, &plan);
        let out = self.new_tensor(&name, info.shape.clone(), layout);
        self.steps.push(Step {
            name: name.clone(),
            nodes: vec![],
            kind: StepKind::Linear { inputs: vec![t], plan: Arc::new(plan), power: 1 },
            output: out,
        });
        Ok(out)
    }

    /// Packing for a new tensor of `shape` computed from `inputs`, with as many copies as fit
    /// while they stay free: a copy every P_out slots of an output read from inputs repeating
    /// every P_in > P_out slots multiplies the diagonals by P_in / P_out, accepted up to 2 for
    /// feature maps (the layers after a stride-2 step then read fewer diagonals) and not for
    /// vectors (classifier heads: nothing reads them again).
    fn choose_layout(&self, shape: &[usize], inputs: &[TensorId]) -> Layout {
        let mut layout = self.natural_layout(shape, inputs);
        let p_in = inputs.iter().map(|t| self.tensors[*t].layout.period()).max().unwrap_or(0);
        let ratio = if shape.len() == 3 { 2 } else { 1 };
        while layout.replicas > 1 && layout.period() * ratio < p_in {
            layout.replicas /= 2;
        }
        layout
    }

    /// [`Compiler::choose_layout`] before limiting the copies.
    fn natural_layout(&self, shape: &[usize], inputs: &[TensorId]) -> Layout {
        if shape.len() != 3 {
            return Layout::vector(shape.iter().product(), self.slots).replicated();
        }
        let (c, h, w) = (shape[0], shape[1], shape[2]);
        let reference =
            inputs.iter().filter_map(|t| self.tensors[*t].layout.gip.clone()).find(|g| g.height > 1 || g.width > 1);
        let gip = match reference {
            None => Gip::fresh(c, h, w, self.slots),
            Some(r) if (r.height, r.width) == (h, w) => r.with_channels(c),
            Some(r) => {
                let s = r.height / h.max(1);
                let u = h / r.height.max(1);
                if s > 1 && r.height.div_ceil(s) == h && r.width.div_ceil(s) == w {
                    r.strided(c, h, w, s)
                } else if u > 1 && r.height * u == h && r.width * u == w {
                    r.upsampled(c, h, w, u)
                } else {
                    Gip::fresh(c, h, w, self.slots)
                }
            }
        };
        match gip.validate() {
            Ok(()) => gip.layout().replicated(),
            Err(_) => Gip::fresh(c, h, w, self.slots).layout().replicated(),
        }
    }

    /// Turns node `j`'s value into a tensor (scheduling its pending map if needed).
    fn materialize(&mut self, j: usize) -> Result<TensorId, OpsError> {
        match self.values[j].take() {
            Some(Value::Ready(t)) => {
                self.values[j] = Some(Value::Ready(t));
                Ok(t)
            }
            Some(Value::Pending(p)) => {
                let name = self.model.graph().nodes[j].name.clone();
                let shape = self.model.shape(j).clone();
                let out = if p.map.is_identity()
                    && p.inputs.len() == 1
                    && self.tensors[p.inputs[0]].layout.len() == p.map.out_len
                {
                    // A pure relabelling (flatten): reuse the input's slots.
                    let layout = self.tensors[p.inputs[0]].layout.clone();
                    let t = self.new_tensor(&name, shape, layout.clone());
                    let plan = DiagonalPlan::with_passthrough(&p.map, &[&layout], &layout, p.power == 1)
                        .map_err(|source| OpsError::Layout { step: name.clone(), source })?;
                    trace_linear(&name, &p.map, &plan);
                    self.steps.push(Step {
                        name: name.clone(),
                        nodes: p.nodes,
                        kind: StepKind::Linear { inputs: p.inputs, plan: Arc::new(plan), power: p.power },
                        output: t,
                    });
                    t
                } else {
                    let layout = self.choose_layout(&shape, &p.inputs);
                    let ins: Vec<&Layout> = p.inputs.iter().map(|t| &self.tensors[*t].layout).collect();
                    let plan = DiagonalPlan::with_passthrough(&p.map, &ins, &layout, p.power == 1)
                        .map_err(|source| OpsError::Layout { step: name.clone(), source })?;
                    trace_linear(&name, &p.map, &plan);
                    let t = self.new_tensor(&name, shape, layout);
                    self.steps.push(Step {
                        name: name.clone(),
                        nodes: p.nodes,
                        kind: StepKind::Linear { inputs: p.inputs, plan: Arc::new(plan), power: p.power },
                        output: t,
                    });
                    t
                };
                self.values[j] = Some(Value::Ready(out));
                Ok(out)
            }
            None => Err(OpsError::Absorbed(self.model.graph().nodes[j].name.clone())),
        }
    }
}

/// [`compile`] declines a composition of more coefficients than this (about 400 MB while it
/// is built) when it also grows by [`COMPOSITION_GROWTH`].
pub const LARGE_COMPOSITION: usize = 1 << 24;
/// A declined composition holds more than this many times the coefficients of either map.
pub const COMPOSITION_GROWTH: usize = 4;

/// Whether `outer ∘ inner` should not be built: over `limit` coefficients and
/// [`COMPOSITION_GROWTH`] times the larger of the two maps (a 5×5 pool composed into a
/// convolution: 25 times its coefficients). Then one more level for the inner map is cheaper
/// than the composition's diagonals, rotations and memory.
fn composition_too_large(outer: &LinearMap, inner: &LinearMap, limit: usize) -> bool {
    if inner.is_identity() {
        return false;
    }
    let bound = outer.substitute_bound(&[Some(inner)]);
    bound > limit && bound > COMPOSITION_GROWTH * outer.entries.len().max(inner.entries.len())
}

/// With `PEREGRINE_PROFILE` set, one line per scheduled linear map on stderr: its
/// coefficients, its plan's diagonal bytes and rotations, and the process's resident memory
/// (what a large network's compilation holds, step by step).
fn trace_linear(step: &str, map: &LinearMap, plan: &DiagonalPlan) {
    if crate::exec::profile::on() {
        eprintln!(
            "compile step {step}: {} coefficients, {:.1} MiB of diagonals, {} rotations; resident {} MiB",
            map.entries.len(),
            plan.diagonal_bytes() as f64 / (1u64 << 20) as f64,
            plan.rotation_count(),
            crate::exec::profile::status_mib("VmRSS:"),
        );
    }
}

/// The smallest |c_d|^(1/d) for which a degree-d ≥ 3 activation is folded into its producer
/// (see `try_folded`): the fold costs log2(1/root) bits of the activation's input, at most 6.
pub const MIN_FOLD_ROOT: f64 = 1.0 / 64.0;

/// Bound on a polynomial activation's normalised input |u| assumed when judging whether a
/// leading coefficient matters (inputs are normalised to about [−1, 1]; 4 leaves a margin).
const NORMALISED_INPUT_BOUND: f64 = 4.0;

/// Terms (degree + 1) of per-channel polynomial coefficients `a` (`channels` rows of `terms`)
/// once leading coefficients negligible in every channel are dropped: |c_k|·U^k below 2^-45
/// of the largest |c_j|·U^j (U = [`NORMALISED_INPUT_BOUND`]); at least the constant term.
pub fn effective_terms(a: &[f64], channels: usize, terms: usize) -> usize {
    let negligible = |k: usize| {
        (0..channels).all(|c| {
            let row = &a[c * terms..(c + 1) * terms];
            let size = |j: usize| row[j].abs() * NORMALISED_INPUT_BOUND.powi(j as i32);
            let largest = (0..terms).map(size).fold(0f64, f64::max);
            size(k) <= largest * (-45f64).exp2()
        })
    };
    let mut t = terms;
    while t > 1 && negligible(t - 1) {
        t -= 1;
    }
    t
}
