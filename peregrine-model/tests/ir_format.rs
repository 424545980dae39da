//! IR round trip and every malformed-file case: each gives a clear error naming the problem.

use peregrine_model::format::*;
use peregrine_model::ir::*;
use peregrine_model::testkit::*;
use peregrine_model::ModelError as Error;

fn bytes_with_graph(model: &Model, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut g = serde_json::to_value(model.graph()).unwrap();
    edit(&mut g);
    let mut meta = std::collections::HashMap::new();
    meta.insert(GRAPH_KEY.to_string(), g.to_string());
    tensors_to_bytes(model.weights(), Some(meta)).unwrap()
}

fn err_of(bytes: &[u8]) -> Error {
    model_from_bytes(bytes).expect_err("must be rejected")
}

#[test]
fn round_trip_preserves_graph_weights_and_shapes() {
    let m = every_op_model(1);
    let bytes = model_to_bytes(&m).unwrap();
    let back = model_from_bytes(&bytes).unwrap();
    assert_eq!(back.graph(), m.graph());
    assert_eq!(back.weights(), m.weights());
    assert_eq!(back.shapes(), m.shapes());
    assert_eq!(m.output_shape(), &vec![5]);
    // The file is plain safetensors: the metadata is readable without Peregrine.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta.metadata().as_ref().unwrap().contains_key(GRAPH_KEY));
}

#[test]
fn save_and_load_through_a_file() {
    let m = every_op_model(2);
    let dir = std::env::temp_dir().join(format!("peregrine-ir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    save_model(&m, &p).unwrap();
    assert_eq!(load_model(&p).unwrap().graph(), m.graph());
    let missing = load_model(dir.join("nope.safetensors")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn nodes_are_sorted_topologically_whatever_their_order_in_the_file() {
    let m = every_op_model(3);
    let (mut g, w) = m.clone().into_parts();
    g.nodes.reverse();
    let m2 = Model::new(g, w).unwrap();
    assert_eq!(m2.graph().nodes, m.graph().nodes);
}

#[test]
fn truncated_file() {
    let bytes = model_to_bytes(&every_op_model(4)).unwrap();
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let e = err_of(&bytes[..cut]);
        assert!(matches!(e, Error::MalformedModel(_)), "cut at {cut}: {e}");
    }
}

#[test]
fn garbage_and_plain_tensor_files() {
    let e = err_of(b"this is not a model at all, just some text.....");
    assert!(matches!(e, Error::MalformedModel(_)), "{e}");
    let m = every_op_model(5);
    let plain = tensors_to_bytes(m.weights(), None).unwrap();
    let e = err_of(&plain);
    assert!(e.to_string().contains("peregrine.graph"), "{e}");
}

#[test]
fn unknown_format_version() {
    let m = every_op_model(6);
    let e = err_of(&bytes_with_graph(&m, |g| g["version"] = 99.into()));
    assert!(matches!(e, Error::UnsupportedVersion { found: 99, supported: 1 }), "{e}");
}

#[test]
fn graph_json_that_is_not_a_graph() {
    let m = every_op_model(7);
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][0]["op"] = "warp_drive".into()));
    assert!(matches!(e, Error::MalformedModel(_)), "{e}");
    assert!(e.to_string().contains("warp_drive"), "{e}");
}

#[test]
fn missing_tensor() {
    let m = every_op_model(8);
    let (g, mut w) = m.into_parts();
    w.remove("bn.v");
    let e = Model::new(g, w).unwrap_err();
    assert!(matches!(e, Error::Weight(_)) && e.to_string().contains("'bn.v'"), "{e}");
}

#[test]
fn extra_tensor() {
    let m = every_op_model(9);
    let (g, mut w) = m.into_parts();
    w.insert("stowaway".into(), ndarray::ArrayD::zeros(ndarray::IxDyn(&[2])));
    let e = Model::new(g, w).unwrap_err();
    assert!(e.to_string().contains("'stowaway'"), "{e}");
}

#[test]
fn wrong_dtype() {
    let m = every_op_model(10);
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    let data: Vec<Vec<u8>> = m.weights().values().map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let f64data: Vec<u8> = [0f64; 6].iter().flat_map(|x| x.to_le_bytes()).collect();
    for ((k, v), d) in m.weights().iter().zip(&data) {
        if k == "c1.b" {
            tensors.push((
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F64, vec![6], &f64data).unwrap(),
            ));
        } else {
            tensors.push((
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, v.shape().to_vec(), d).unwrap(),
            ));
        }
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert(GRAPH_KEY.to_string(), serde_json::to_string(m.graph()).unwrap());
    let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
    let e = err_of(&bytes);
    assert!(e.to_string().contains("'c1.b'") && e.to_string().contains("F64"), "{e}");
}

