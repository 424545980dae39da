//! The one encrypted run loop, for every backend: keys, then per image encrypt → infer →
//! decrypt, compared with the cleartext reference executor (and with the backend's exact
//! simulation when it has one), with timing, peak memory and an optional precision trace.

use std::collections::HashMap;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use peregrine_model::reference::Reference;
use peregrine_model::Model;
use serde::{Deserialize, Serialize};

use crate::engine::{CompiledModel, Decrypted, StepEvent, StepSeconds};
use crate::error::Result;
use crate::memory::peak_rss_bytes;

/// Preprocessed inputs (C-H-W order, one vector each) and their labels, if known.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// One preprocessed image each.
    pub images: Vec<Vec<f64>>,
    /// Its label, when the data set has one.
    pub labels: Vec<Option<u8>>,
}

impl Inputs {
    /// The first `limit` images of a CIFAR-10 batch file, preprocessed for `input`.
    pub fn from_batch(data: &std::path::Path, limit: usize, input: &peregrine_model::ir::InputSpec) -> Result<Self> {
        let imgs = peregrine_data::load_cifar10(data, Some(limit))?;
        Ok(Inputs {
            images: peregrine_data::preprocessed_rows(&imgs, input)?,
            labels: imgs.labels.iter().map(|l| Some(*l)).collect(),
        })
    }
    /// One PNG or JPEG image (resized when the model allows it), preprocessed for `input`.
    pub fn from_image(path: &std::path::Path, input: &peregrine_model::ir::InputSpec) -> Result<Self> {
        let pixels = peregrine_data::load_image(path, input)?;
        let x = peregrine_data::preprocess::<f64>(&pixels, 1, input)?;
        Ok(Inputs { images: vec![x.iter().copied().collect()], labels: vec![None] })
    }
}

/// How one image went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageReport {
    /// Index in the inputs.
    pub index: usize,
    /// Label, when known.
    pub label: Option<u8>,
    /// The encrypted run's prediction (None when it failed).
    pub packed_prediction: Option<usize>,
    /// The cleartext reference's prediction.
    pub reference_prediction: usize,
    /// Whether the two agree.
    pub agree: bool,
    /// Largest |encrypted − reference| logit (None when the run failed).
    pub max_abs_logit_error: Option<f64>,
    /// Seconds of encryption, inference and decryption.
    pub seconds: f64,
    /// Why the encrypted run failed.
    pub error: Option<String>,
    /// Comparison with the backend's exact simulation, for backends that have one.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationCheck>,
    /// Bootstraps performed, for backends that count them per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstraps: Option<usize>,
    /// The decrypted output (client side), for decoding it further — detections, masks, an
    /// annotated photo; not serialised.
    #[serde(skip)]
    pub decrypted: Option<Vec<f64>>,
    /// The cleartext reference's output, for comparing decodings; not serialised.
    #[serde(skip)]
    pub reference: Vec<f64>,
}

/// An encrypted result against the backend's exact simulation of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationCheck {
    /// The simulation's prediction.
    pub quantised_prediction: usize,
    /// Whether the encrypted prediction equals it.
    pub agree_quantised: bool,
    /// Whether every output is identical to the simulation's.
    pub identical_to_simulation: bool,
    /// Largest output difference from the simulation, in output units.
    pub output_units_from_simulation: i64,
    /// The simulation's gap between its two largest logits (a close call when small).
    pub simulation_margin: f64,
}

/// Totals of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Images run.
    pub images: usize,
    /// Encrypted predictions equal to the reference's.
    pub agree: usize,
    /// Images whose encrypted run failed.
    pub failed: usize,
    /// Encrypted predictions equal to the label.
    pub packed_correct: usize,
    /// Largest logit error over the images that ran.
    pub max_abs_logit_error: f64,
    /// Mean seconds per image that ran.
    pub mean_seconds_per_image: f64,
    /// Seconds to compile and plan.
    pub plan_seconds: f64,
    /// Seconds of key generation.
    pub keygen_seconds: f64,
    /// Size of the serialised evaluation keys.
    pub evaluation_key_bytes: u64,
    /// Peak resident memory of the process (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// The plan's cost figures.
    pub cost: serde_json::Value,
    /// Against the backend's exact simulation, for backends that have one.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationSummary>,
}

/// Totals against the backend's exact simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationSummary {
    /// Encrypted predictions equal to the simulation's.
    pub agree_quantised: usize,
    /// Images whose outputs are identical to the simulation's.
    pub identical_to_simulation: usize,
    /// Largest output difference from the simulation, in output units.
    pub max_output_units_from_simulation: i64,
    /// Real value of one output unit.
    pub output_step: f64,
    /// Simulation predictions equal to the label.
    pub quantised_correct: usize,
}

