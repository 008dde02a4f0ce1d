//! BOLT on top of PGO: the PGO build of `dome` (linked with its
//! relocations) is instrumented by `llvm-bolt`, runs the same training
//! workload, and is laid out again from that profile: hot paths of
//! functions placed together, cold blocks split off into their own
//! section. PGO decides what is inlined and how branches lean; BOLT
//! decides where the resulting code sits, which is what a long path run on
//! cold instruction caches pays for.
//!
//! Optional: without `llvm-bolt` (Debian's `bolt-NN`, installed when
//! running as root) or if any step fails, the PGO build is used as it is.

use std::{
    hash::Hasher as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    apt_install, is_root, output,
    pgo::{DIR, Fnv1a, files_with_extension, run_training},
    run_status,
};

/// `pgo` laid out by BOLT, or `None` (with a warning) when BOLT is not to be had.
pub(crate) fn optimise(root: &Path, pgo: &Path) -> Option<PathBuf> {
    match try_optimise(root, pgo) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("xtask: warning: BOLT failed ({e:#}); using the PGO build as it is");
            None
        }
    }
}

fn try_optimise(root: &Path, pgo: &Path) -> Result<Option<PathBuf>> {
    let Some(bin_dir) = llvm_bolt()? else {
        eprintln!("xtask: warning: no llvm-bolt; using the PGO build without BOLT");
        return Ok(None);
    };
    let dir = root.join(DIR).join("bolt");
    std::fs::create_dir_all(&dir)?;
    // A BOLT profile describes one binary: named by that binary's hash.
    let mut h = Fnv1a::default();
    h.write(&std::fs::read(pgo).with_context(|| format!("reading {}", pgo.display()))?);
    let key = h.finish();
    let profile = dir.join(format!("dome-{key:016x}.fdata"));
    let out = dir.join("dome");
    let stamp = dir.join("dome.from");
    if profile.is_file()
        && out.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == profile.display().to_string())
    {
        return Ok(Some(out));
    }
    if !profile.is_file() {
        eprintln!("xtask: training dome for BOLT (an instrumented copy of the PGO build)");
        let raw = dir.join("raw");
        let _ = std::fs::remove_dir_all(&raw);
        std::fs::create_dir_all(&raw)?;
        let instrumented = dir.join("dome.instrumented");
        run_status(
            Command::new(bin_dir.join("llvm-bolt"))
                .arg(pgo)
                .arg("-instrument")
                .arg("-o")
                .arg(&instrumented)
                .arg(format!(
                    "--instrumentation-file={}",
                    raw.join("dome").display()
                ))
                .arg("--instrumentation-file-append-pid")
                .stdout(std::process::Stdio::null()),
        )?;
        run_training(root, &instrumented, &raw)?;
        let files = files_with_extension(&raw, "fdata")?;
        let merged = Command::new(bin_dir.join("merge-fdata"))
            .args(&files)
            .output()
            .context("running merge-fdata")?;
        if !merged.status.success() {
            bail!(
                "merge-fdata failed: {}",
                String::from_utf8_lossy(&merged.stderr).trim()
            );
        }
        for old in files_with_extension(&dir, "fdata")? {
            std::fs::remove_file(&old)?;
        }
        std::fs::write(&profile, merged.stdout)?;
        let _ = std::fs::remove_file(&instrumented);
    }
    // Until the new layout passes its check, no stamp vouches for `out`.
    let _ = std::fs::remove_file(&stamp);
    eprintln!(
        "xtask: laying dome out with BOLT from {}",
        profile.display()
    );
    run_status(
        Command::new(bin_dir.join("llvm-bolt"))
            .arg(pgo)
            .arg("-o")
            .arg(&out)
            .arg(format!("-data={}", profile.display()))
            .args([
                "-reorder-blocks=ext-tsp",
                "-reorder-functions=cdsort",
                "-split-functions",
                "-split-all-cold",
                "-split-eh",
                "-icf=1",
                "-use-gnu-stack",
            ])
            .stdout(std::process::Stdio::null()),
    )?;
    // A layout tool rewrites machine code: the result answers the whole
    // training workload before it is used.
    run_status(
        Command::new(root.join("target/release/bench-e2e"))
            .arg("check")
            .arg(&out),
    )?;
    std::fs::write(&stamp, profile.display().to_string())?;
    Ok(Some(out))
}

/// The directory of the newest `llvm-bolt` (called there, so it finds its
/// instrumentation runtime in `../lib`), installed from Debian's `bolt-NN`
/// when missing and allowed.
fn llvm_bolt() -> Result<Option<PathBuf>> {
    if let Some(dir) = newest_bolt() {
        return Ok(Some(dir));
    }
    if !is_root() || super::which("apt-cache").is_none() {
        return Ok(None);
    }
    let found = output(Command::new("apt-cache").args(["search", "--names-only", "^bolt-[0-9]+$"]))
        .unwrap_or_default();
    let Some(pkg) = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| Some((p.strip_prefix("bolt-")?.parse::<u32>().ok()?, p)))
        .max()
        .map(|(_, p)| p.to_owned())
    else {
        return Ok(None);
    };
    eprintln!("xtask: installing {pkg} (llvm-bolt, to lay out the PGO build)");
    if let Err(e) = apt_install(&[&pkg]) {
        eprintln!("xtask: warning: installing {pkg} failed: {e:#}");
    }
    Ok(newest_bolt())
}

fn newest_bolt() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: u32 = name.strip_prefix("llvm-")?.parse().ok()?;
            let bin = e.path().join("bin");
            let complete = ["llvm-bolt", "merge-fdata"]
                .iter()
                .all(|t| bin.join(t).is_file())
                && e.path().join("lib/libbolt_rt_instr.a").is_file();
            complete.then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}
