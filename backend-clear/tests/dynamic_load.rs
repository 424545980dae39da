//! Loads the `clear` plugin (this crate built as a `cdylib`) at run time and checks it behaves
//! bit for bit like the statically linked backend, streams keys, and is discovered.

use std::path::PathBuf;
use std::sync::Arc;

use backend_clear::{ClearParams, ClearScheme, NoiseModel};
use peregrine_backend::conformance::{receive, send};
use peregrine_backend::plugin::{discover, Plugin};
use peregrine_backend::*;

/// Finds a cdylib built by cargo next to this test binary.
fn built_lib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    for dir in [deps, deps.parent().unwrap()] {
        let p = dir.join(&name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} was not built next to {}", exe.display());
}

fn params() -> ClearParams {
    ClearParams {
        log_ring_dimension: 7,
        log_scale: 35,
        first_modulus_bits: 50,
        levels: 6,
        noise: Some(NoiseModel { fresh: 40.0, rescale: 10.0, key_switch: 20.0, bootstrap_relative: 0.0, encode: 0.0 }),
        ..ClearParams::default()
    }
}

/// A fixed workload over the whole backend surface; returns every decrypted intermediate.
fn workload<C: Client>(client: &C, server: &C::Backend) -> Vec<Vec<f64>> {
    let x: Vec<f64> = (0..61).map(|i| ((i * 37 % 23) as f64 - 11.0) / 13.0).collect();
    let y: Vec<f64> = (0..61).map(|i| ((i * 17 % 19) as f64 - 9.0) / 10.0).collect();
    let caps = client.capabilities();
    let d = caps.default_scale();
    let (a, b) = (send(client, server, &x).unwrap(), send(client, server, &y).unwrap());
    let pt = server.encode(&y, caps.max_level, d).unwrap();
    let mut outs = Vec::new();
    let mut push = |ct: &<C::Backend as Backend>::Ciphertext| {
        let mut v = receive(client, server, ct).unwrap();
        v.push(server.level(ct) as f64);
        v.push(server.scale(ct));
        outs.push(v);
    };
    push(&server.add(&a, &b).unwrap());
    push(&server.sub(&a, &b).unwrap());
    push(&server.negate(&a).unwrap());
    push(&server.add_plain(&a, &pt).unwrap());
    push(&server.sub_plain(&a, &pt).unwrap());
    let m = server.rescale(&server.mul(&a, &b).unwrap()).unwrap();
    push(&m);
    push(&server.rescale(&server.mul_plain(&a, &pt).unwrap()).unwrap());
    push(&server.rescale(&server.square(&a).unwrap()).unwrap());
    push(&server.add_scalar(&a, 0.3).unwrap());
    push(&server.rescale(&server.mul_scalar(&a, -0.7, d).unwrap()).unwrap());
    push(&server.mul_integer(&a, 5).unwrap());
    push(&server.drop_to_level(&a, 2).unwrap());
    push(&server.rotate(&a, 3).unwrap());
    push(&server.rotate(&a, -1).unwrap());
    for r in server.rotate_many(&a, &[3, -1]).unwrap() {
        push(&r);
    }
    push(&server.eval_poly(&a, &[0.1, 0.5, 0.25, 0.0, -0.125]).unwrap());
    push(&server.clone_ct(&m));
    outs
}

trait CloneCt: Backend {
    fn clone_ct(&self, c: &Self::Ciphertext) -> Self::Ciphertext {
        c.clone()
    }
}
impl<B: Backend> CloneCt for B {}

fn errors<C: Client>(client: &C, server: &C::Backend) -> Vec<String> {
    let a = client.encrypt_values(&[0.5]).unwrap();
    let low = server.drop_to_level(&a, 1).unwrap();
    vec![
        server.rotate(&a, 5).err().unwrap().to_string(),
        server.add(&a, &low).err().unwrap().to_string(),
        server.bootstrap(&a).err().unwrap().to_string(),
        server.rescale(&server.drop_to_level(&a, 0).unwrap()).err().unwrap().to_string(),
        server.deserialize_ciphertext(b"junk").err().unwrap().to_string(),
    ]
}

fn load_clear() -> Arc<Plugin> {
    Plugin::load(built_lib("backend_clear")).expect("clear plugin loads")
}

