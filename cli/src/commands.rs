//! Subcommand implementations: argument handling, progress and output only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peregrine_backend::Scheme;
use backend_clear::{ClearParams, ClearScheme};
use peregrine_data::{load_cifar10, load_image, preprocess};
use peregrine_model::format::{load_model, save_model};
use peregrine_model::import::import_cifar_resnet;
use peregrine_backend::plugin::discover;
use peregrine_model::reference::{argmax_rows, Real, Reference, NO_PREDICTION};
use rayon::prelude::*;
use serde_json::json;

use crate::Precision;

pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// One plain line per finished item on stderr when stderr is not a terminal (a log file, a
/// pipe), where the progress bar draws nothing: long encrypted runs stay observable.
pub fn log_item(what: &str, done: usize, total: usize, detail: &str) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        eprintln!("{what}: {done}/{total} {detail}");
    }
}

pub fn import_resnet(depth: usize, weights: &Path, output: &Path, json: bool) -> Result<()> {
    let model = import_cifar_resnet(depth, weights).with_context(|| format!("importing ResNet-{depth}"))?;
    write_imported(&model, output, json)
}

/// `peregrine import small-cnn`: a freshly initialised small CNN to train.
pub fn import_small_cnn(widths: &[usize], seed: u64, output: &Path, json: bool) -> Result<()> {
    let model = peregrine_model::import::small_cnn(widths, seed)?;
    write_imported(&model, output, json)
}

fn write_imported(model: &peregrine_model::ir::Model, output: &Path, json: bool) -> Result<()> {
    save_model(model, output)?;
    if json {
        println!(
            "{}",
            json!({"model": output, "architecture": model.graph().name, "nodes": model.graph().nodes.len(),
                   "parameters": model.parameter_count()})
        );
    } else {
        println!(
            "wrote {} ({}, {} nodes, {} parameters)",
            output.display(),
            model.graph().name,
            model.graph().nodes.len(),
            model.parameter_count()
        );
    }
    Ok(())
}

pub fn eval(model: &Path, data: &Path, limit: Option<usize>, batch: usize, precision: Precision, json: bool) -> Result<()> {
    match precision {
        Precision::F32 => eval_as::<f32>(model, data, limit, batch, json, "f32"),
        Precision::F64 => eval_as::<f64>(model, data, limit, batch, json, "f64"),
    }
}

