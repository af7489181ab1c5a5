//! Output files and run directories that are never silently destroyed, mixed or half written.
//!
//! Every file timeprest writes goes through this module, which is why it sits in the train crate
//! (train, report, mpi and the CLI all depend on it):
//!
//! - [`write_file_atomically`] writes a temporary file beside the target, syncs it and renames
//!   it over the target, so a reader (or a crash) sees the old file or the new one, never half
//!   of one. It replaces only a regular file: a directory, a device node such as `/dev/null`, a
//!   FIFO or a socket is refused with [`OutputError::NotRegularFile`] (as root, a rename would
//!   otherwise replace `/dev/null` by a regular file). A symbolic link is *followed*: its
//!   target is written atomically and the link stays, as `>` in a shell does.
//! - [`check_output_file`] runs the same checks before any work, so a bad `--save-weights` or
//!   `--trace` fails in a second, not after hours of training.
//! - [`claim_run_dir`] gives a run its directory: a new run refuses a directory that is not
//!   empty (naming what is there) unless told to overwrite it, and every run holds an exclusive
//!   lock, [`RunDirLock`], for its whole life, so two processes never write one directory.
//!
//! The lock is a file `DIR/.lock` holding the holder's PID and command line, kept open with an
//! exclusive `flock` (std's [`File::try_lock`]). The kernel drops the `flock` when the holder
//! dies, and the PID is checked against `/proc` too (this is Linux software), so a lock left by
//! a crashed run is recognised as stale and taken over, with a line on stderr; a lock file
//! naming a live process is respected even where `flock` is not shared (another machine on a
//! network file system). Either way the error names the PID and command of the holder.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Name of the lock file inside a run or comparison directory.
pub const LOCK_FILE: &str = ".lock";

/// Entries a run or comparison directory made by timeprest holds; `--overwrite` replaces only a
/// directory that has one of them, never an arbitrary folder given by mistake.
const RUN_MARKERS: [&str; 5] = [
    "config.json",
    "command.txt",
    "metrics.jsonl",
    "checkpoint",
    "comparison.json",
];

/// How many entries of a non-empty directory an error lists.
const LISTED_ENTRIES: usize = 5;

/// What a path is, when it is not a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A character device (`/dev/null`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
    /// A symbolic link (only where links are not followed).
    Symlink,
    /// Anything else.
    Other,
}

impl FileKind {
    /// The kind of a file with metadata `metadata` (from `symlink_metadata`).
    pub fn of(metadata: &fs::Metadata) -> Self {
        let kind = metadata.file_type();
        if kind.is_file() {
            FileKind::Regular
        } else if kind.is_dir() {
            FileKind::Directory
        } else if kind.is_symlink() {
            FileKind::Symlink
        } else if kind.is_char_device() {
            FileKind::CharDevice
        } else if kind.is_block_device() {
            FileKind::BlockDevice
        } else if kind.is_fifo() {
            FileKind::Fifo
        } else if kind.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::Socket => "a socket",
            FileKind::Symlink => "a symbolic link",
            FileKind::Other => "not a regular file",
        })
    }
}

