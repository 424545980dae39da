//! The client/server split on disk: `keygen`, `encrypt` (client), `infer` (server), `decrypt`
//! (client). Files in one directory, each command reading only its side's files:
//!
//! | file | written by | read by | secret |
//! |---|---|---|---|
//! | `session.json` (model, backend, parameters) | keygen | all | no |
//! | `client.secret` | keygen | encrypt, decrypt | **yes** |
//! | `evaluation.keys` | keygen | infer | no |
//! | `inputs.json` (image indices, labels) | encrypt | decrypt | client side |
//! | `image-<i>.in.ct` | encrypt | infer | no |
//! | `image-<i>.out.ct` | infer | decrypt | no |
//!
//! `infer` never opens `client.secret`: the server is built from `evaluation.keys` alone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use peregrine_backend::{Backend, Client, Scheme};
use backend_clear::ClearScheme;
use peregrine_data::{load_cifar10, preprocess};
use peregrine_model::reference::Reference;
use peregrine_ops::{decrypt_output, encrypt_input, execute, Plan};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fhe::{argmax, Chosen, Target};

/// What `keygen` records for the other commands.
#[derive(Serialize, Deserialize)]
struct SessionFile {
    model: PathBuf,
    backend: String,
    params: String,
    plugin_dirs: Vec<PathBuf>,
    max_rotation_keys: Option<usize>,
}

/// The images `encrypt` wrote (client side).
#[derive(Serialize, Deserialize)]
struct Inputs {
    data: PathBuf,
    images: Vec<(usize, u8)>,
}

const SECRET: &str = "client.secret";
const KEYS: &str = "evaluation.keys";

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// Streams the client's evaluation keys to `dir/evaluation.keys` (through a temporary file);
/// returns their size in bytes.
fn write_keys<C: Client>(client: &C, dir: &Path) -> Result<u64> {
    let p = dir.join(KEYS);
    let tmp = dir.join(format!(".{KEYS}.tmp"));
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    client.write_evaluation_keys(&mut w)?;
    let file = w.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    let len = file.metadata().with_context(|| format!("writing {}", tmp.display()))?.len();
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(len)
}

fn session(dir: &Path) -> Result<(SessionFile, Target)> {
    let s: SessionFile = serde_json::from_slice(&read(dir, "session.json")?)
        .with_context(|| format!("{} is not a Peregrine session file", dir.join("session.json").display()))?;
    let t = Target {
        model: s.model.clone(),
        backend: s.backend.clone(),
        params: s.params.clone(),
        plugin_dirs: s.plugin_dirs.clone(),
        max_rotation_keys: s.max_rotation_keys,
    };
    Ok((s, t))
}

