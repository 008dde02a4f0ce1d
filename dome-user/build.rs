//! Builds the XDP program (`dome-ebpf`) for `bpfel-unknown-none` with the
//! nightly toolchain and bpf-linker (`cargo xtask setup` installs both).
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("dome-user lives inside the workspace")
        .join("dome-ebpf");
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