#[test]
fn dynamically_loaded_clear_matches_the_static_backend_bit_for_bit() {
    let plugin = load_clear();
    assert_eq!(plugin.name(), "clear");
    assert_eq!(plugin.description(), ClearScheme::DESCRIPTION);
    let p = params();
    let pjson = serde_json::to_string(&p).unwrap();
    assert_eq!(plugin.capabilities(&pjson).unwrap(), ClearScheme::capabilities(&p).unwrap());
    let req = KeyRequest::rotations([3, -1]);

    let sc = ClearScheme::keygen(&p, &req).unwrap();
    let ss = ClearScheme::server(&sc.evaluation_keys().unwrap()).unwrap();
    let dc = plugin.keygen(&pjson, &req).unwrap();
    let ds = plugin.server(&dc.evaluation_keys().unwrap()).unwrap();
    assert_eq!(ds.rotation_steps(), ss.rotation_steps());
    assert_eq!(ds.modulus(3), ss.modulus(3));

    let stat = workload(&sc, &ss);
    let dynm = workload(&dc, &ds);
    assert_eq!(stat.len(), dynm.len());
    for (i, (s, d)) in stat.iter().zip(&dynm).enumerate() {
        assert_eq!(s, d, "output {i} differs between static and plugin");
    }
    assert_eq!(errors(&sc, &ss), errors(&dc, &ds));
}

#[test]
fn plugin_and_static_sides_interoperate() {
    // Keys made by the static client drive a plugin server, and back.
    let plugin = load_clear();
    let p = ClearParams { noise: None, ..params() };
    let client = ClearScheme::keygen(&p, &KeyRequest::rotations([1])).unwrap();
    let server = plugin.server(&client.evaluation_keys().unwrap()).unwrap();
    let ct = server
        .deserialize_ciphertext(&client.serialize_ciphertext(&client.encrypt_values(&[1.0, 2.0]).unwrap()).unwrap())
        .unwrap();
    let r = server.rotate(&ct, 1).unwrap();
    let back = client.deserialize_ciphertext(&server.serialize_ciphertext(&r).unwrap()).unwrap();
    assert_eq!(client.decrypt_values(&back).unwrap()[0], 2.0);
}

#[test]
fn bad_parameters_through_the_plugin_are_reported() {
    let plugin = load_clear();
    let e = plugin.capabilities("{\"levels\": 0}").unwrap_err().to_string();
    assert!(e.contains("levels"), "{e}");
    let e = plugin.keygen("{\"no_such_field\": 1}", &KeyRequest::default()).err().unwrap().to_string();
    assert!(e.contains("no_such_field"), "{e}");
    let e = plugin.server(b"not keys").err().unwrap().to_string();
    assert!(e.contains("evaluation keys"), "{e}");
}

#[test]
fn discovery_finds_the_clear_plugin_beside_a_broken_library() {
    let dir = std::env::temp_dir().join(format!("peregrine-plugin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("libfake{}", std::env::consts::DLL_SUFFIX)), b"this is not a shared library")
        .unwrap();
    std::fs::copy(built_lib("backend_clear"), dir.join(format!("libclear{}", std::env::consts::DLL_SUFFIX))).unwrap();
    let found = discover(std::slice::from_ref(&dir));
    assert_eq!(found.len(), 2);
    let ok: Vec<_> = found.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|p| p.name().to_string()).collect();
    assert_eq!(ok, vec!["clear"]);
    assert!(found
        .iter()
        .any(|(_, r)| r.as_ref().is_err_and(|e| e.to_string().contains("not a loadable shared library"))));
    std::fs::remove_dir_all(dir).ok();
}

/// A writer that fails after `limit` bytes.
struct FailingWriter {
    limit: usize,
    written: usize,
}
impl std::io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() > self.limit {
            return Err(std::io::Error::other("disk full (test)"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn evaluation_keys_stream_through_the_plugin_and_load_from_a_file() {
    let plugin = load_clear();
    let pjson = serde_json::to_string(&params()).unwrap();
    let client = plugin.keygen(&pjson, &KeyRequest::rotations([3, -1, 7])).unwrap();
    let whole = client.evaluation_keys().unwrap();
    let mut streamed = Vec::new();
    client.write_evaluation_keys(&mut streamed).unwrap();
    assert_eq!(streamed, whole, "streamed keys differ from the serialised ones");

    let dir = std::env::temp_dir().join(format!("peregrine-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("evaluation.keys");
    std::fs::write(&path, &streamed).unwrap();
    let server = plugin.server_from_file(&path).unwrap();
    let expected = plugin.server(&whole).unwrap();
    assert_eq!(server.rotation_steps(), expected.rotation_steps());
    let ct = client.encrypt_values(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let a = client.decrypt_values(
        &server.rotate(&server.deserialize_ciphertext(&client.serialize_ciphertext(&ct).unwrap()).unwrap(), 3).unwrap(),
    );
    assert!((a.unwrap()[0] - 4.0).abs() < 1e-3);

    // Errors: a missing file, a writer that fails midway, and no in-memory server for `clear`.
    let missing = plugin.server_from_file(&dir.join("nope.keys")).err().unwrap().to_string();
    assert!(missing.contains("nope.keys"), "{missing}");
    let failed = client.write_evaluation_keys(&mut FailingWriter { limit: 10, written: 0 }).err().unwrap().to_string();
    assert!(failed.contains("disk full (test)"), "{failed}");
    assert!(client.local_server().unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