/// Why an output file or run directory cannot be used. Each variant names the path (and, where
/// one is known, the flag that gave it), because the CLI prints it as its one error line.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path names something that is not a regular file.
    #[error(
        "{}: it is {kind}, and timeprest replaces only regular files (a symbolic link is \
         followed to its target)",
        subject(.flag, .path)
    )]
    NotRegularFile {
        /// The flag that named the path, if any.
        flag: Option<String>,
        /// The path (after following symbolic links).
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// The path cannot be written: a missing or read-only directory, a read-only file, a full
    /// disk.
    #[error("{}: {cause}", subject(.flag, .path))]
    Unwritable {
        /// The flag that named the path, if any.
        flag: Option<String>,
        /// The file or directory that could not be written.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A run or comparison directory should be a directory but is something else.
    #[error("{flag} {}: it is {kind}, not a directory", .dir.display())]
    NotADirectory {
        /// The flag that named it.
        flag: String,
        /// The path.
        dir: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// A new run's directory already holds files.
    #[error(
        "{flag} {}: the directory is not empty (it holds {}); choose another directory, or give \
         --overwrite to replace it",
        .dir.display(), listing(.entries, *.more)
    )]
    DirectoryNotEmpty {
        /// The flag that named it.
        flag: String,
        /// The directory.
        dir: PathBuf,
        /// The first few entries, sorted; directories end in `/`.
        entries: Vec<String>,
        /// How many more entries there are.
        more: usize,
    },
    /// `--overwrite` was given for a directory that timeprest did not make.
    #[error(
        "{flag} {}: --overwrite replaces only a timeprest run or comparison directory, and this \
         one holds none of {} (it holds {}); remove it yourself if you mean to",
        .dir.display(), RUN_MARKERS.join(", "), listing(.entries, *.more)
    )]
    NotARunDirectory {
        /// The flag that named it.
        flag: String,
        /// The directory.
        dir: PathBuf,
        /// The first few entries, sorted.
        entries: Vec<String>,
        /// How many more entries there are.
        more: usize,
    },
    /// Another live process holds the directory's lock.
    #[error(
        "{} is in use by process {pid} (`{command}`); wait for it to end or stop it (if that \
         process is not a timeprest run, remove {})",
        .dir.display(), .dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The locked directory.
        dir: PathBuf,
        /// The holder's process id (0 when it could not be read).
        pid: u32,
        /// The holder's command line, as it recorded it.
        command: String,
    },
}

/// `--flag PATH` when a flag named the path, else `cannot write PATH`.
fn subject(flag: &Option<String>, path: &Path) -> String {
    match flag {
        Some(flag) => format!("{flag} {}", path.display()),
        None => format!("cannot write {}", path.display()),
    }
}

/// `a, b, c` or `a, b, c and 4 more`.
fn listing(entries: &[String], more: usize) -> String {
    let listed = entries.join(", ");
    if more == 0 {
        listed
    } else {
        format!("{listed} and {more} more")
    }
}

impl OutputError {
    fn unwritable(flag: Option<&str>, path: &Path, cause: impl fmt::Display) -> Self {
        OutputError::Unwritable {
            flag: flag.map(str::to_owned),
            path: path.to_owned(),
            cause: cause.to_string(),
        }
    }
}

/// The directory a file `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `path` with every symbolic link of its last component followed (the target need not exist:
/// writing through a dangling link creates its target, as a shell's `>` does).
fn follow_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let target = fs::read_link(&current)?;
                current = parent_dir(&current).join(target);
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Whether `error` says a path does not exist (also when a file stands where a directory on the
/// way to it should be).
fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Checks that `target` (links already followed) is a regular file that may be replaced, or
/// does not exist yet.
fn check_replaceable(target: &Path, flag: Option<&str>) -> Result<(), OutputError> {
    match fs::symlink_metadata(target) {
        Ok(metadata) if metadata.is_file() => {
            // Opening for writing (without truncating) is the one test that covers permissions,
            // read-only file systems and root alike.
            OpenOptions::new()
                .write(true)
                .open(target)
                .map(drop)
                .map_err(|e| OutputError::unwritable(flag, target, e))
        }
        Ok(metadata) => Err(OutputError::NotRegularFile {
            flag: flag.map(str::to_owned),
            path: target.to_owned(),
            kind: FileKind::of(&metadata),
        }),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(OutputError::unwritable(flag, target, e)),
    }
}

/// A name for a new temporary file beside `target`: hidden, unique to this process and call,
/// and ending in the target's own name (so its extension, which plotters reads, is kept).
fn temporary_beside(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    parent_dir(target).join(format!(".tmp-{}-{count}.{name}", std::process::id()))
}

/// Flushes the entries of directory `dir` to disk; best effort (not every file system lets a
/// directory be opened for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside the target, synced, renamed over
/// it. Missing parent directories are created. A symbolic link is followed and its target
/// written (the link stays); anything that is not a regular file is refused with
/// [`OutputError::NotRegularFile`], and a read-only file with [`OutputError::Unwritable`]. A
/// replaced file keeps its permissions.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_file_atomically_with(path, |temporary| {
        fs::write(temporary, bytes).map_err(|e| OutputError::unwritable(None, path, e))
    })
}