#[test]
fn wrong_shape() {
    let m = every_op_model(11);
    let (g, mut w) = m.into_parts();
    w.insert("c1.w".into(), ndarray::ArrayD::zeros(ndarray::IxDyn(&[6, 3, 5, 3])));
    let e = Model::new(g, w).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("'c1.w'") && s.contains("[6, 3, 5, 3]") && s.contains("[6, 3, 3, 3]"), "{s}");
}

#[test]
fn dangling_reference() {
    let m = every_op_model(12);
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][2]["inputs"][0] = "ghost".into()));
    assert!(matches!(e, Error::InvalidGraph(_)) && e.to_string().contains("'ghost'"), "{e}");
}

#[test]
fn cycle() {
    let m = every_op_model(13);
    // bn reads silu, silu reads bn.
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][1]["inputs"][0] = "silu".into()));
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn duplicate_names_unknown_output_and_reserved_names() {
    let m = every_op_model(14);
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][3]["name"] = "silu".into()));
    assert!(e.to_string().contains("two nodes are named 'silu'"), "{e}");
    let e = err_of(&bytes_with_graph(&m, |g| g["output"] = "nowhere".into()));
    assert!(e.to_string().contains("'nowhere'"), "{e}");
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][0]["name"] = "input".into()));
    assert!(e.to_string().contains("reserved"), "{e}");
}

#[test]
fn shape_inconsistencies_name_the_node() {
    let m = every_op_model(15);
    // Channel mismatch: conv expects 3 input channels, give it an input of 4.
    let e = err_of(&bytes_with_graph(&m, |g| {
        g["input"]["shape"] = serde_json::json!([4, 13, 11]);
        g["input"]["preprocess"]["mean"] = serde_json::json!([0.5, 0.5, 0.5, 0.5]);
        g["input"]["preprocess"]["std"] = serde_json::json!([0.25, 0.25, 0.25, 0.25]);
    }));
    assert!(matches!(e, Error::Shape(_)) && e.to_string().contains("'c1'"), "{e}");
    // Linear directly on a feature map.
    let e = err_of(&bytes_with_graph(&m, |g| {
        let n = g["nodes"].as_array().unwrap().len();
        g["nodes"][n - 1]["inputs"][0] = "gap".into();
    }));
    assert!(e.to_string().contains("flatten"), "{e}");
    // A window larger than its input.
    let e = err_of(&bytes_with_graph(&m, |g| g["nodes"][10]["kernel"] = serde_json::json!([40, 2])));
    assert!(e.to_string().contains("'ap'"), "{e}");
}

#[test]
fn non_finite_weights_are_rejected() {
    let m = every_op_model(16);
    let (g, mut w) = m.into_parts();
    w.get_mut("fc.b").unwrap()[[0]] = f32::NAN;
    let e = Model::new(g, w).unwrap_err();
    assert!(e.to_string().contains("'fc.b'") && e.to_string().contains("NaN"), "{e}");
}

#[test]
fn a_changed_tensor_or_graph_is_refused_by_its_digest_naming_it() {
    let m = every_op_model(7);
    let bytes = model_to_bytes(&m).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for (name, view) in st.tensors() {
        // One flipped byte in the middle of the tensor's data.
        let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize + view.data().len() / 2;
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let e = err_of(&bad);
        assert!(matches!(&e, Error::DigestMismatch { what } if what.contains(&name)), "{name}: {e}");
        checked += 1;
    }
    assert_eq!(checked, m.weights().len());
    // A graph edited after writing (its digest kept).
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    let mut g: serde_json::Value = serde_json::from_str(&meta[GRAPH_KEY]).unwrap();
    g["name"] = "renamed".into();
    meta.insert(GRAPH_KEY.to_string(), g.to_string());
    let e = err_of(&tensors_to_bytes(m.weights(), Some(meta.clone())).unwrap());
    assert!(matches!(&e, Error::DigestMismatch { what } if what == "the graph"), "{e}");
    // A tensor removed from the file along with its graph node would still be caught.
    let mut fewer = m.weights().clone();
    let first = fewer.keys().next().unwrap().clone();
    fewer.remove(&first);
    meta.insert(GRAPH_KEY.to_string(), serde_json::to_string(m.graph()).unwrap());
    let e = err_of(&tensors_to_bytes(&fewer, Some(meta)).unwrap());
    assert!(matches!(&e, Error::DigestMismatch { what } if what.contains(&first)), "{e}");
    // Files written before digests existed still load.
    assert!(model_from_bytes(&bytes_with_graph(&m, |_| {})).is_ok());
    // Through a file, the message names it.
    let dir = std::env::temp_dir().join(format!("peregrine-digest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("flipped.safetensors");
    let mut bad = bytes.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x01;
    std::fs::write(&p, &bad).unwrap();
    let msg = load_model(&p).unwrap_err().to_string();
    assert!(msg.contains("flipped.safetensors") && msg.contains("does not match its digest"), "{msg}");
    std::fs::remove_dir_all(dir).ok();
}
