//! The built-in `tfhe` backend in the runtime: the model is lowered and quantised by
//! `backend-tfhe` (calibrated on training images), then run like any other backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use backend_tfhe::engine::{decrypt_logits, encrypt_image, probe, run, PreparedPlan};
use backend_tfhe::lwe::{Lwe, LweClient, LweParams, LweServer};
use backend_tfhe::params::{Settings, TfheParams};
use backend_tfhe::quant::{QuantPlan, RealPlan};
use peregrine_backend::Capabilities;
use peregrine_model::Model;
use serde_json::json;

use crate::engine::*;
use crate::error::{Result, RuntimeError};

/// Name of the backend.
pub const NAME: &str = "tfhe";

/// The `tfhe` backend (TFHE-rs, pure Rust).
pub struct TfheBackend;

/// A model compiled for `tfhe`: its quantised plan and what produced it.
pub struct TfheModel {
    params: TfheParams,
    settings: Settings,
    model: String,
    real: RealPlan,
    plan: Arc<QuantPlan>,
    calibration: PathBuf,
    calibration_images: usize,
    seconds: f64,
}

impl TfheModel {
    /// Compiles and calibrates `model` with `params` (JSON) and an optional activation override.
    pub fn new(model: &Model, params: &str, activation: Option<&str>, data: Option<&Path>) -> Result<Self> {
        let params = TfheParams::parse(params, activation)?;
        let settings = params.settings()?;
        let t0 = Instant::now();
        let (images, calibration) = params.calibration_images(data, &model.graph().input)?;
        let real = RealPlan::compile(model, settings.mode)?;
        let plan = QuantPlan::calibrate(&real, &images, settings.config)?;
        if let Some(path) = &params.save_plan {
            let bytes = serde_json::to_vec(&plan).map_err(|e| RuntimeError::io(path, e.into()))?;
            std::fs::write(path, bytes).map_err(|e| RuntimeError::io(path, e))?;
        }
        Ok(TfheModel {
            params,
            settings,
            model: model.graph().name.clone(),
            real,
            plan: Arc::new(plan),
            calibration,
            calibration_images: images.len(),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
    /// The quantised plan.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }
    /// The float evaluation of the same fused forms (what quantisation approximates).
    pub fn real(&self) -> &RealPlan {
        &self.real
    }
    /// The parameters.
    pub fn params(&self) -> &TfheParams {
        &self.params
    }
}

fn set_summary(p: &LweParams) -> String {
    format!("{} bits, N = {}, noise bound {}, 128-bit security", p.bits, p.polynomial_size(), p.noise_bound)
}

impl RuntimeBackend for TfheBackend {
    fn name(&self) -> &str {
        NAME
    }
    fn description(&self) -> &str {
        "TFHE-rs (pure Rust): one LWE ciphertext per value, one lookup-table bootstrap per activation (exact or polynomial), 128-bit sets, quantised from calibration"
    }
    fn default_capabilities(&self) -> Option<Result<Capabilities>> {
        None
    }
    fn compile(&self, model: &Model, params: &str, options: &CompileOptions) -> Result<Box<dyn CompiledModel>> {
        Ok(Box::new(TfheModel::new(model, params, options.activation, options.data)?))
    }
}

impl CompiledModel for TfheModel {
    fn backend(&self) -> &str {
        NAME
    }
    fn security_bits(&self) -> Option<u32> {
        Some(128)
    }
    fn describe(&self) -> PlanReport {
        let (p, lwe) = (&self.plan, &self.settings.lwe);
        let headline = format!(
            "tfhe: {} ({}), {:?} activations, {} bootstraps/image, calibrated on {} images of {} in {:.1} s",
            lwe.name,
            set_summary(lwe),
            self.settings.mode,
            p.bootstraps(),
            self.calibration_images,
            self.calibration.display(),
            self.seconds
        );
        let lines = p.describe();
        let json = json!({"model": self.model, "backend": NAME, "set": lwe.name, "bits": self.params.bits,
                          "extra_bits": self.params.extra_bits, "act_bits": p.config.act_bits, "activation": self.settings.mode,
                          "bootstraps": p.bootstraps(), "calibration": self.calibration, "calibration_images": self.calibration_images,
                          "output_step": p.output_step, "stages": lines});
        PlanReport { json, headline, lines }
    }
    fn cost(&self) -> serde_json::Value {
        json!({"bootstraps": self.plan.bootstraps(), "rotations": 0, "rotation_keys": 0})
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("set".into(), json!(self.settings.lwe.name));
        m.insert("bits".into(), json!(self.params.bits));
        m.insert("activation".into(), json!(self.settings.mode));
        m
    }
    fn keygen(&self) -> Result<Box<dyn DynClient>> {
        let client =
            TfheClient { client: LweClient::new(self.settings.lwe), plan: self.plan.clone(), server: OnceLock::new() };
        // The bootstrapping keys are part of key generation (and of its time), as for CKKS.
        client.evaluation_keys();
        Ok(Box::new(client))
    }
    fn load_client(&self, secret: &[u8]) -> Result<Box<dyn DynClient>> {
        let client = LweClient::from_bytes(secret)?;
        Ok(Box::new(TfheClient { client, plan: self.plan.clone(), server: OnceLock::new() }))
    }
    fn server_from_file(&self, path: &Path) -> Result<Box<dyn DynServer>> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
        Ok(Box::new(TfheServer::new(Arc::new(LweServer::from_bytes(&bytes)?), self.plan.clone())?))
    }
    fn simulate(&self, input: &[f64]) -> Option<Decrypted> {
        let sim = self.plan.simulate(&self.plan.quantise_input(input));
        Some(Decrypted { logits: self.plan.decode_output(&sim.outputs), raw: Some(sim.outputs) })
    }
    fn output_step(&self) -> Option<f64> {
        Some(self.plan.output_step)
    }
    fn probe(&self, input: &[f64]) -> Option<Result<ProbeReport>> {
        let sample = self.params.probe?;
        Some((|| {
            let t = Instant::now();
            let client = LweClient::new(self.settings.lwe);
            let server = client.server();
            let keygen_seconds = t.elapsed().as_secs_f64();
            let evaluation_key_bytes = server.key_bytes()?;
            let prepared = PreparedPlan::new(&server, &self.plan)?;
            let t = Instant::now();
            let stages: Vec<StageProbe> = probe(&client, &server, &prepared, input, sample)?
                .into_iter()
                .map(|q| StageProbe {
                    extrapolated_seconds: q.extrapolated_seconds(),
                    node: q.node,
                    elements: q.elements,
                    sampled: q.sampled,
                    seconds: q.seconds,
                    mismatched: q.mismatched,
                    max_units_off: q.max_units_off,
                })
                .collect();
            let extrapolated_seconds_per_image = stages.iter().map(|s| s.extrapolated_seconds).sum();
            Ok(ProbeReport {
                stages,
                extrapolated_seconds_per_image,
                keygen_seconds,
                evaluation_key_bytes,
                probe_seconds: t.elapsed().as_secs_f64(),
            })
        })())
    }
}

struct TfheClient {
    client: LweClient,
    plan: Arc<QuantPlan>,
    /// The evaluation keys, made once (seconds to minutes for the larger sets).
    server: OnceLock<Arc<LweServer>>,
}

impl TfheClient {
    fn evaluation_keys(&self) -> Arc<LweServer> {
        self.server.get_or_init(|| Arc::new(self.client.server())).clone()
    }
}

impl DynClient for TfheClient {
    fn save_secret(&self) -> Result<Vec<u8>> {
        Ok(self.client.to_bytes()?)
    }
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> Result<()> {
        let bytes = self.evaluation_keys().to_bytes()?;
        out.write_all(&bytes).map_err(|e| RuntimeError::io("evaluation keys", e))
    }
    fn local_server(&self) -> Result<LocalServer> {
        let server = self.evaluation_keys();
        let key_bytes = server.key_bytes()?;
        Ok(LocalServer { server: Box::new(TfheServer::new(server, self.plan.clone())?), key_bytes, shared: false })
    }
    fn encrypt(&self, input: &[f64]) -> Result<Encrypted> {
        Ok(Encrypted::new(encrypt_image(&self.client, &self.plan, input)?))
    }
    fn decrypt(&self, output: &Encrypted) -> Result<Decrypted> {
        let (logits, raw) = decrypt_logits(&self.client, &self.plan, output.downcast_ref::<Vec<Lwe>>(NAME)?);
        Ok(Decrypted { logits, raw: Some(raw) })
    }
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>> {
        serialize(values)
    }
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted> {
        deserialize(parts)
    }
}

fn serialize(values: &Encrypted) -> Result<Vec<Vec<u8>>> {
    Ok(values.downcast_ref::<Vec<Lwe>>(NAME)?.iter().map(Lwe::to_bytes).collect::<Result<_, _>>()?)
}

fn deserialize(parts: &[Vec<u8>]) -> Result<Encrypted> {
    Ok(Encrypted::new(parts.iter().map(|b| Lwe::from_bytes(b)).collect::<Result<Vec<_>, _>>()?))
}

struct TfheServer {
    server: Arc<LweServer>,
    prepared: PreparedPlan<'static>,
}

impl TfheServer {
    fn new(server: Arc<LweServer>, plan: Arc<QuantPlan>) -> Result<Self> {
        let prepared = PreparedPlan::shared(&server, plan)?;
        Ok(TfheServer { server, prepared })
    }
}

impl DynServer for TfheServer {
    fn infer(&self, input: Encrypted, _trace: bool, on_step: OnStep) -> Result<Inferred> {
        let inputs: Vec<Lwe> = input.downcast(NAME)?;
        let stages = self.prepared.plan();
        let mut last = std::time::Instant::now();
        let (out, report) = run(&self.server, &self.prepared, inputs, |done, total| {
            let node = stages.stages.get(done - 1).map_or("output", |s| s.node.as_str()).to_string();
            let seconds = last.elapsed().as_secs_f64();
            last = std::time::Instant::now();
            on_step(StepEvent { name: node.clone(), node, done, total, seconds, values: None });
        })?;
        let steps = report.stage_seconds.into_iter().map(|(step, seconds)| StepSeconds { step, seconds }).collect();
        Ok((Encrypted::new(out), InferStats { steps, bootstraps: Some(report.bootstraps) }))
    }
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>> {
        serialize(values)
    }
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted> {
        deserialize(parts)
    }
}

/// What `peregrine simulate` measured: the quantised simulation's accuracy (no encryption).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimulateReport {
    /// Model name.
    pub model: String,
    /// Bits of the plaintext space.
    pub bits: u32,
    /// Activation mode.
    pub activation: backend_tfhe::quant::ActivationMode,
    /// Images simulated.
    pub images: usize,
    /// Simulation predictions equal to the label.
    pub quantised_correct: usize,
    /// Float predictions (same activations, no quantisation) equal to the label.
    pub float_correct: usize,
    /// Simulation predictions equal to the float ones.
    pub agree: usize,
    /// Sums that left the accumulator's range.
    pub wrapped_sums: usize,
    /// Bootstraps an encrypted run would perform per image.
    pub bootstraps_per_image: usize,
}

impl TfheModel {
    /// The quantised simulation on every input (in parallel) against the labels and the float
    /// evaluation of the same forms.
    pub fn simulate_all(&self, inputs: &[Vec<f64>], labels: &[u8]) -> SimulateReport {
        use crate::run::argmax;
        use rayon::prelude::*;
        let rows: Vec<(usize, usize, usize, usize)> = inputs
            .par_iter()
            .zip(labels.par_iter())
            .map(|(x, &l)| {
                let sim = self.plan.simulate(&self.plan.quantise_input(x));
                let q = argmax(&self.plan.decode_output(&sim.outputs));
                let f = argmax(&self.real.eval(x));
                (usize::from(q == l as usize), usize::from(f == l as usize), usize::from(q == f), sim.wrapped)
            })
            .collect();
        let sum = |k: fn(&(usize, usize, usize, usize)) -> usize| rows.iter().map(k).sum();
        SimulateReport {
            model: self.model.clone(),
            bits: self.params.bits,
            activation: self.settings.mode,
            images: rows.len(),
            quantised_correct: sum(|r| r.0),
            float_correct: sum(|r| r.1),
            agree: sum(|r| r.2),
            wrapped_sums: sum(|r| r.3),
            bootstraps_per_image: self.plan.bootstraps(),
        }
    }
}