/// Several ciphertexts in one file: count, then (length, bytes) each.
fn pack(cts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PGCTS001");
    out.extend_from_slice(&(cts.len() as u64).to_le_bytes());
    for c in cts {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

fn unpack(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    let bad = || anyhow::anyhow!("{what} is not a Peregrine ciphertext file (truncated or corrupted)");
    if bytes.len() < 16 || &bytes[..8] != b"PGCTS001" {
        return Err(bad());
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into()?) as usize;
    let mut at = 16usize;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = bytes.get(at..at + 8).ok_or_else(bad)?;
        let len = u64::from_le_bytes(len.try_into()?) as usize;
        at += 8;
        out.push(bytes.get(at..at.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?.to_vec());
        at += len;
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok(out)
}

/// `peregrine keygen`: plans, generates keys, writes the client secret and the evaluation keys.
pub fn keygen_cmd(target: Target, dir: &Path, json_out: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (m, chosen, p, _) = target.load()?;
    let t = Instant::now();
    // The evaluation keys are streamed to disk: at N = 2^16 they are gigabytes.
    let (secret, secs, key_bytes) = match &chosen {
        Chosen::Clear(params) => {
            let c = ClearScheme::keygen(params, &p.key_request())?;
            let secs = t.elapsed().as_secs_f64();
            (c.save_secret()?, secs, write_keys(&c, dir)?)
        }
        Chosen::Plugin(pl, params) => {
            let c = pl.keygen(params, &p.key_request())?;
            let secs = t.elapsed().as_secs_f64();
            (c.save_secret()?, secs, write_keys(&c, dir)?)
        }
    };
    let s = SessionFile {
        model: std::fs::canonicalize(&target.model).unwrap_or(target.model.clone()),
        backend: target.backend.clone(),
        params: target.params.clone(),
        plugin_dirs: target.plugin_dirs.clone(),
        max_rotation_keys: target.max_rotation_keys,
    };
    write(dir, "session.json", &serde_json::to_vec_pretty(&s)?)?;
    write(dir, SECRET, &secret)?;
    let summary = json!({"model": m.graph().name, "backend": target.backend, "keygen_seconds": secs,
                         "evaluation_key_bytes": key_bytes, "rotation_keys": p.rotation_keys.len(),
                         "bootstrap_keys": p.key_request().bootstrap, "dir": dir});
    if json_out {
        println!("{summary}");
    } else {
        println!(
            "keys for {} on {} in {secs:.1} s: {} (evaluation keys, {:.1} MiB, {} rotations) and {} (SECRET: keep on the client) in {}",
            m.graph().name,
            target.backend,
            KEYS,
            key_bytes as f64 / 1048576.0,
            p.rotation_keys.len(),
            SECRET,
            dir.display()
        );
    }
    Ok(())
}

fn encrypt_with<C: Client>(client: &C, p: &Plan, x: &ArrayD<f64>, n: usize, dir: &Path) -> Result<()> {
    let per = x.len() / n.max(1);
    let flat = x.as_slice().context("contiguous input")?;
    for i in 0..n {
        let cts = encrypt_input(client, p, &flat[i * per..(i + 1) * per])?;
        let bytes: Vec<Vec<u8>> = cts.iter().map(|c| client.serialize_ciphertext(c)).collect::<Result<_, _>>()?;
        write(dir, &format!("image-{i}.in.ct"), &pack(&bytes))?;
    }
    Ok(())
}

/// `peregrine encrypt` (client): encrypts images from a CIFAR batch into `image-<i>.in.ct`.
pub fn encrypt_cmd(dir: &Path, data: &Path, limit: usize) -> Result<()> {
    let (_, target) = session(dir)?;
    let (m, chosen, p, _) = target.load()?;
    let imgs = load_cifar10(data, Some(limit))?;
    let x = preprocess::<f64>(&imgs.pixels, imgs.len(), &m.graph().input)?;
    let secret = read(dir, SECRET)?;
    let t = Instant::now();
    match &chosen {
        Chosen::Clear(_) => encrypt_with(&ClearScheme::load_client(&secret)?, &p, &x, imgs.len(), dir)?,
        Chosen::Plugin(pl, _) => encrypt_with(&pl.load_client(&secret)?, &p, &x, imgs.len(), dir)?,
    }
    let inputs = Inputs {
        data: std::fs::canonicalize(data).unwrap_or(data.to_path_buf()),
        images: (0..imgs.len()).map(|i| (i, imgs.labels[i])).collect(),
    };
    write(dir, "inputs.json", &serde_json::to_vec_pretty(&inputs)?)?;
    println!("encrypted {} images into {} in {:.1} s", imgs.len(), dir.display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn infer_with<B: Backend>(server: &B, p: &Plan, dir: &Path, quiet: bool, started: &Instant) -> Result<Vec<f64>> {
    if !quiet {
        eprintln!("evaluation keys loaded in {:.1} s", started.elapsed().as_secs_f64());
    }
    let mut times = Vec::new();
    for i in 0.. {
        let name = format!("image-{i}.in.ct");
        if !dir.join(&name).exists() {
            break;
        }
        let cts = unpack(&read(dir, &name)?, &name)?
            .iter()
            .map(|b| server.deserialize_ciphertext(b))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {name}"))?;
        let t = Instant::now();
        let (out, _) = execute(p, server, cts, |_, _, _: &[B::Ciphertext]| {})?;
        times.push(t.elapsed().as_secs_f64());
        if !quiet {
            eprintln!("image {i}: {:.2} s", t.elapsed().as_secs_f64());
        }
        let bytes: Vec<Vec<u8>> = out.iter().map(|c| server.serialize_ciphertext(c)).collect::<Result<_, _>>()?;
        write(dir, &format!("image-{i}.out.ct"), &pack(&bytes))?;
    }
    Ok(times)
}

/// `peregrine infer` (server): evaluates every `image-<i>.in.ct` with the evaluation keys only.
pub fn infer_cmd(dir: &Path, json_out: bool) -> Result<()> {
    let (_, target) = session(dir)?;
    let (m, chosen, p, _) = target.load()?;
    let keys = dir.join(KEYS);
    if !keys.is_file() {
        bail!("{} is missing: run `peregrine keygen` first", keys.display());
    }
    let t = Instant::now();
    let times = match &chosen {
        Chosen::Clear(_) => infer_with(&ClearScheme::server_from_file(&keys)?, &p, dir, json_out, &t)?,
        Chosen::Plugin(pl, _) => infer_with(&pl.server_from_file(&keys)?, &p, dir, json_out, &t)?,
    };
    if times.is_empty() {
        bail!("no image-0.in.ct in {}: run `peregrine encrypt` first", dir.display());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    if json_out {
        println!(
            "{}",
            json!({"model": m.graph().name, "images": times.len(), "seconds_per_image": times, "mean_seconds_per_image": mean,
                   "total_seconds": t.elapsed().as_secs_f64()})
        );
    } else {
        println!("evaluated {} encrypted images ({} on {}): {mean:.2} s/image", times.len(), m.graph().name, target.backend);
    }
    Ok(())
}

fn decrypt_with<C: Client>(client: &C, p: &Plan, dir: &Path, n: usize) -> Result<Vec<Vec<f64>>> {
    (0..n)
        .map(|i| {
            let name = format!("image-{i}.out.ct");
            let cts = unpack(&read(dir, &name)?, &name)?
                .iter()
                .map(|b| client.deserialize_ciphertext(b))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {name}"))?;
            Ok(decrypt_output(client, p, &cts)?)
        })
        .collect()
}

/// `peregrine decrypt` (client): decrypts every `image-<i>.out.ct`, compares with the cleartext
/// reference on the same images.
pub fn decrypt_cmd(dir: &Path, json_out: bool) -> Result<()> {
    let (_, target) = session(dir)?;
    let (m, chosen, p, _) = target.load()?;
    let inputs: Inputs = serde_json::from_slice(&read(dir, "inputs.json")?).context("inputs.json")?;
    let n = inputs.images.len();
    let secret = read(dir, SECRET)?;
    let logits = match &chosen {
        Chosen::Clear(_) => decrypt_with(&ClearScheme::load_client(&secret)?, &p, dir, n)?,
        Chosen::Plugin(pl, _) => decrypt_with(&pl.load_client(&secret)?, &p, dir, n)?,
    };
    let imgs = load_cifar10(&inputs.data, Some(n))?;
    let x = preprocess::<f64>(&imgs.pixels, n, &m.graph().input)?;
    let reference = Reference::<f64>::new(&m);
    let per = x.len() / n.max(1);
    let mut rows = Vec::new();
    for (i, got) in logits.iter().enumerate() {
        let s = &m.graph().input.shape;
        let xin = ArrayD::from_shape_vec(IxDyn(&[1, s[0], s[1], s[2]]), x.as_slice().expect("contiguous")[i * per..(i + 1) * per].to_vec())?;
        let want: Vec<f64> = reference.run(&xin)?.iter().copied().collect();
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        rows.push(json!({"index": inputs.images[i].0, "label": inputs.images[i].1, "prediction": argmax(got),
                         "reference_prediction": argmax(&want), "agree": argmax(got) == argmax(&want), "max_abs_logit_error": err,
                         "logits": got}));
    }
    let agree = rows.iter().filter(|r| r["agree"] == true).count();
    if json_out {
        println!("{}", json!({"model": m.graph().name, "images": rows, "agree": agree}));
    } else {
        for r in &rows {
            println!(
                "image {:>4}: prediction {} (reference {}, label {}), max |Δlogit| {:.3e}",
                r["index"], r["prediction"], r["reference_prediction"], r["label"], r["max_abs_logit_error"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!("agreement with the cleartext reference: {agree}/{n}");
    }
    Ok(())
}