/// Precision of one step on the first image (`--trace`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// The step.
    pub step: String,
    /// Largest |decrypted − reference|.
    pub max_abs_error: f64,
    /// −log2 of the error relative to the largest reference value.
    pub precision_bits: f64,
}

/// Everything a run reports (`peregrine run --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Model name.
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Security level of the parameters (None: not secure).
    pub security_bits: Option<u32>,
    /// Backend-specific facts (e.g. the tfhe set, bits and activation mode).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Per image.
    pub images: Vec<ImageReport>,
    /// Totals.
    pub summary: Summary,
    /// Precision per step on the first image, when traced.
    #[serde(default)]
    pub trace: Vec<TraceRow>,
    /// Mean seconds per step.
    #[serde(default)]
    pub step_seconds: Vec<StepSeconds>,
}

/// What a run tells its caller while it goes (progress bars, log lines).
pub trait Observer {
    /// Keys are ready; `shared` says the server shares the client's keys in memory.
    fn keys_ready(&mut self, _key_bytes: u64, _shared: bool) {}
    /// A step of image `image` finished.
    fn step(&mut self, _image: usize, _event: &StepEvent) {}
    /// Image `report.index` (of `total`) finished.
    fn image_done(&mut self, _report: &ImageReport, _total: usize) {}
}

/// An observer that observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// The index of the largest value (the first on ties; 0 for an empty slice).
pub fn argmax(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[b] {
            b = i;
        }
    }
    b
}

/// The gap between the two largest values (0 for fewer than two).
pub fn top_two_gap(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    if s.len() < 2 {
        0.0
    } else {
        s[0] - s[1]
    }
}

/// Largest |a − b| over two vectors.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Runs `inputs` through `compiled` (for `model`) and the reference; `plan_seconds` is what
/// compiling took. Failures of single images are reported in their rows, not returned.
pub fn run(
    model: &Model,
    compiled: &dyn CompiledModel,
    inputs: &Inputs,
    trace: bool,
    plan_seconds: f64,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let t = Instant::now();
    let client = compiled.keygen()?;
    let local = client.local_server()?;
    let keygen_seconds = t.elapsed().as_secs_f64();
    observer.keys_ready(local.key_bytes, local.shared);
    let reference = Reference::<f64>::new(model);
    let shape = &model.graph().input.shape;
    let n = inputs.images.len();
    let mut images = Vec::with_capacity(n);
    let mut step_totals: Vec<StepSeconds> = Vec::new();
    let mut trace_rows = Vec::new();
    for (i, x) in inputs.images.iter().enumerate() {
        let xin = ArrayD::from_shape_vec(IxDyn(&[1, shape[0], shape[1], shape[2]]), x.clone())
            .map_err(|e| peregrine_model::ModelError::Shape(e.to_string()))?;
        let traced = trace && i == 0;
        let mut nodes: HashMap<String, Vec<f64>> = HashMap::new();
        let want: Vec<f64> = if traced {
            reference.run_inspect(&xin, |k, v| {
                nodes.insert(model.graph().nodes[k].name.clone(), v.iter().copied().collect());
            })?
        } else {
            reference.run(&xin)?
        }
        .iter()
        .copied()
        .collect();
        let simulated = compiled.simulate(x);
        let t = Instant::now();
        let result = (|| -> Result<(Decrypted, crate::engine::InferStats)> {
            let enc = client.encrypt(x)?;
            let (out, stats) = local.server.infer(enc, traced, &mut |ev: StepEvent| {
                if traced {
                    if let (Some(r), Some(Ok(got))) = (nodes.get(&ev.node), client.decrypt_step(&ev)) {
                        let err = max_abs_diff(&got, r);
                        let mag = r.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1e-30);
                        trace_rows.push(TraceRow {
                            step: ev.name.clone(),
                            max_abs_error: err,
                            precision_bits: -(err / mag).max(1e-300).log2(),
                        });
                    }
                }
                observer.step(i, &ev);
            })?;
            Ok((client.decrypt(&out)?, stats))
        })();
        let seconds = t.elapsed().as_secs_f64();
        let reference_prediction = argmax(&want);
        let label = inputs.labels.get(i).copied().flatten();
        let mut report = ImageReport {
            index: i,
            label,
            packed_prediction: None,
            reference_prediction,
            agree: false,
            max_abs_logit_error: None,
            seconds,
            error: None,
            simulation: None,
            bootstraps: None,
            decrypted: None,
            reference: Vec::new(),
        };
        match result {
            Ok((got, stats)) => {
                for s in stats.steps {
                    match step_totals.iter_mut().find(|t| t.step == s.step) {
                        Some(t) => t.seconds += s.seconds,
                        None => step_totals.push(s),
                    }
                }
                let p = argmax(&got.logits);
                report.packed_prediction = Some(p);
                report.agree = p == reference_prediction;
                report.max_abs_logit_error = Some(max_abs_diff(&got.logits, &want));
                report.bootstraps = stats.bootstraps;
                report.simulation = simulated.as_ref().map(|sim| simulation_check(sim, Some(&got)));
                report.decrypted = Some(got.logits);
                report.reference = want;
            }
            Err(e) => {
                let finite = want.iter().all(|v| v.is_finite());
                let why = if finite {
                    ""
                } else {
                    " (the reference output is not finite either: the model diverges on this input)"
                };
                report.error = Some(format!("{e}{why}"));
                report.simulation = simulated.as_ref().map(|sim| simulation_check(sim, None));
            }
        }
        observer.image_done(&report, n);
        images.push(report);
    }
    let ok = images.iter().filter(|r| r.error.is_none()).count();
    for s in &mut step_totals {
        s.seconds /= ok.max(1) as f64;
    }
    let simulation = compiled.output_step().filter(|_| images.iter().any(|r| r.simulation.is_some())).map(|output_step| {
        let sims: Vec<&SimulationCheck> = images.iter().filter_map(|r| r.simulation.as_ref()).collect();
        SimulationSummary {
            agree_quantised: sims.iter().filter(|s| s.agree_quantised).count(),
            identical_to_simulation: sims.iter().filter(|s| s.identical_to_simulation).count(),
            max_output_units_from_simulation: sims.iter().map(|s| s.output_units_from_simulation).max().unwrap_or(0),
            output_step,
            quantised_correct: images
                .iter()
                .filter(|r| matches!((&r.simulation, r.label), (Some(s), Some(l)) if s.quantised_prediction == l as usize))
                .count(),
        }
    });
    let summary = Summary {
        images: n,
        agree: images.iter().filter(|r| r.agree).count(),
        failed: n - ok,
        packed_correct: images
            .iter()
            .filter(|r| r.label.is_some_and(|l| Some(l as usize) == r.packed_prediction))
            .count(),
        max_abs_logit_error: images.iter().filter_map(|r| r.max_abs_logit_error).fold(0.0, f64::max),
        mean_seconds_per_image: images.iter().filter(|r| r.error.is_none()).map(|r| r.seconds).sum::<f64>()
            / ok.max(1) as f64,
        plan_seconds,
        keygen_seconds,
        evaluation_key_bytes: local.key_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        cost: compiled.cost(),
        simulation,
    };
    Ok(RunReport {
        model: model.graph().name.clone(),
        backend: compiled.backend().to_string(),
        security_bits: compiled.security_bits(),
        details: compiled.details(),
        images,
        summary,
        trace: trace_rows,
        step_seconds: step_totals,
    })
}

