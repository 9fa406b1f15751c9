//! Compiles the in-kernel recorder (src/sandbox/recorder/profile.bpf.c)
//! with clang into a BPF object and generates its Rust skeleton
//! (libbpf-cargo). Needs clang; see README's set-up line.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/sandbox/recorder/profile.bpf.c";

fn main() {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("profile.skel.rs");
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-Wall", "-Wno-unused-function"])
        .build_and_generate(&out)
    {
        panic!(
            "cannot build the in-kernel recorder {SRC}: {e:#}\n\
             (it needs clang: apt-get install clang libelf-dev zlib1g-dev pkg-config make)"
        );
    }
    println!("cargo:rerun-if-changed={SRC}");
}