/// [`write_file_atomically`] for writers that want a path rather than bytes (a plotting
/// backend): `write` creates the file at the temporary path it is given, which ends in the
/// target's name. If `write` fails the temporary file is removed and its error returned.
pub fn write_file_atomically_with<E: From<OutputError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let fail = |e: io::Error| OutputError::unwritable(None, path, e);
    let target = follow_symlinks(path).map_err(fail)?;
    check_replaceable(&target, None)?;
    let dir = parent_dir(&target);
    fs::create_dir_all(dir).map_err(|e| OutputError::unwritable(None, dir, e))?;
    let temporary = temporary_beside(&target);
    let result = write(&temporary).and_then(|()| {
        finish_replacing(&temporary, &target).map_err(|e| E::from(fail(e)))?;
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Syncs the written `temporary` file, gives it the permissions of the file it replaces, and
/// renames it over `target`.
fn finish_replacing(temporary: &Path, target: &Path) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(temporary)?;
    if let Ok(old) = fs::metadata(target) {
        file.set_permissions(old.permissions())?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(temporary, target)?;
    sync_dir(parent_dir(target));
    Ok(())
}

/// Opens `path` for appending (creating it if missing) and reading; refuses anything that is not
/// a regular file, following symbolic links as [`write_file_atomically`] does. For logs written
/// line by line, such as `metrics.jsonl`.
pub fn open_for_append(path: &Path) -> Result<File, OutputError> {
    let target = follow_symlinks(path).map_err(|e| OutputError::unwritable(None, path, e))?;
    check_replaceable(&target, None)?;
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&target)
        .map_err(|e| OutputError::unwritable(None, &target, e))
}

/// Checks, before any work, that `path` (given by `flag`) can later be written by
/// [`write_file_atomically`]: it is a regular file that may be replaced, or does not exist; its
/// directory exists or can be created, and is writable. Nothing is created; a probe file is
/// created and removed in the nearest existing directory.
pub fn check_output_file(path: &Path, flag: &str) -> Result<(), OutputError> {
    let flagged = |at: &Path, cause: &dyn fmt::Display| OutputError::Unwritable {
        flag: Some(flag.to_owned()),
        path: path.to_owned(),
        cause: if at == path {
            cause.to_string()
        } else {
            format!("{}: {cause}", at.display())
        },
    };
    if path.as_os_str().is_empty() {
        return Err(flagged(path, &"the path is empty"));
    }
    let target = follow_symlinks(path).map_err(|e| flagged(path, &e))?;
    check_replaceable(&target, Some(flag))?;
    // The nearest directory that exists must be a writable directory: the file, or the
    // directories leading to it, are created there.
    let mut dir = parent_dir(&target).to_path_buf();
    loop {
        match fs::metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(metadata) => {
                let kind = FileKind::of(&metadata);
                return Err(flagged(&dir, &format!("it is {kind}, not a directory")));
            }
            Err(e) if is_missing(&e) => {
                let parent = parent_dir(&dir).to_path_buf();
                if parent == dir {
                    return Err(flagged(&dir, &e));
                }
                dir = parent;
            }
            Err(e) => return Err(flagged(&dir, &e)),
        }
    }
    let probe = temporary_beside(&dir.join("probe"));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(drop)
        .map_err(|e| flagged(&dir, &format!("cannot create files there ({e})")))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// This process's command line, with the arguments that need it single-quoted for a POSIX
/// shell: what a run stores as `command.txt`, a comparison in its report, and a lock as its
/// holder.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().map(|arg| shell_quoted(&arg)).collect();
    args.join(" ")
}

/// `arg` as a POSIX shell reads it back: unchanged when it is plain, else single-quoted.
pub fn shell_quoted(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%+,-./:=@_".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The process a lock file names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    pid: u32,
    command: String,
}