fn eval_as<T: Real>(model_path: &Path, data: &Path, limit: Option<usize>, batch: usize, json: bool, ty: &str) -> Result<()> {
    let start = Instant::now();
    let model = load_model(model_path)?;
    let images = load_cifar10(data, limit)?;
    let exec = Reference::<T>::new(&model);
    let input = &model.graph().input;
    let batch = batch.max(1);
    let n = images.len();
    let pb = progress(n as u64, json, "eval");
    let correct = AtomicUsize::new(0);
    let overflowed = AtomicUsize::new(0);
    let infer_start = Instant::now();
    let chunks: Vec<(usize, usize)> = (0..n).step_by(batch).map(|s| (s, (s + batch).min(n))).collect();
    chunks.par_iter().try_for_each(|&(a, b)| -> Result<()> {
        let part = images.slice(a..b);
        let x = preprocess::<T>(&part.pixels, part.len(), input)?;
        let y = exec.run(&x)?;
        let pred = argmax_rows(&y);
        let hits = pred.iter().zip(&part.labels).filter(|(p, l)| **p == **l as usize).count();
        correct.fetch_add(hits, Ordering::Relaxed);
        overflowed.fetch_add(pred.iter().filter(|p| **p == NO_PREDICTION).count(), Ordering::Relaxed);
        pb.inc((b - a) as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    let infer_s = infer_start.elapsed().as_secs_f64();
    let total_s = start.elapsed().as_secs_f64();
    let correct = correct.into_inner();
    let overflowed = overflowed.into_inner();
    let acc = correct as f64 / n as f64;
    if json {
        println!(
            "{}",
            json!({"model": model_path, "data": data, "images": n, "correct": correct, "accuracy": acc, "non_finite_outputs": overflowed,
                   "precision": ty, "threads": rayon::current_num_threads(),
                   "inference_seconds": infer_s, "total_seconds": total_s})
        );
    } else {
        println!(
            "{}: top-1 {correct}/{n} = {:.4} ({ty}, {:.2} s inference, {:.2} s total, {} threads){}",
            model.graph().name,
            acc,
            infer_s,
            total_s,
            rayon::current_num_threads(),
            if overflowed > 0 { format!("; {overflowed} outputs not finite, counted wrong") } else { String::new() }
        );
    }
    Ok(())
}

pub fn predict(model_path: &Path, image: &Path, top: usize, json: bool) -> Result<()> {
    let model = load_model(model_path)?;
    let pixels = load_image(image, &model.graph().input)?;
    let x = preprocess::<f32>(&pixels, 1, &model.graph().input)?;
    let y = Reference::<f32>::new(&model).run(&x)?;
    let logits: Vec<f32> = y.iter().copied().collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    let name = |i: usize| model.graph().classes.get(i).cloned().unwrap_or_else(|| format!("class {i}"));
    if json {
        let tops: Vec<_> =
            order.iter().take(top).map(|&i| json!({"class": i, "name": name(i), "logit": logits[i]})).collect();
        println!("{}", json!({"image": image, "prediction": order[0], "name": name(order[0]), "top": tops, "logits": logits}));
    } else {
        for &i in order.iter().take(top.max(1)) {
            println!("{:>3} {:<12} {:>9.4}", i, name(i), logits[i]);
        }
    }
    Ok(())
}

pub fn info(model_path: &Path, json: bool) -> Result<()> {
    let model = load_model(model_path)?;
    let g = model.graph();
    if json {
        let nodes: Vec<_> = g
            .nodes
            .iter()
            .zip(model.shapes())
            .map(|(n, s)| json!({"name": n.name, "op": n.op.kind(), "inputs": n.inputs, "shape": s}))
            .collect();
        println!(
            "{}",
            json!({"name": g.name, "version": g.version, "input": g.input, "output": g.output,
                   "classes": g.classes, "parameters": model.parameter_count(), "nodes": nodes})
        );
    } else {
        println!("{} (format v{}), input {:?}, {} parameters", g.name, g.version, g.input.shape, model.parameter_count());
        for (n, s) in g.nodes.iter().zip(model.shapes()) {
            println!("  {:<24} {:<22} {:?} <- {}", n.name, n.op.kind(), s, n.inputs.join(", "));
        }
        println!("output: {} {:?}", g.output, model.output_shape());
    }
    Ok(())
}

/// Plugin search path: `--plugin-dir` entries, then `PEREGRINE_PLUGIN_PATH`.
/// Plugin search path: `--plugin-dir` entries and `PEREGRINE_PLUGIN_PATH`; when neither is
/// given, the directory of the `peregrine` executable (where `cargo build` puts the plugins).
pub fn plugin_dirs(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("PEREGRINE_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if dirs.is_empty() {
        dirs.extend(std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)));
    }
    dirs
}

/// The built-in TFHE backend, in listings.
const TFHE_DESCRIPTION: &str = "TFHE-rs (pure Rust): one LWE ciphertext per value, one lookup-table bootstrap per activation (exact or polynomial), 128-bit sets, quantised from calibration";

pub fn backends(dirs: Vec<PathBuf>, json: bool) -> Result<()> {
    let dirs = plugin_dirs(dirs);
    let builtin_caps = ClearScheme::capabilities(&ClearParams::default())?;
    let found = discover(&dirs);
    if json {
        let plugins: Vec<_> = found
            .iter()
            .map(|(path, r)| match r {
                Ok(p) => json!({"path": path, "name": p.name(), "description": p.description(),
                                "capabilities": p.capabilities("").map_err(|e| e.to_string())}),
                Err(e) => json!({"path": path, "error": e.to_string()}),
            })
            .collect();
        println!(
            "{}",
            json!({"builtin": [{"name": ClearScheme::NAME, "description": ClearScheme::DESCRIPTION,
                                "capabilities": builtin_caps},
                               {"name": "tfhe", "description": TFHE_DESCRIPTION}],
                   "search_path": dirs, "plugins": plugins})
        );
        return Ok(());
    }
    println!("built-in:");
    println!("  {:<8} {}\n           {}", ClearScheme::NAME, ClearScheme::DESCRIPTION, builtin_caps.summary());
    println!("  {:<8} {TFHE_DESCRIPTION}", "tfhe");
    println!("plugins (search path: {}):", if dirs.is_empty() { "empty".into() } else { format!("{dirs:?}") });
    if found.is_empty() {
        println!("  none found");
    }
    for (path, r) in &found {
        match r {
            Ok(p) => {
                let caps = p.capabilities("").map(|c| c.summary()).unwrap_or_else(|e| format!("capabilities unavailable: {e}"));
                println!("  {:<8} {}\n           {}\n           {}", p.name(), p.description(), caps, path.display());
            }
            Err(e) => println!("  (skipped) {}: {e}", path.display()),
        }
    }
    Ok(())
}
