//! The model file: one `.safetensors` file holding the weights as tensors and the graph as
//! versioned JSON in the metadata (key [`GRAPH_KEY`]). Any safetensors tool can open it.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{ModelError, Result};
use crate::ir::{Graph, Model, Weights, FORMAT_VERSION};

/// Metadata key under which the graph JSON is stored.
pub const GRAPH_KEY: &str = "peregrine.graph";
/// Metadata key holding the format version as a decimal string (readable without parsing JSON).
pub const VERSION_KEY: &str = "peregrine.format_version";
/// Metadata key holding the BLAKE3 digests (hex) of the graph JSON and of every tensor's
/// little-endian bytes, as a JSON object `{"graph": …, "tensors": {name: …}}`. Written with every
/// model; files from before it (no such key) load without the check.
pub const DIGESTS_KEY: &str = "peregrine.digests";

/// BLAKE3 of a tensor's little-endian f32 bytes, as hex.
fn tensor_digest(v: &ArrayD<f32>) -> String {
    let mut h = blake3::Hasher::new();
    for x in v.iter() {
        h.update(&x.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The digests object of [`DIGESTS_KEY`].
fn digests(graph_json: &str, weights: &Weights) -> serde_json::Value {
    let tensors: serde_json::Map<String, serde_json::Value> =
        weights.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(tensor_digest(v)))).collect();
    serde_json::json!({"graph": blake3::hash(graph_json.as_bytes()).to_hex().to_string(), "tensors": tensors})
}

/// Checks the digests recorded in a model file against its graph and tensors.
fn verify_digests(recorded: &str, graph_json: &str, weights: &Weights) -> Result<()> {
    let recorded: serde_json::Value = serde_json::from_str(recorded)
        .map_err(|e| ModelError::MalformedModel(format!("'{DIGESTS_KEY}' metadata is not valid JSON: {e}")))?;
    let actual = digests(graph_json, weights);
    if recorded.get("graph") != actual.get("graph") {
        return Err(ModelError::DigestMismatch { what: "the graph".into() });
    }
    let (Some(want), Some(got)) = (recorded["tensors"].as_object(), actual["tensors"].as_object()) else {
        return Err(ModelError::MalformedModel(format!("'{DIGESTS_KEY}' metadata has no 'tensors' object")));
    };
    for (name, digest) in got {
        if want.get(name) != Some(digest) {
            return Err(ModelError::DigestMismatch { what: format!("tensor '{name}'") });
        }
    }
    if let Some(name) = want.keys().find(|k| !got.contains_key(*k)) {
        return Err(ModelError::DigestMismatch { what: format!("tensor '{name}' (recorded, but absent)") });
    }
    Ok(())
}

/// Serialises a model to the bytes of a `.safetensors` file.
pub fn model_to_bytes(model: &Model) -> Result<Vec<u8>> {
    let graph_json = serde_json::to_string(model.graph())
        .map_err(|e| ModelError::MalformedModel(format!("cannot serialise graph: {e}")))?;
    let mut meta = HashMap::new();
    meta.insert(DIGESTS_KEY.to_string(), digests(&graph_json, model.weights()).to_string());
    meta.insert(GRAPH_KEY.to_string(), graph_json);
    meta.insert(VERSION_KEY.to_string(), FORMAT_VERSION.to_string());
    tensors_to_bytes(model.weights(), Some(meta))
}

/// Serialises f32 tensors (and optional metadata) to safetensors bytes.
pub fn tensors_to_bytes(weights: &Weights, meta: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .iter()
        .map(|(k, v)| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), bytes, v.shape().to_vec())
        })
        .collect();
    let views = raw
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ModelError::MalformedModel(format!("tensor '{k}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, meta).map_err(|e| ModelError::MalformedModel(e.to_string()))
}

/// Writes a model to `path`, atomically: the bytes go to a temporary file beside it, which is
/// then renamed, so readers never see a half-written model and a failed write loses nothing.
pub fn save_model(model: &Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = model_to_bytes(model)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

/// Reads and validates a model from `path`.
///
/// ```
/// use peregrine_model::{import::small_cnn, load_model, save_model};
///
/// let path = std::env::temp_dir().join(format!("peregrine-doc-{}.safetensors", std::process::id()));
/// save_model(&small_cnn(&[4, 8], 1)?, &path)?;
/// let model = load_model(&path)?;
/// std::fs::remove_file(&path).ok();
/// assert_eq!(model.graph().input.shape, [3, 32, 32]);
/// // Anything that is not a valid model is an error naming the problem, never a panic.
/// assert!(load_model("no-such-model.safetensors").is_err());
/// # Ok::<(), peregrine_model::ModelError>(())
/// ```
pub fn load_model(path: impl AsRef<Path>) -> Result<Model> {
    let bytes = std::fs::read(path.as_ref()).map_err(|e| ModelError::io(&path, e))?;
    model_from_bytes(&bytes).map_err(|e| match e {
        ModelError::MalformedModel(m) => ModelError::MalformedModel(format!("{}: {m}", path.as_ref().display())),
        ModelError::DigestMismatch { what } => {
            ModelError::DigestMismatch { what: format!("{}: {what}", path.as_ref().display()) }
        }
        other => other,
    })
}

/// Parses and validates a model from safetensors bytes. Never panics on bad input.
pub fn model_from_bytes(bytes: &[u8]) -> Result<Model> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::MalformedModel(format!("not a readable safetensors file ({e})")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let graph_json = meta.get(GRAPH_KEY).ok_or_else(|| {
        ModelError::MalformedModel(format!(
            "no '{GRAPH_KEY}' metadata: this is a plain tensor file, not a Peregrine model (use `peregrine import`)"
        ))
    })?;
    // Check the version before the full parse so a newer format gets a version error, not a JSON error.
    let version = serde_json::from_str::<serde_json::Value>(graph_json)
        .map_err(|e| ModelError::MalformedModel(format!("graph metadata is not valid JSON: {e}")))?
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ModelError::MalformedModel("graph metadata has no numeric 'version'".into()))?;
    if version != FORMAT_VERSION as u64 {
        return Err(ModelError::UnsupportedVersion {
            found: version.min(u32::MAX as u64) as u32,
            supported: FORMAT_VERSION,
        });
    }
    let weights = tensors_from_bytes(bytes)?;
    if let Some(recorded) = meta.get(DIGESTS_KEY) {
        verify_digests(recorded, graph_json, &weights)?;
    }
    let graph: Graph = serde_json::from_str(graph_json)
        .map_err(|e| ModelError::MalformedModel(format!("graph metadata does not describe a valid graph: {e}")))?;
    Model::new(graph, weights)
}

/// Reads every tensor of a safetensors file as f32 (other dtypes are rejected by name).
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Weights> {
    let bytes = std::fs::read(path.as_ref()).map_err(|e| ModelError::io(&path, e))?;
    tensors_from_bytes(&bytes).map_err(|e| match e {
        ModelError::MalformedModel(m) => ModelError::MalformedModel(format!("{}: {m}", path.as_ref().display())),
        other => other,
    })
}

/// Reads every tensor of safetensors bytes as f32.
pub fn tensors_from_bytes(bytes: &[u8]) -> Result<Weights> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::MalformedModel(format!("not a readable safetensors file ({e})")))?;
    let mut out = Weights::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Weight(format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype())));
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let arr = ArrayD::from_shape_vec(IxDyn(view.shape()), data)
            .map_err(|e| ModelError::Weight(format!("tensor '{name}': {e}")))?;
        out.insert(name, arr);
    }
    Ok(out)
}
