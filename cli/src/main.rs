//! `peregrine`: import, inspect, convert, fine-tune and evaluate models; run them encrypted on
//! any backend; list backends. Argument parsing and printing only: the work is done by the
//! library crates (`peregrine-runtime` above all).
//!
//! Every subcommand that reports figures accepts `--json` (one JSON object on stdout, nothing
//! else). Exit codes: 0 success, 1 failure (message on stderr), 2 bad usage.

mod commands;
mod fhe;
mod finetune;
mod outputs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Peregrine: deep CNN inference on encrypted images.
#[derive(Parser)]
#[command(name = "peregrine", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print one JSON object on stdout instead of text (every subcommand that reports).
    #[arg(long, global = true)]
    json: bool,
}

/// Scalar type of the reference executor.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Precision {
    /// 32-bit floats (fast, default).
    F32,
    /// 64-bit floats (precision studies).
    F64,
}

/// What to plan for: model, backend, its parameters, plugins, key budget.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// Model file (polynomial activations for CKKS backends).
    #[arg(long)]
    pub model: PathBuf,
    /// Backend name (`ckks`, `clear`, `tfhe`, or a plugin's name).
    #[arg(long, default_value = "ckks")]
    pub backend: String,
    /// Backend parameters as JSON (e.g. '{"levels": 90}' for clear).
    #[arg(long, default_value = "")]
    pub params: String,
    /// Plugin directory (repeatable).
    #[arg(long = "plugin-dir")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Limit the rotation keys (±2^i keys plus the most used steps; others are composed).
    #[arg(long)]
    pub max_rotation_keys: Option<usize>,
    /// Images the bootstrap range of CKKS backends is calibrated on: a CIFAR-10 batch, a PNG/JPEG image or a directory of them (default:
    /// data_batch_1 beside --data; recorded by keygen for the session).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

