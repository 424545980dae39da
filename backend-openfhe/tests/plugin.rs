//! The OpenFHE backend loaded at run time as a plugin (`libbackend_openfhe.so`) computes the
//! same results as the statically linked crate, to CKKS precision, and reports the same
//! capabilities. Without OpenFHE at build time this test is reported as ignored.

#![cfg_attr(not(openfhe), allow(unused, dead_code, unreachable_code))]

use std::path::PathBuf;

use backend_openfhe::{OpenFheParams, OpenFheScheme};
use peregrine_backend::plugin::Plugin;
use peregrine_backend::*;

mod common;
use common::{workload, STEPS};

/// OpenFHE keeps evaluation keys in process-wide maps that key generation writes while
/// evaluation reads them; the tests of this file take turns instead of racing on them.
static OPENFHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn built_lib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} was not built next to {}", exe.display()))
}

#[test]
#[cfg_attr(not(openfhe), ignore = "OpenFHE was not found when this was built")]
fn plugin_matches_the_linked_backend() {
    let _turn = OPENFHE.lock().unwrap_or_else(|p| p.into_inner());
    let plugin = Plugin::load(built_lib("backend_openfhe")).unwrap();
    assert_eq!(plugin.name(), "openfhe");
    let p = OpenFheParams::insecure_for_tests(12, 6);
    let json = serde_json::to_string(&p).unwrap();
    let caps = plugin.capabilities(&json).unwrap();
    assert_eq!(caps, OpenFheScheme::capabilities(&p).unwrap());
    let req = KeyRequest::rotations(STEPS.iter().map(|&s| normalize_rotation(s, caps.slots)));

    let pc = plugin.keygen(&json, &req).unwrap();
    let ps = plugin.server(&pc.evaluation_keys().unwrap()).unwrap();
    let sc = OpenFheScheme::keygen(&p, &req).unwrap();
    let ss = OpenFheScheme::server(&sc.evaluation_keys().unwrap()).unwrap();
    let n = 333;
    let a = workload(&pc, &ps, n);
    let b = workload(&sc, &ss, n);
    assert_eq!(a.len(), b.len());
    for ((name, x, lx), (_, y, ly)) in a.iter().zip(&b) {
        assert_eq!(lx, ly, "{name}: level");
        let err = x.iter().zip(y).fold(0f64, |m, (u, v)| m.max((u - v).abs()));
        assert!(err < 2f64.powi(-20), "{name}: plugin and linked differ by {err:.2e}");
    }
    // Errors cross the boundary as messages, not crashes.
    let e = plugin.capabilities(r#"{"log_ring_dimension": 12}"#).unwrap_err().to_string();
    assert!(e.contains("insecure_test_only"), "{e}");
    let e = plugin.server(b"garbage").map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("evaluation keys"), "{e}");
}

#[test]
#[cfg_attr(not(openfhe), ignore = "OpenFHE was not found when this was built")]
fn keys_stream_to_a_file_and_servers_share_or_load_them_through_the_plugin() {
    let _turn = OPENFHE.lock().unwrap_or_else(|p| p.into_inner());
    let plugin = Plugin::load(built_lib("backend_openfhe")).unwrap();
    let p = OpenFheParams::insecure_for_tests(11, 3);
    let json = serde_json::to_string(&p).unwrap();
    let client = plugin.keygen(&json, &KeyRequest::rotations([1, 5, 77])).unwrap();
    let dir = std::env::temp_dir().join(format!("peregrine-openfhe-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("evaluation.keys");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    client.write_evaluation_keys(&mut file).unwrap();
    drop(file);
    let from_file = plugin.server_from_file(&path).unwrap();
    let shared = client.local_server().unwrap().expect("OpenFHE shares keys in memory");
    let x: Vec<f64> = (0..203).map(|i| ((i * 29 % 41) as f64 - 20.0) / 23.0).collect();
    let ct = client.encrypt_values(&x).unwrap();
    for server in [&from_file, &shared] {
        let ct = server.deserialize_ciphertext(&client.serialize_ciphertext(&ct).unwrap()).unwrap();
        let hoisted = server.rotate_many(&ct, &[1, 5, 77]).unwrap();
        for (step, r) in [1usize, 5, 77].iter().zip(&hoisted) {
            let got = client
                .decrypt_values(&client.deserialize_ciphertext(&server.serialize_ciphertext(r).unwrap()).unwrap())
                .unwrap();
            let want = |i: usize| if i + step < x.len() { x[i + step] } else { 0.0 };
            let err = (0..x.len()).fold(0f64, |m, i| m.max((got[i] - want(i)).abs()));
            assert!(err < 2f64.powi(-18), "rotation by {step}: error {err:.2e}");
        }
        let e = server.rotate_many(&ct, &[1, 2]).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains('2'), "missing key for step 2 should be named: {e}");
    }
    // A truncated key file is refused with a message, not a crash. (Cut early: rotation keys of a
    // tag already loaded in this process, the client's, are shared rather than read again.)
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 50]).unwrap();
    let e = plugin.server_from_file(&path).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("evaluation keys"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