impl Holder {
    fn this_process() -> Self {
        Holder {
            pid: std::process::id(),
            command: command_line(),
        }
    }

    /// The lock file's text: the PID on the first line, the command line on the second.
    fn to_text(&self) -> String {
        format!("{}\n{}\n", self.pid, self.command)
    }

    fn parse(text: &str) -> Option<Self> {
        let (pid, command) = text.split_once('\n').unwrap_or((text, ""));
        Some(Holder {
            pid: pid.trim().parse().ok()?,
            command: command.trim_end().to_owned(),
        })
    }

    /// Whether the holder still runs. A PID of this very process is not a holder (a lock of a
    /// dead process whose PID came back to us); where `/proc` is missing nothing can be told, and
    /// the lock is respected.
    fn is_alive(&self) -> bool {
        if self.pid == std::process::id() {
            return false;
        }
        if !Path::new("/proc/self").exists() {
            return true;
        }
        // A zombie (ended, not yet reaped by its parent) still has its /proc entry.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => !matches!(
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => false,
        }
    }

    fn locked(self, dir: &Path) -> OutputError {
        OutputError::Locked {
            dir: dir.to_owned(),
            pid: self.pid,
            command: self.command,
        }
    }
}

/// Whether `file` is (still) the file at `path`: a lock file may be removed by its ending holder
/// between our opening and locking it.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// The live holder named by the lock file of `dir`, if any (without locking anything).
fn live_holder(dir: &Path) -> Option<Holder> {
    let text = fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    Holder::parse(&text).filter(Holder::is_alive)
}

/// The exclusive lock of a run or comparison directory, held from [`claim_run_dir`] until it is
/// dropped: then the lock file is removed (also when the run fails), and the `flock` goes with
/// the file descriptor (also when the process dies).
#[derive(Debug)]
pub struct RunDirLock {
    path: PathBuf,
    file: File,
}

impl RunDirLock {
    /// Takes the lock of the existing directory `dir`; a lock of a process that no longer runs
    /// is taken over, saying so on stderr.
    fn acquire(dir: &Path) -> Result<Self, OutputError> {
        let path = dir.join(LOCK_FILE);
        let fail = |e: &dyn fmt::Display| OutputError::unwritable(None, &path, e);
        // A retry only happens when the lock file was removed between opening and locking it.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| fail(&e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Err(holder_of(&mut file).locked(dir)),
                Err(fs::TryLockError::Error(e)) => return Err(fail(&e)),
            }
            if !same_file(&file, &path) {
                continue;
            }
            let mut previous = String::new();
            let _ = file.read_to_string(&mut previous);
            if let Some(holder) = Holder::parse(&previous) {
                if holder.is_alive() {
                    return Err(holder.locked(dir));
                }
                eprintln!(
                    "warning: taking over the lock of {}: process {} (`{}`) that held it no \
                     longer runs",
                    dir.display(),
                    holder.pid,
                    holder.command
                );
            }
            file.set_len(0)
                .and_then(|()| file.write_all_at(Holder::this_process().to_text().as_bytes(), 0))
                .and_then(|()| file.sync_all())
                .map_err(|e| fail(&e))?;
            return Ok(RunDirLock { path, file });
        }
        Err(fail(&"the lock file keeps disappearing"))
    }

    /// The lock file now lives in `dir` (its directory was renamed to `dir`).
    fn moved_to(&mut self, dir: &Path) {
        self.path = dir.join(LOCK_FILE);
    }
}

