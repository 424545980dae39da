//! Stand-ins used when OpenFHE was not found at build time: every entry point fails with
//! [`openfhe_sys::UNAVAILABLE_REASON`]; the types cannot be constructed.

use std::collections::BTreeSet;

use peregrine_backend::BackendError;
use peregrine_backend::{BResult, Backend, Capabilities, Client, KeyRequest, Scheme};

use crate::{OpenFheParams, OpenFheScheme};

fn unavailable<T>() -> BResult<T> {
    Err(BackendError::Library(openfhe_sys::UNAVAILABLE_REASON.into()))
}

/// Uninhabited: OpenFHE is unavailable in this build.
#[derive(Clone)]
pub enum OpenFheCiphertext {}
/// Uninhabited: OpenFHE is unavailable in this build.
#[derive(Clone)]
pub enum OpenFhePlaintext {}
/// Uninhabited: OpenFHE is unavailable in this build.
pub enum OpenFheClient {}
/// Uninhabited: OpenFHE is unavailable in this build.
pub enum OpenFheServer {}

impl Scheme for OpenFheScheme {
    const NAME: &'static str = "openfhe";
    const DESCRIPTION: &'static str = "OpenFHE CKKS (UNAVAILABLE: OpenFHE was not found when this was built)";
    type Params = OpenFheParams;
    type Client = OpenFheClient;
    type Server = OpenFheServer;
    fn capabilities(_: &OpenFheParams) -> BResult<Capabilities> {
        unavailable()
    }
    fn keygen(_: &OpenFheParams, _: &KeyRequest) -> BResult<OpenFheClient> {
        unavailable()
    }
    fn server(_: &[u8]) -> BResult<OpenFheServer> {
        unavailable()
    }
}

impl Client for OpenFheClient {
    type Backend = OpenFheServer;
    fn capabilities(&self) -> Capabilities {
        match *self {}
    }
    fn encode(&self, _: &[f64], _: usize, _: f64) -> BResult<OpenFhePlaintext> {
        match *self {}
    }
    fn encrypt(&self, _: &OpenFhePlaintext) -> BResult<OpenFheCiphertext> {
        match *self {}
    }
    fn decrypt(&self, _: &OpenFheCiphertext) -> BResult<OpenFhePlaintext> {
        match *self {}
    }
    fn decode(&self, _: &OpenFhePlaintext) -> BResult<Vec<f64>> {
        match *self {}
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        match *self {}
    }
    fn serialize_ciphertext(&self, _: &OpenFheCiphertext) -> BResult<Vec<u8>> {
        match *self {}
    }
    fn deserialize_ciphertext(&self, _: &[u8]) -> BResult<OpenFheCiphertext> {
        match *self {}
    }
}

impl OpenFheClient {
    /// A server sharing the client's keys in memory (it cannot exist in this build).
    pub fn server_in_process(&self) -> BResult<OpenFheServer> {
        match *self {}
    }
}

impl OpenFheServer {
    /// Whether the server holds a secret key (it cannot exist in this build).
    pub fn holds_secret_key(&self) -> bool {
        match *self {}
    }
}

macro_rules! never {
    ($($name:ident ( $($arg:ty),* ) -> $ret:ty;)*) => {
        $(fn $name(&self, $(_: $arg),*) -> $ret { match *self {} })*
    };
}

impl Backend for OpenFheServer {
    type Ciphertext = OpenFheCiphertext;
    type Plaintext = OpenFhePlaintext;
    never! {
        capabilities() -> Capabilities;
        rotation_steps() -> BTreeSet<i64>;
        modulus(usize) -> f64;
        level(&OpenFheCiphertext) -> usize;
        scale(&OpenFheCiphertext) -> f64;
        plaintext_level(&OpenFhePlaintext) -> usize;
        plaintext_scale(&OpenFhePlaintext) -> f64;
        encode(&[f64], usize, f64) -> BResult<OpenFhePlaintext>;
        add(&OpenFheCiphertext, &OpenFheCiphertext) -> BResult<OpenFheCiphertext>;
        sub(&OpenFheCiphertext, &OpenFheCiphertext) -> BResult<OpenFheCiphertext>;
        negate(&OpenFheCiphertext) -> BResult<OpenFheCiphertext>;
        add_plain(&OpenFheCiphertext, &OpenFhePlaintext) -> BResult<OpenFheCiphertext>;
        sub_plain(&OpenFheCiphertext, &OpenFhePlaintext) -> BResult<OpenFheCiphertext>;
        mul_plain(&OpenFheCiphertext, &OpenFhePlaintext) -> BResult<OpenFheCiphertext>;
        add_scalar(&OpenFheCiphertext, f64) -> BResult<OpenFheCiphertext>;
        mul_scalar(&OpenFheCiphertext, f64, f64) -> BResult<OpenFheCiphertext>;
        mul_integer(&OpenFheCiphertext, i64) -> BResult<OpenFheCiphertext>;
        mul(&OpenFheCiphertext, &OpenFheCiphertext) -> BResult<OpenFheCiphertext>;
        rescale(&OpenFheCiphertext) -> BResult<OpenFheCiphertext>;
        drop_to_level(&OpenFheCiphertext, usize) -> BResult<OpenFheCiphertext>;
        rotate(&OpenFheCiphertext, i64) -> BResult<OpenFheCiphertext>;
        serialize_ciphertext(&OpenFheCiphertext) -> BResult<Vec<u8>>;
        deserialize_ciphertext(&[u8]) -> BResult<OpenFheCiphertext>;
    }
}