pub(crate) fn simulation_check(sim: &Decrypted, got: Option<&Decrypted>) -> SimulationCheck {
    let quantised_prediction = argmax(&sim.logits);
    let units = match (got.and_then(|g| g.raw.as_ref()), &sim.raw) {
        (Some(a), Some(b)) => a.iter().zip(b).map(|(x, y)| (x - y).abs()).max().unwrap_or(0),
        _ => 0,
    };
    SimulationCheck {
        quantised_prediction,
        agree_quantised: got.is_some_and(|g| argmax(&g.logits) == quantised_prediction),
        identical_to_simulation: got.is_some_and(|g| g.raw.is_some() && g.raw == sim.raw),
        output_units_from_simulation: units,
        simulation_margin: top_two_gap(&sim.logits),
    }
}

impl ImageReport {
    /// A one-line account of the image: prediction, reference, label, time or error, and the
    /// distance from the simulation when there is one.
    pub fn describe(&self) -> String {
        let label = self.label.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        let mut s = match (self.packed_prediction, &self.error) {
            (Some(p), _) => {
                format!("predicted {p}, reference {}, label {label}, {:.1} s", self.reference_prediction, self.seconds)
            }
            (None, e) => format!("failed after {:.1} s: {}", self.seconds, e.as_deref().unwrap_or("unknown error")),
        };
        if let Some(sim) = &self.simulation {
            let distance = match (&self.error, sim.identical_to_simulation) {
                (Some(_), _) => "no output".to_string(),
                (None, true) => "outputs identical".to_string(),
                (None, false) => format!("outputs {} units off", sim.output_units_from_simulation),
            };
            s.push_str(&format!(
                ", simulation {} (margin {:.3}), {distance}",
                sim.quantised_prediction, sim.simulation_margin
            ));
        }
        s
    }
}