/// The holder recorded in a lock file another process has locked; it may still be writing it,
/// so an empty file is read again for a moment.
fn holder_of(file: &mut File) -> Holder {
    use std::io::Seek as _;
    for _ in 0..100 {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        if let (Ok(_), Some(holder)) = (read, Holder::parse(&text)) {
            return holder;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Holder {
        pid: 0,
        command: "unknown: its lock file is empty".into(),
    }
}

impl Drop for RunDirLock {
    fn drop(&mut self) {
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// How a run uses its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirUse {
    /// A new run: the directory must be empty or missing (it is created), unless `overwrite`,
    /// which replaces a previous run's directory.
    New {
        /// Replace a non-empty run or comparison directory.
        overwrite: bool,
    },
    /// A resumed run: the directory exists and is kept.
    Resume,
}

/// Gives a run the directory `dir` (named by `flag`, for errors) and locks it for the run's
/// life.
///
/// Refused: a directory whose lock a live process holds ([`OutputError::Locked`], also with
/// `overwrite`); for a new run, a directory that holds anything besides a stale lock
/// ([`OutputError::DirectoryNotEmpty`]), unless `overwrite`. With `overwrite` the old
/// directory, if it is a timeprest run or comparison, is replaced: a locked, empty new
/// directory is made beside it as `.NAME.new-PID`, the old one is renamed to `.NAME.old-PID`,
/// the new one into place, and the old one is removed, so a crash leaves the old run (possibly
/// under its hidden name) or the new, empty one; never a mix.
pub fn claim_run_dir(dir: &Path, flag: &str, usage: DirUse) -> Result<RunDirLock, OutputError> {
    let unwritable = |e: &dyn fmt::Display| OutputError::unwritable(Some(flag), dir, e);
    match (fs::metadata(dir), usage) {
        (Ok(metadata), _) if !metadata.is_dir() => {
            return Err(OutputError::NotADirectory {
                flag: flag.to_owned(),
                dir: dir.to_owned(),
                kind: FileKind::of(&metadata),
            });
        }
        (Ok(_), _) => {
            if let Some(holder) = live_holder(dir) {
                return Err(holder.locked(dir));
            }
        }
        (Err(e), DirUse::New { .. }) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| unwritable(&e))?;
        }
        (Err(e), _) => return Err(unwritable(&e)),
    }
    let DirUse::New { overwrite } = usage else {
        return RunDirLock::acquire(dir);
    };
    let entries = entries_besides_lock(dir).map_err(|e| unwritable(&e))?;
    if entries.is_empty() {
        let lock = RunDirLock::acquire(dir)?;
        // Another run may have filled the directory between the look and the lock.
        let entries = entries_besides_lock(dir).map_err(|e| unwritable(&e))?;
        if entries.is_empty() {
            return Ok(lock);
        }
        drop(lock);
        return Err(not_empty(flag, dir, &entries));
    }
    if !overwrite {
        return Err(not_empty(flag, dir, &entries));
    }
    let made_by_timeprest = entries
        .iter()
        .any(|entry| RUN_MARKERS.contains(&entry.trim_end_matches('/')));
    if !made_by_timeprest {
        let (entries, more) = first_entries(&entries);
        return Err(OutputError::NotARunDirectory {
            flag: flag.to_owned(),
            dir: dir.to_owned(),
            entries,
            more,
        });
    }
    replace_run_dir(dir, flag)
}

/// The entries of `dir` other than its lock file, sorted, directories ending in `/`.
fn entries_besides_lock(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == LOCK_FILE {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        names.push(if is_dir { format!("{name}/") } else { name });
    }
    names.sort();
    Ok(names)
}

/// The first entries an error lists, and how many it leaves out.
fn first_entries(entries: &[String]) -> (Vec<String>, usize) {
    let shown = entries.len().min(LISTED_ENTRIES);
    (entries[..shown].to_vec(), entries.len() - shown)
}

fn not_empty(flag: &str, dir: &Path, entries: &[String]) -> OutputError {
    let (entries, more) = first_entries(entries);
    OutputError::DirectoryNotEmpty {
        flag: flag.to_owned(),
        dir: dir.to_owned(),
        entries,
        more,
    }
}

/// Replaces the run directory `dir` by an empty, locked one (see [`claim_run_dir`]).
fn replace_run_dir(dir: &Path, flag: &str) -> Result<RunDirLock, OutputError> {
    let unwritable = |at: &Path, e: &dyn fmt::Display| OutputError::unwritable(Some(flag), at, e);
    let real = fs::canonicalize(dir).map_err(|e| unwritable(dir, &e))?;
    if std::env::current_dir().is_ok_and(|cwd| cwd.starts_with(&real)) {
        return Err(unwritable(
            dir,
            &"it is or holds the current directory, which --overwrite does not remove",
        ));
    }
    let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
        return Err(unwritable(dir, &"the root directory cannot be replaced"));
    };
    let name = name.to_string_lossy();
    let pid = std::process::id();
    // Fails, before anything moves, when a live process holds the old directory.
    let old_lock = RunDirLock::acquire(&real)?;
    let staged = parent.join(format!(".{name}.new-{pid}"));
    let retired = parent.join(format!(".{name}.old-{pid}"));
    fs::create_dir(&staged).map_err(|e| unwritable(&staged, &e))?;
    let mut lock = match RunDirLock::acquire(&staged) {
        Ok(lock) => lock,
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&real, &retired) {
        drop(lock);
        let _ = fs::remove_dir_all(&staged);
        return Err(unwritable(dir, &e));
    }
    if let Err(e) = fs::rename(&staged, &real) {
        drop(lock);
        let _ = fs::remove_dir_all(&staged);
        let restored = fs::rename(&retired, &real).is_ok();
        let kept = if restored { &real } else { &retired };
        let cause = format!("{e} (the old run is kept in {})", kept.display());
        return Err(unwritable(dir, &cause));
    }
    lock.moved_to(&real);
    sync_dir(parent);
    if let Err(e) = fs::remove_dir_all(&retired) {
        eprintln!(
            "warning: the replaced run was moved to {} but could not be removed: {e}",
            retired.display()
        );
    }
    // Its lock file went with the old directory; the lock at its old path is the new one.
    drop(old_lock);
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command};

    use super::*;

    /// A FIFO at `path` (std has no mkfifo).
    fn make_fifo(path: &Path) {
        let made = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(made.success());
    }

    /// A process that runs until killed.
    fn live_process() -> Child {
        Command::new("sleep").arg("60").spawn().unwrap()
    }

    fn stop(mut child: Child) {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    #[test]
    fn a_regular_file_is_replaced_whole_and_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, "old and longer").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_file_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        let nested = dir.path().join("new/deeper/b.txt");
        write_file_atomically(&nested, b"b").unwrap();
        assert_eq!(fs::read(&nested).unwrap(), b"b");
    }

    #[test]
    fn directories_devices_and_fifos_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        make_fifo(&fifo);
        let cases = [
            (dir.path().to_path_buf(), FileKind::Directory),
            (fifo.clone(), FileKind::Fifo),
            (PathBuf::from("/dev/null"), FileKind::CharDevice),
        ];
        for (path, expected) in cases {
            let error = write_file_atomically(&path, b"x").unwrap_err();
            match &error {
                OutputError::NotRegularFile {
                    path: named, kind, ..
                } => {
                    assert_eq!((named, *kind), (&path, expected));
                }
                other => panic!("{path:?}: {other}"),
            }
            assert!(error.to_string().contains(&expected.to_string()), "{error}");
            assert_eq!(
                check_output_file(&path, "--flag").unwrap_err().to_string(),
                format!(
                    "--flag {}: it is {expected}, and timeprest replaces only regular files (a \
                     symbolic link is followed to its target)",
                    path.display()
                )
            );
        }
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        let null = fs::symlink_metadata("/dev/null").unwrap().file_type();
        assert!(null.is_char_device(), "/dev/null is still a device");
        assert!(open_for_append(&fifo).is_err());
    }

    #[test]
    fn a_symbolic_link_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        let link = dir.path().join("link.bin");
        symlink("target.bin", &link).unwrap();
        check_output_file(&link, "--save-weights").unwrap();
        write_file_atomically(&link, b"through").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"through");
        let to_device = dir.path().join("null");
        symlink("/dev/null", &to_device).unwrap();
        assert!(matches!(
            write_file_atomically(&to_device, b"x"),
            Err(OutputError::NotRegularFile {
                kind: FileKind::CharDevice,
                ..
            })
        ));
    }

    #[test]
    fn an_output_under_a_file_or_with_an_empty_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let error = check_output_file(&file.join("sub/trace.json"), "--trace").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("--trace ") && text.contains("not a directory"),
            "{text}"
        );
        assert!(check_output_file(Path::new(""), "--trace").is_err());
        check_output_file(&dir.path().join("missing/dirs/ok.json"), "--trace").unwrap();
        assert!(
            !dir.path().join("missing").exists(),
            "a check creates nothing"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no probe is left"
        );
    }

    #[test]
    fn a_new_run_gets_an_empty_or_missing_directory_and_locks_it() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        let lock = claim_run_dir(&dir, "--out", DirUse::New { overwrite: false }).unwrap();
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(
            Holder::parse(&text).unwrap().pid,
            std::process::id(),
            "{text}"
        );
        let second = claim_run_dir(&dir, "--out", DirUse::Resume).unwrap_err();
        assert!(
            matches!(&second, OutputError::Locked { pid, .. } if *pid == std::process::id()),
            "{second}"
        );
        drop(lock);
        assert!(!dir.join(LOCK_FILE).exists(), "the lock is released");
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let refused = claim_run_dir(&dir, "--out", DirUse::New { overwrite: false }).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "--out {}: the directory is not empty (it holds notes.txt); choose another \
                 directory, or give --overwrite to replace it",
                dir.display()
            )
        );
        let foreign = claim_run_dir(&dir, "--out", DirUse::New { overwrite: true }).unwrap_err();
        assert!(
            matches!(foreign, OutputError::NotARunDirectory { .. }),
            "{foreign}"
        );
        assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
        let file = parent.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            claim_run_dir(&file, "--out", DirUse::New { overwrite: false }),
            Err(OutputError::NotADirectory { .. })
        ));
    }

    #[test]
    fn overwrite_replaces_a_run_and_leaves_nothing_beside_it() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        fs::create_dir_all(dir.join("checkpoint")).unwrap();
        fs::write(dir.join("config.json"), "{}").unwrap();
        let lock = claim_run_dir(&dir, "--out", DirUse::New { overwrite: true }).unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LOCK_FILE], "only the new lock");
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1);
        drop(lock);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_live_holder_is_respected_even_with_overwrite_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        let child = live_process();
        let holder = Holder {
            pid: child.id(),
            command: "sleep 60".into(),
        };
        fs::write(dir.path().join(LOCK_FILE), holder.to_text()).unwrap();
        for usage in [DirUse::Resume, DirUse::New { overwrite: true }] {
            let error = claim_run_dir(dir.path(), "--out", usage).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains(&format!("process {} (`sleep 60`)", child.id())),
                "{text}"
            );
        }
        assert!(dir.path().join("config.json").is_file());
        stop(child);
        let stale = Holder {
            pid: dead_pid(),
            command: "timeprest train".into(),
        };
        fs::write(dir.path().join(LOCK_FILE), stale.to_text()).unwrap();
        let lock = claim_run_dir(dir.path(), "--resume", DirUse::Resume).unwrap();
        let text = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(Holder::parse(&text).unwrap().pid, std::process::id());
        drop(lock);
    }

    #[test]
    fn lock_files_parse_and_zombies_are_dead() {
        let holder = Holder {
            pid: 42,
            command: "timeprest train --out 'a b'".into(),
        };
        assert_eq!(Holder::parse(&holder.to_text()), Some(holder));
        assert_eq!(Holder::parse(""), None);
        assert_eq!(Holder::parse("x\n"), None);
        let mut child = Command::new("true").spawn().unwrap();
        let zombie = Holder {
            pid: child.id(),
            command: String::new(),
        };
        // Not reaped yet: a zombie once it has exited.
        let mut waited = 0;
        while zombie.is_alive() && waited < 500 {
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        assert!(!zombie.is_alive());
        child.wait().unwrap();
    }
}
