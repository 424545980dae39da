//! The `tfhe` backend's parameters (`--params` JSON) and its calibration policy.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use peregrine_data::{load_cifar10, preprocessed_rows, DataError};
use peregrine_model::ir::InputSpec;

use crate::lwe::{LweError, LweParams};
use crate::quant::{ActivationMode, QuantConfig, QuantError};

/// Parameters of the TFHE backend (JSON; every field optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TfheParams {
    /// Bits of the plaintext space, 4 to 8 (the TFHE-rs 128-bit set `MESSAGE_1_CARRY_{bits−1}`).
    pub bits: u32,
    /// Extra accumulator bits below a bootstrap's resolution (sums hold `bits + extra_bits`).
    pub extra_bits: u32,
    /// Bits of bootstrap outputs and encrypted inputs (default 4; at most `bits`).
    pub act_bits: Option<u32>,
    /// `exact` or `poly` (overridden by `--activation`).
    pub activation: Option<String>,
    /// CIFAR-10 batch file of calibration images (default: `data_batch_1` beside `--data`).
    pub calibration: Option<PathBuf>,
    /// Number of calibration images.
    pub calibration_images: usize,
    /// Fraction of the signed range the calibrated maximum of an accumulator may use.
    pub headroom: f64,
    /// Calibration quantile that sets every range (default 1: the maximum); e.g. 0.99 lets
    /// a few outlying calibration values saturate instead of coarsening a whole channel.
    pub clip: f64,
    /// Divides the set's noise bound when choosing accumulator steps (default 1). With
    /// `extra_bits` > 0 a sum within noise of a box boundary reads the neighbouring box; a
    /// margin of m makes that m times rarer at the cost of coarser steps.
    pub noise_margin: f64,
    /// Write the quantised plan (steps, zero points, integer weights, tables) as JSON here.
    pub save_plan: Option<PathBuf>,
    /// Instead of whole images: time every stage on this many elements of the first image
    /// and extrapolate (for networks too large to run in a session).
    pub probe: Option<usize>,
}

impl Default for TfheParams {
    fn default() -> Self {
        TfheParams {
            bits: 5,
            extra_bits: 6,
            act_bits: Some(4),
            activation: None,
            calibration: None,
            calibration_images: 256,
            headroom: 0.9,
            clip: 1.0,
            noise_margin: 1.0,
            save_plan: None,
            probe: None,
        }
    }
}

/// What a set of parameters resolves to: the activation mode, the TFHE-rs set and the
/// settings of quantisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Activation mode.
    pub mode: ActivationMode,
    /// The TFHE-rs parameter set.
    pub lwe: LweParams,
    /// Quantisation settings (noise bound already divided by the margin).
    pub config: QuantConfig,
}

/// Invalid TFHE parameters, each naming what to change.
#[derive(Debug, Error)]
pub enum ParamsError {
    /// The JSON does not parse or names an unknown field.
    #[error("invalid --params for the tfhe backend")]
    Json(#[source] serde_json::Error),
    /// The activation mode is unknown.
    #[error(transparent)]
    Activation(#[from] QuantError),
    /// The noise margin is below 1 or not finite.
    #[error("noise_margin must be a finite number ≥ 1 (it divides the set's noise bound), got {0}")]
    NoiseMargin(f64),
    /// No TFHE-rs set for these bits.
    #[error(transparent)]
    Lwe(#[from] LweError),
    /// The calibration images could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// No calibration file was given and none is beside the data.
    #[error("the TFHE backend calibrates its quantisation on training images: give --params '{{\"calibration\": \"<CIFAR-10 batch file>\"}}' (default: data_batch_1 beside --data)")]
    NoCalibration,
}

impl TfheParams {
    /// Parses `--params` JSON (empty: the defaults); `activation` (e.g. `--activation`) overrides.
    pub fn parse(json: &str, activation: Option<&str>) -> Result<Self, ParamsError> {
        let mut p: TfheParams = if json.trim().is_empty() {
            TfheParams::default()
        } else {
            serde_json::from_str(json).map_err(ParamsError::Json)?
        };
        if let Some(a) = activation {
            p.activation = Some(a.to_string());
        }
        Ok(p)
    }

    /// The activation mode (default `exact`), set and quantisation these parameters give.
    pub fn settings(&self) -> Result<Settings, ParamsError> {
        let mode: ActivationMode = self.activation.as_deref().unwrap_or("exact").parse()?;
        if !(self.noise_margin >= 1.0 && self.noise_margin.is_finite()) {
            return Err(ParamsError::NoiseMargin(self.noise_margin));
        }
        let lwe = LweParams::with_accumulator(self.bits, self.extra_bits)?;
        let config = QuantConfig {
            bits: self.bits,
            extra_bits: self.extra_bits,
            act_bits: self.act_bits.unwrap_or(self.bits),
            mode,
            noise_bound: lwe.noise_bound / self.noise_margin,
            headroom: self.headroom,
            clip: self.clip,
        };
        Ok(Settings { mode, lwe, config })
    }

    /// The calibration batch: `calibration` when given, else the first training batch
    /// (`data_batch_1.bin.gz` or `.bin`) in the directory of the evaluated file `data`.
    /// Calibration never uses the evaluated images themselves.
    pub fn calibration_file(&self, data: Option<&Path>) -> Result<PathBuf, ParamsError> {
        if let Some(p) = &self.calibration {
            return Ok(p.clone());
        }
        let dir = data.and_then(|d| if d.is_dir() { Some(d) } else { d.parent() });
        dir.and_then(|dir| ["data_batch_1.bin.gz", "data_batch_1.bin"].iter().map(|n| dir.join(n)).find(|p| p.exists()))
            .ok_or(ParamsError::NoCalibration)
    }

    /// The calibration images (preprocessed for `input`, one vector per image) and their file
    /// (see [`TfheParams::calibration_file`]).
    pub fn calibration_images(
        &self,
        data: Option<&Path>,
        input: &InputSpec,
    ) -> Result<(Vec<Vec<f64>>, PathBuf), ParamsError> {
        let file = self.calibration_file(data)?;
        let images = load_cifar10(&file, Some(self.calibration_images.max(1)))?;
        Ok((preprocessed_rows(&images, input)?, file))
    }
}
