//! Turns openfhe-sys's finding (`DEP_PEREGRINE_OPENFHE_FOUND`) into `cfg(openfhe)`, and embeds
//! OpenFHE's library directory as an rpath in this package's plugin, tests and benches, so they
//! run without LD_LIBRARY_PATH; marks the plugin `nodelete` (see below).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(openfhe)");
    if std::env::var("DEP_PEREGRINE_OPENFHE_FOUND").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=openfhe");
        if let Ok(dir) = std::env::var("DEP_PEREGRINE_OPENFHE_LIBDIR") {
            // DT_RPATH (not RUNPATH) so that OpenFHE's own libraries find each other too.
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{dir}");
        }
        // OpenFHE's process-wide caches (contexts, keys) hold objects whose shared-pointer
        // control blocks are instantiated in this library; unloading the plugin would leave
        // them pointing at unmapped code when the caches are destroyed at exit. `nodelete`
        // keeps the plugin mapped after dlclose.
        println!("cargo:rustc-link-arg-cdylib=-Wl,-z,nodelete");
    }
}
