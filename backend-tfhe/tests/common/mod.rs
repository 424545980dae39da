//! Keys of the 4-bit set, made once per test binary (a few seconds each time otherwise).

use std::sync::OnceLock;

use backend_tfhe::lwe::{LweClient, LweParams, LweServer};

/// The client and server keys of the 4-bit set.
pub fn keys() -> &'static (LweClient, LweServer) {
    static K: OnceLock<(LweClient, LweServer)> = OnceLock::new();
    K.get_or_init(|| {
        let c = LweClient::new(LweParams::with_bits(4).unwrap());
        let s = c.server();
        (c, s)
    })
}
