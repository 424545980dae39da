//! The committed C header describes exactly the Rust function table: compile it with the
//! system C compiler and compare the size and the offset of every field.

mod common;

use std::mem::offset_of;
use std::process::Command;

use peregrine_backend::plugin::abi::{PluginVTable, ABI_VERSION};

macro_rules! offsets {
    ($($f:ident),*) => { vec![$((stringify!($f), offset_of!(PluginVTable, $f))),*] };
}

#[test]
fn c_header_matches_the_rust_vtable() {
    let fields = offsets!(
        abi_version,
        struct_size,
        name,
        description,
        string_free,
        bytes_free,
        capabilities,
        client_new,
        client_free,
        client_capabilities,
        client_evaluation_keys,
        client_encode,
        client_encrypt,
        client_decrypt,
        client_decode,
        client_serialize_ct,
        client_deserialize_ct,
        server_new,
        server_free,
        server_capabilities,
        server_rotation_steps,
        server_modulus,
        ct_free,
        ct_clone,
        ct_info,
        pt_free,
        pt_clone,
        pt_info,
        encode,
        add,
        sub,
        mul,
        add_plain,
        sub_plain,
        mul_plain,
        negate,
        square,
        rescale,
        bootstrap,
        add_scalar,
        mul_scalar,
        mul_integer,
        drop_to_level,
        rotate,
        eval_poly,
        serialize_ct,
        deserialize_ct,
        client_save_secret,
        client_load,
        rotate_many,
        client_write_evaluation_keys,
        server_from_file,
        client_local_server
    );
    let dir = common::scratch("header");
    let mut src =
        String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"peregrine_plugin.h\"\nint main(void){\n");
    src.push_str(
        "printf(\"size %zu\\n\", sizeof(PeregrineVTable));\nprintf(\"version %u\\n\", PEREGRINE_ABI_VERSION);\n",
    );
    for (f, _) in &fields {
        src.push_str(&format!("printf(\"{f} %zu\\n\", offsetof(PeregrineVTable, {f}));\n"));
    }
    src.push_str("return 0;}\n");
    let c = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&c, src).unwrap();
    common::cc(&c, &exe, &[]);
    let out = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
    let got: std::collections::HashMap<&str, usize> =
        out.lines().map(|l| l.split_once(' ').unwrap()).map(|(k, v)| (k, v.parse().unwrap())).collect();
    assert_eq!(got["size"], std::mem::size_of::<PluginVTable>(), "sizeof(PeregrineVTable)");
    assert_eq!(got["version"], ABI_VERSION as usize);
    for (f, off) in fields {
        assert_eq!(got[f], off, "offset of field {f}");
    }
    std::fs::remove_dir_all(dir).ok();
}