impl TargetArgs {
    fn target(self) -> peregrine_runtime::Target {
        let TargetArgs { model, backend, params, plugin_dirs, max_rotation_keys, calibration } = self;
        peregrine_runtime::Target { model, backend, params, plugin_dirs, max_rotation_keys, calibration }
    }
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
        /// Also write every image's outputs to this CSV file (image, label, prediction, then
        /// the outputs; a non-finite output is written as NaN or inf), to compare models image
        /// by image — e.g. whether ensemble members err on the same images.
        #[arg(long, value_name = "CSV")]
        outputs: Option<PathBuf>,
    },
    /// Run a model on one PNG or JPEG image (resized to the model input if the model allows
    /// it): the top classes, or detections (`--yolo-classes`) or a mask (`--mask`), optionally
    /// drawn on the photo (`--annotate`).
    Predict(commands::PredictArgs),
    /// Describe a model: nodes, shapes, parameters.
    Info {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
    },
    /// Replace activations by calibrated polynomials and max pooling by average pooling (no training).
    Convert(commands::ConvertArgs),
    /// Single-stage fine-tuning: PolyAct-RN polynomial activations, trained in one run.
    Finetune(finetune::FinetuneArgs),
    /// Combine models of one architecture into one model that outputs the mean of theirs: the
    /// members' channels side by side, later layers grouped by member, so an encrypted run
    /// evaluates all of them in the same ciphertexts.
    Ensemble(commands::EnsembleArgs),
    /// Cluster every convolution's and fully connected layer's weights to at most k values
    /// (one-dimensional k-means per layer); evaluate the result to see what it costs.
    Cluster(commands::ClusterArgs),
    /// Give a fully convolutional model another input size, same weights (e.g. a detector
    /// fine-tuned at 320×320 run at 512×512); every layer's shape is derived again and checked.
    Resize(commands::ResizeArgs),
    /// Plan encrypted execution: layouts, levels, bootstraps, rotation keys and cost (CKKS
    /// backends), or the quantised stages (tfhe, which calibrates on `"calibration"` in --params).
    Plan {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Encrypt, run, decrypt, and compare with the cleartext reference.
    Run {
        #[command(flatten)]
        target: TargetArgs,
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
        /// What to read from the decrypted output of --image, and where to draw it.
        #[command(flatten)]
        output: outputs::OutputArgs,
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
        /// Keep each backend's full `run --json` output as DIR/BACKEND.json.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Client: plan the model, generate keys, write the secret client state and the evaluation keys to DIR.
    Keygen {
        #[command(flatten)]
        target: TargetArgs,
        /// Session directory.
        #[arg(long)]
        dir: PathBuf,
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
    },
    /// Client: decrypt the results in DIR and compare with the cleartext reference.
    Decrypt {
        /// Session directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// List built-in backends and plugins found in the plugin search path.
    Backends {
        /// Directory to search for plugins (repeatable); `PEREGRINE_PLUGIN_PATH` (':'-separated) is searched too.
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
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
    },
    /// An ONNX model (float weights, one image input; see `peregrine_model::onnx` for the
    /// operators). An unsupported operator is an error naming the node, and nothing is written.
    Onnx {
        /// The .onnx file.
        model: PathBuf,
        /// Input shape C,H,W (required when the file's input has dynamic dimensions).
        #[arg(long, value_delimiter = ',')]
        input_shape: Option<Vec<usize>>,
        /// Per-channel mean of the preprocessing (pixels scaled to [0, 1] first); default 0.
        #[arg(long, value_delimiter = ',')]
        mean: Option<Vec<f32>>,
        /// Per-channel standard deviation of the preprocessing; default 1.
        #[arg(long, value_delimiter = ',')]
        std: Option<Vec<f32>>,
        /// The ONNX values to import as the model output instead of the graph's own (e.g. the
        /// logits before a Softmax; a detector's heads, which are upsampled to the largest and
        /// concatenated on channels); the nodes after them are left out.
        #[arg(long, value_name = "NAME", value_delimiter = ',')]
        graph_output: Vec<String>,
        /// Class names, one per output value.
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// The network takes BGR images (as OpenCV loads them): the imported model takes RGB
        /// ones, its first layers' input channels and --mean/--std (given in the network's
        /// BGR order) reversed.
        #[arg(long)]
        bgr: bool,
        /// Output model file.
        #[arg(short, long)]
        output: PathBuf,
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
    },
}

/// Restores the default action of SIGPIPE (Rust ignores it, so a closed pipe, as in
/// `peregrine info … | head`, made every `println!` panic): the process now ends quietly,
/// as other command-line tools do.
fn quiet_on_closed_pipe() {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn signal(signum: std::os::raw::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::os::raw::c_int = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: signal(2) with SIG_DFL installs no Rust code as a handler; it only restores
        // the kernel's default action, before any other thread exists.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let Cli { command, json } = Cli::parse();
    let result = match command {
        Command::Import { what: ImportCmd::Resnet { depth, weights, output } } => {
            commands::import_resnet(depth, &weights, &output, json)
        }
        Command::Import {
            what: ImportCmd::Onnx { model, input_shape, mean, std, graph_output, classes, bgr, output },
        } => {
            let options =
                commands::OnnxArgs { input_shape, mean, std, graph_output, classes: classes.unwrap_or_default(), bgr };
            commands::import_onnx(&model, options, &output, json)
        }
        Command::Import { what: ImportCmd::SmallCnn { widths, seed, output } } => {
            commands::import_small_cnn(&widths, seed, &output, json)
        }
        Command::Eval { model, data, limit, batch, precision, outputs } => {
            commands::eval(&model, &data, limit, batch, precision, outputs.as_deref(), json)
        }
        Command::Predict(args) => commands::predict(&args, json),
        Command::Info { model } => commands::info(&model, json),
        Command::Backends { plugin_dirs } => commands::backends(plugin_dirs, json),
        Command::Convert(args) => commands::convert(&args, json),
        Command::Finetune(args) => finetune::finetune(args, json),
        Command::Ensemble(args) => commands::ensemble(&args, json),
        Command::Cluster(args) => commands::cluster(&args, json),
        Command::Resize(args) => commands::resize(&args, json),
        Command::Plan { target } => fhe::plan(target.target(), json),
        Command::Run { target, data, image, limit, trace, activation, output } => {
            fhe::run(target.target(), fhe::RunArgs { data, image, limit, trace, activation, output }, json)
        }
        Command::Simulate { model, params, activation, data, limit } => {
            fhe::simulate(&model, &params, activation.as_deref(), &data, limit, json)
        }
        Command::Compare { model, backends, params, data, limit, plugin_dirs, max_rotation_keys, save } => {
            let args = peregrine_runtime::compare::CompareArgs {
                model: &model,
                backends: &backends,
                params: &params,
                data: &data,
                limit,
                plugin_dirs: &plugin_dirs,
                max_rotation_keys,
                save: save.as_deref(),
            };
            fhe::compare(&args, json)
        }
        Command::Keygen { target, dir } => fhe::keygen(target.target(), &dir, json),
        Command::Encrypt { dir, data, limit } => fhe::encrypt(&dir, &data, limit, json),
        Command::Infer { dir } => fhe::infer(&dir, json),
        Command::Decrypt { dir } => fhe::decrypt(&dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
