//! `peregrine`: import, inspect and evaluate models; list FHE backends.
//!
//! Every subcommand that reports figures accepts `--json` (one JSON object on stdout, nothing
//! else). Exit codes: 0 success, 1 failure (message on stderr), 2 bad usage.

mod commands;
mod compare;
mod fhe;
mod finetune;
mod session;
mod tfhe;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Peregrine: deep CNN inference on encrypted images.
#[derive(Parser)]
#[command(name = "peregrine", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Scalar type of the reference executor.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Precision {
    /// 32-bit floats (fast, default).
    F32,
    /// 64-bit floats (precision studies).
    F64,
}

#[derive(Subcommand)]
enum Command {
    /// Build a Peregrine model from a pretrained tensor file.
    Import {
        #[command(subcommand)]
        what: ImportCmd,
    },
    /// Top-1 accuracy of a model on a CIFAR-10 binary batch file, in cleartext.
    Eval {
        /// Model file (.safetensors written by `peregrine import`).
        #[arg(long)]
        model: PathBuf,
        /// CIFAR-10 binary batch (`.bin` or `.bin.gz`).
        #[arg(long)]
        data: PathBuf,
        /// Only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// Images per batch.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Scalar type.
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Classify one PNG or JPEG image (resized to the model input if the model allows it).
    Predict {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Image file.
        #[arg(long)]
        image: PathBuf,
        /// How many top classes to print.
        #[arg(long, default_value_t = 3)]
        top: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Describe a model: nodes, shapes, parameters.
    Info {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replace activations by calibrated polynomials and max pooling by average pooling (no training).
    Convert {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Polynomial degree.
        #[arg(long, default_value_t = 4)]
        degree: usize,
        /// `hermite`: batch norm folded, PolyAct-RN with the Hermite expansion and running-max
        /// ranges (SFT with zero epochs); `least-squares`: fit on [−1, 1] scaled by margin × max|x|.
        #[arg(long, value_enum, default_value_t = fhe::ConvertMethod::Hermite)]
        method: fhe::ConvertMethod,
        /// Bound B of normalised inputs (hermite).
        #[arg(long, default_value_t = 3.0)]
        bound: f64,
        /// CIFAR-10 batch used to calibrate per-channel ranges (use training data).
        #[arg(long)]
        calibration: PathBuf,
        /// Images used for calibration.
        #[arg(long, default_value_t = 512)]
        calibration_images: usize,
        /// Range = margin × largest |x| seen.
        #[arg(long, default_value_t = 1.0)]
        margin: f64,
        /// Output model file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Single-stage fine-tuning: PolyAct-RN polynomial activations, trained in one run.
    Finetune(finetune::FinetuneArgs),
    /// Plan packed execution: layouts, levels, bootstraps, rotation keys and cost.
    Plan {
        #[command(flatten)]
        target: fhe::Target,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Encrypt, run packed, decrypt, and compare with the cleartext reference.
    Run {
        #[command(flatten)]
        target: fhe::Target,
        /// CIFAR-10 batch file.
        #[arg(long)]
        data: Option<PathBuf>,
        /// A single PNG/JPEG image instead of --data.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Number of images from --data.
        #[arg(long, default_value_t = 1)]
        limit: usize,
        /// Decrypt after every step (client side) and report precision in bits (first image).
        #[arg(long)]
        trace: bool,
        /// Activations on the tfhe backend: `exact` (the original ReLU/SiLU/GELU) or `poly`
        /// (the model's polynomials); CKKS backends always evaluate the polynomials.
        #[arg(long)]
        activation: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The TFHE backend's quantised cleartext simulation over many images (no encryption): its
    /// accuracy for a precision and activation mode, to choose them before an encrypted run.
    Simulate {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// TFHE parameters as JSON (e.g. '{"bits": 6}').
        #[arg(long, default_value = "")]
        params: String,
        /// `exact` or `poly`.
        #[arg(long)]
        activation: Option<String>,
        /// CIFAR-10 batch file.
        #[arg(long)]
        data: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the same model and images on several backends and print one comparison table.
    Compare {
        /// Model file (polynomial activations).
        #[arg(long)]
        model: PathBuf,
        /// Backends, comma-separated (e.g. clear,openfhe).
        #[arg(long, value_delimiter = ',', required = true)]
        backends: Vec<String>,
        /// Parameters of one backend as BACKEND=JSON (repeatable), e.g. clear='{"levels": 60}'.
        #[arg(long)]
        params: Vec<String>,
        /// CIFAR-10 batch file.
        #[arg(long)]
        data: PathBuf,
        /// Images per backend.
        #[arg(long, default_value_t = 1)]
        limit: usize,
        /// Plugin directory (repeatable).
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// Limit the rotation keys (as for `run`).
        #[arg(long)]
        max_rotation_keys: Option<usize>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Keep each backend's full `run --json` output as DIR/BACKEND.json.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Client: plan the model, generate keys, write the secret client state and the evaluation keys to DIR.
    Keygen {
        #[command(flatten)]
        target: fhe::Target,
        /// Session directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Client: encrypt images from a CIFAR batch into DIR (needs DIR/client.secret).
    Encrypt {
        /// Session directory written by `keygen`.
        #[arg(long)]
        dir: PathBuf,
        /// CIFAR-10 batch file.
        #[arg(long)]
        data: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1)]
        limit: usize,
    },
    /// Server: run the model on the encrypted images in DIR with the evaluation keys only.
    Infer {
        /// Session directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Client: decrypt the results in DIR and compare with the cleartext reference.
    Decrypt {
        /// Session directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List built-in backends and plugins found in the plugin search path.
    Backends {
        /// Directory to search for plugins (repeatable); `PEREGRINE_PLUGIN_PATH` (':'-separated) is searched too.
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// CIFAR ResNet (depth 6n+2) from a PyTorch state_dict in safetensors form.
    Resnet {
        /// Depth: 20, 32, 44, 56, 110…
        #[arg(long, default_value_t = 20)]
        depth: usize,
        /// Tensor file with PyTorch names (conv1, bn1, layerL.B.*, linear).
        #[arg(long)]
        weights: PathBuf,
        /// Output model file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A freshly initialised small CNN (3×3 conv, batch norm, 2×2 average pool, ReLU per
    /// stage, then fully connected) for backends that pay a bootstrap per activation; train it
    /// with `peregrine finetune --keep-activations`.
    SmallCnn {
        /// Channels of each stage (1 to 4 stages; the first convolution has stride 2).
        #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
        widths: Vec<usize>,
        /// Seed of the initial weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output model file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import { what: ImportCmd::Resnet { depth, weights, output, json } } => {
            commands::import_resnet(depth, &weights, &output, json)
        }
        Command::Import { what: ImportCmd::SmallCnn { widths, seed, output, json } } => {
            commands::import_small_cnn(&widths, seed, &output, json)
        }
        Command::Eval { model, data, limit, batch, precision, json } => {
            commands::eval(&model, &data, limit, batch, precision, json)
        }
        Command::Predict { model, image, top, json } => commands::predict(&model, &image, top, json),
        Command::Info { model, json } => commands::info(&model, json),
        Command::Backends { plugin_dirs, json } => commands::backends(plugin_dirs, json),
        Command::Convert { model, degree, method, bound, calibration, calibration_images, margin, output, json } => {
            fhe::convert_cmd(&model, degree, method, bound, &calibration, calibration_images, margin, &output, json)
        }
        Command::Finetune(args) => finetune::finetune_cmd(args),
        Command::Plan { target, json } => fhe::plan_cmd(target, json),
        Command::Run { target, data, image, limit, trace, json, activation } => {
            if target.backend == "tfhe" {
                tfhe::run_cmd(&target.model, &target.params, activation.as_deref(), data.as_deref(), image.as_deref(), limit, json)
            } else if activation.as_deref().is_some_and(|a| a != "poly") {
                Err(anyhow::anyhow!("--activation {} needs the tfhe backend: CKKS backends evaluate the model's polynomials", activation.unwrap_or_default()))
            } else {
                fhe::run_cmd(target, data.as_deref(), image.as_deref(), limit, trace, json)
            }
        }
        Command::Simulate { model, params, activation, data, limit, json } => {
            tfhe::simulate_cmd(&model, &params, activation.as_deref(), &data, limit, json)
        }
        Command::Compare { model, backends, params, data, limit, plugin_dirs, max_rotation_keys, json, save } => {
            compare::compare_cmd(compare::CompareArgs {
                model: &model,
                backends: &backends,
                params: &params,
                data: &data,
                limit,
                plugin_dirs: &plugin_dirs,
                max_rotation_keys,
                json,
                save: save.as_deref(),
            })
        }
        Command::Keygen { target, dir, json } => session::keygen_cmd(target, &dir, json),
        Command::Encrypt { dir, data, limit } => session::encrypt_cmd(&dir, &data, limit),
        Command::Infer { dir, json } => session::infer_cmd(&dir, json),
        Command::Decrypt { dir, json } => session::decrypt_cmd(&dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
