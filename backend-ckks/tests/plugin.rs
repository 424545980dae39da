//! The `ckks` plugin (this crate built as a `cdylib`), loaded at run time, computes what the
//! linked backend computes and exchanges ciphertexts and keys with it.

use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::conformance::{built_library, values};
use peregrine_backend::plugin::Plugin;
use peregrine_backend::*;

#[test]
fn the_plugin_runs_ckks_and_interoperates_with_the_linked_crate() {
    let plugin = Plugin::load(built_library("backend_ckks")).unwrap();
    assert_eq!(plugin.name(), "ckks");
    let params = CkksParams::insecure_for_tests(10, 3, 40);
    let json = serde_json::to_string(&params).unwrap();
    // Keys made by the plugin serve the linked server, and the other way round.
    let pclient = plugin.keygen(&json, &KeyRequest::rotations([1])).unwrap();
    let linked_server = CkksScheme::server(&pclient.evaluation_keys().unwrap()).unwrap();
    let x = values(101, 7);
    let ct = linked_server
        .deserialize_ciphertext(&pclient.serialize_ciphertext(&pclient.encrypt_values(&x).unwrap()).unwrap())
        .unwrap();
    let sq = linked_server.rescale(&linked_server.mul(&ct, &ct).unwrap()).unwrap();
    let back = pclient.deserialize_ciphertext(&linked_server.serialize_ciphertext(&sq).unwrap()).unwrap();
    let got = pclient.decrypt_values(&back).unwrap();
    for (g, v) in got.iter().zip(&x) {
        assert!((g - v * v).abs() < 1e-6, "{g} vs {}", v * v);
    }
    let lclient = CkksScheme::keygen(&params, &KeyRequest::rotations([1])).unwrap();
    let pserver = plugin.server(&lclient.evaluation_keys().unwrap()).unwrap();
    let ct = pserver
        .deserialize_ciphertext(&lclient.serialize_ciphertext(&lclient.encrypt_values(&x).unwrap()).unwrap())
        .unwrap();
    let r = pserver.rotate(&ct, 1).unwrap();
    let got = lclient
        .decrypt_values(&lclient.deserialize_ciphertext(&pserver.serialize_ciphertext(&r).unwrap()).unwrap())
        .unwrap();
    for i in 0..100 {
        assert!((got[i] - x[i + 1]).abs() < 1e-6);
    }
    // Errors cross the ABI with their meaning.
    let e = pserver.rotate(&ct, 2).err().unwrap().to_string();
    assert!(e.contains("rotation key"), "{e}");
    let insecure = serde_json::to_string(&CkksParams { insecure_test_only: false, ..params }).unwrap();
    let e = plugin.keygen(&insecure, &KeyRequest::default()).err().unwrap().to_string();
    assert!(e.contains("insecure"), "{e}");
}
