//! Test fixture: the `clear` plugin's function table with `abi_version` set to a version this
//! build does not speak. The loader must refuse it with a clear message.

#![warn(missing_docs)]

use std::sync::OnceLock;

use peregrine_core::clear::ClearScheme;
use peregrine_core::plugin::abi::PluginVTable;

/// ABI version this fixture claims.
pub const FAKE_ABI_VERSION: u32 = 999;

/// Entry point returning a table with the wrong ABI version.
#[no_mangle]
pub extern "C" fn peregrine_plugin_entry() -> *const PluginVTable {
    static GOOD: OnceLock<PluginVTable> = OnceLock::new();
    static BAD: OnceLock<PluginVTable> = OnceLock::new();
    let good = peregrine_core::plugin::export::vtable::<ClearScheme>(&GOOD);
    BAD.get_or_init(|| {
        // SAFETY: the table holds only plain pointers; a bitwise copy is a valid table.
        let mut t = unsafe { std::ptr::read(good) };
        t.abi_version = FAKE_ABI_VERSION;
        t
    }) as *const _
}
