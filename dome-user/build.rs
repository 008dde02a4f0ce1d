//! Builds the XDP program (`dome-ebpf`) for `bpfel-unknown-none` with the
//! nightly toolchain and bpf-linker (`cargo xtask setup` installs both into
//! the workspace's `.tools`, which this script puts on PATH, so a plain
//! `cargo build` works once setup has run).
use std::{env, path::Path};

fn main() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("dome-user lives inside the workspace");
    let tools = workspace.join(".tools/bpf-linker/bin");
    println!("cargo:rerun-if-changed={}", tools.display());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools.clone()];
    dirs.extend(env::split_paths(&path));
    let found = dirs.iter().any(|d| d.join("bpf-linker").is_file());
    if !found && env::var_os("AYA_BUILD_SKIP").is_none() {
        anyhow::bail!(
            "bpf-linker not found: run `cargo xtask setup` (or `cargo xtask build`) first"
        );
    }
    // SAFETY: build scripts are single-threaded; aya-build's child cargo inherits PATH.
    unsafe { env::set_var("PATH", env::join_paths(dirs)?) };

    // `AYA_BUILD_SKIP=1` (aya-build skips the eBPF build): an empty object
    // stands in, so the crate still compiles. `cargo xtask test` runs clippy
    // so: clippy's build script is a build of its own (not shared with the
    // test build's), and the XDP program would cost it a minute for nothing
    // it lints. A `dome` built so fails to load XDP.
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
        std::fs::write(Path::new(&out).join("dome-ebpf"), [])?;
    }
    let root = workspace.join("dome-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dome-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
