//! Reading and writing the user's files (native only), with the one wording of every file error:
//! "<path>: cannot read: <reason>" and so on.
//!
//! Every file a user names or a bundle lists is opened once, through [`open_regular`]: it must be a
//! regular file (a FIFO, a device, a socket or a folder is refused by name before anything is read, and
//! again from the opened handle, so that nothing swapped in between is read), and a bundle's files must not
//! be symbolic links. What is then read is bounded by the size the opened file had (or a smaller limit):
//! a file that grows while it is read is refused, never read without end.
//!
//! Outputs are written to a fresh temporary file beside the target, created exclusively under an
//! unpredictable name, and renamed over the target, so that a failed run never leaves a half-written file
//! and nothing planted beside the target is written through.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Whether a file's name may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Followed: a file the user names (a Hugging Face cache links every file of a model folder to its blob).
    Follow,
    /// Refused: a bundle's files, which must be regular files inside the bundle folder. A link is refused
    /// by name whatever its target, so that no file outside the folder is read (nor its size or digest
    /// shown in a message).
    RefuseInBundle,
}

const BUNDLE_LINK: &str = "is a symbolic link (bundle files must be regular files inside the bundle folder)";

/// Whether opening failed because `O_NOFOLLOW` met a symbolic link.
fn is_link_error(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::ELOOP);
    #[cfg(not(unix))]
    return { let _ = e; false };
}

/// The message for a file that is not a regular file, or `None` for a regular one.
fn not_regular(file_type: std::fs::FileType, links: Links) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_symlink() {
        return Some(match links {
            Links::RefuseInBundle => BUNDLE_LINK,
            Links::Follow => "is a symbolic link",
        });
    }
    if file_type.is_dir() {
        return Some("is a folder, not a file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("is not a regular file (a FIFO)");
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return Some("is not a regular file (a device)");
        }
        if file_type.is_socket() {
            return Some("is not a regular file (a socket)");
        }
    }
    Some("is not a regular file")
}

/// Opens the regular file at `path` for reading; returns it and its size (from the opened handle).
///
/// The kind is checked from the name first (so that a device or FIFO is never even opened in the usual
/// case), then the file is opened (on unix with `O_NONBLOCK`, so that a FIFO swapped in meanwhile cannot
/// block the open, `O_NOCTTY`, and with [`Links::RefuseInBundle`] `O_NOFOLLOW`) and checked again from the
/// handle: what is returned is the regular file that was checked.
pub fn open_regular(path: &Path, links: Links) -> Result<(File, u64)> {
    let fail = |e: std::io::Error| Error::file(name(path), format!("cannot read: {e}"));
    let meta = match links {
        Links::Follow => std::fs::metadata(path),
        Links::RefuseInBundle => std::fs::symlink_metadata(path),
    }
    .map_err(fail)?;
    if let Some(message) = not_regular(meta.file_type(), links) {
        return Err(Error::file(name(path), message));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        if links == Links::RefuseInBundle {
            flags |= libc::O_NOFOLLOW;
        }
        options.custom_flags(flags);
    }
    let file = options.open(path).map_err(|e| match links {
        // O_NOFOLLOW's answer when the name became a link after it was checked.
        Links::RefuseInBundle if is_link_error(&e) => Error::file(name(path), BUNDLE_LINK),
        _ => fail(e),
    })?;
    let meta = file.metadata().map_err(fail)?;
    if let Some(message) = not_regular(meta.file_type(), links) {
        return Err(Error::file(name(path), message));
    }
    Ok((file, meta.len()))
}

/// Reads an opened file whole, at most `max` bytes: the read stops at `max + 1` bytes, and a file that
/// gave more is refused with `too_large(bytes read)`.
fn read_bounded(path: &Path, file: File, len: u64, max: u64, too_large: impl Fn(u64) -> Error) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len.min(max) as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::file(name(path), format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The whole file (a regular file; a link is followed), at most the size it had when it was opened.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, Links::Follow)?;
    read_bounded(path, file, len, len, |_| Error::file(name(path), format!("grew past its {len} bytes while it was read")))
}

/// Opens a file of a bundle folder (a regular file, not a link); returns it and its size on disk, from the
/// opened handle. The caller compares the size with the manifest before reading (so that a file of the
/// wrong size is never read into memory), then reads it with [`read_opened`].
pub fn open_in_bundle(path: &Path) -> Result<(File, u64)> {
    open_regular(path, Links::RefuseInBundle)
}

/// Reads a file opened with [`open_in_bundle`], at most `declared` bytes; one that gives more is refused.
pub fn read_opened(path: &Path, file: File, declared: u64) -> Result<Vec<u8>> {
    read_bounded(path, file, declared, declared, |_| Error::file(name(path), format!("holds more than the manifest's {declared} bytes (it grew while it was read)")))
}

pub use crate::limits::MAX_SMALL_FILE;

/// The whole file if it holds at most `max` bytes; a larger one is refused before anything is read (the
/// read itself stops at `max + 1` bytes, should the file grow meanwhile).
pub fn read_bytes_at_most(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_at_most_with(path, max, Links::Follow)
}

fn read_at_most_with(path: &Path, max: u64, links: Links) -> Result<Vec<u8>> {
    let too_large = |len: u64| Error::file(name(path), format!("is {len} bytes, over the {max}-byte limit for a file of this kind"));
    let (file, len) = open_regular(path, links)?;
    if len > max {
        return Err(too_large(len));
    }
    read_bounded(path, file, len, max, too_large)
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::file(name(path), format!("is not UTF-8 text: {e}")))
}

/// The whole file as UTF-8 text, at most [`MAX_SMALL_FILE`] bytes.
pub fn read_text(path: &Path) -> Result<String> {
    utf8(path, read_bytes_at_most(path, MAX_SMALL_FILE)?)
}

/// A text file of a bundle folder (its manifest), at most `max` bytes; a link is refused.
pub fn read_text_in_bundle(path: &Path, max: u64) -> Result<String> {
    utf8(path, read_at_most_with(path, max, Links::RefuseInBundle)?)
}

/// 64 bits no other process can predict: std's `RandomState` keys come from the operating system's
/// random source (the counter and clock only tell apart names drawn in one process).
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    hasher.finish()
}

/// A new, empty temporary file beside `path` (`.name.<16 random hex digits>.tmp`), created exclusively
/// (`O_CREAT | O_EXCL`: an existing file or symbolic link of that name is never opened, let alone
/// written through); another name is drawn if one is taken.
fn create_temporary_beside(path: &Path) -> Result<(PathBuf, File)> {
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..16 {
        let tmp = path.with_file_name(format!(".{file_name}.{:016x}.tmp", unpredictable()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::file(name(path), format!("cannot write: {e}"))),
        }
    }
    Err(Error::file(name(path), format!("cannot write: no free temporary name beside it ({})", last.map(|e| e.to_string()).unwrap_or_default())))
}

/// Writes `bytes` to a fresh temporary file beside `path` (see [`create_temporary_beside`]), then renames
/// it to `path` (a link at `path` is replaced, not written through). Every output goes through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (tmp, mut file) = create_temporary_beside(path)?;
    let written = file.write_all(bytes).and_then(|_| file.flush());
    drop(file);
    written.and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(name(path), format!("cannot write: {e}"))
    })
}

/// Opens an output file that [`write_atomic`] wrote for appending (a log): it must be a regular file,
/// and a symbolic link at its name is refused rather than followed.
pub fn open_to_append(path: &Path) -> Result<File> {
    let fail = |e: std::io::Error| Error::file(name(path), format!("cannot write: {e}"));
    let mut options = std::fs::OpenOptions::new();
    options.append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if let Some(message) = not_regular(meta.file_type(), Links::RefuseInBundle) {
        return Err(Error::file(name(path), message));
    }
    Ok(file)
}

/// A folder being built for `path`: a fresh, empty, unpredictably named folder beside it
/// (`.name.<16 hex digits>.tmp`, created exclusively), which [`StagedDir::finish`] renames to `path` and
/// which is removed if it is dropped unfinished, so that a failed build leaves nothing behind.
pub struct StagedDir {
    pub staging: PathBuf,
    target: PathBuf,
    done: bool,
}

impl StagedDir {
    /// Refuses an existing `path` unless it is an empty folder (which the result then replaces).
    pub fn new(path: &Path) -> Result<Self> {
        if std::fs::symlink_metadata(path).is_ok() && !std::fs::read_dir(path).map(|mut d| d.next().is_none()).unwrap_or(false) {
            return Err(Error::file(name(path), "exists and is not an empty folder; choose a new folder"));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent)?;
        }
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        for _ in 0..16 {
            let staging = path.with_file_name(format!(".{file_name}.{:016x}.tmp", unpredictable()));
            match std::fs::create_dir(&staging) {
                Ok(()) => return Ok(Self { staging, target: path.to_path_buf(), done: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::file(name(path), format!("cannot create: {e}"))),
            }
        }
        Err(Error::file(name(path), "cannot create: no free temporary name beside it"))
    }

    /// Renames the finished folder to its target (an empty folder there is replaced).
    pub fn finish(mut self) -> Result<()> {
        if std::fs::symlink_metadata(&self.target).is_ok() {
            std::fs::remove_dir(&self.target).map_err(|e| Error::file(name(&self.target), format!("cannot replace the empty folder: {e}")))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(|e| Error::file(name(&self.target), format!("cannot write: {e}")))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Creates a folder and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::file(name(path), format!("cannot create: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("control-clip-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn temporary_names_are_fresh_and_differ() {
        let dir = tempdir("names");
        let out = dir.join("out.png");
        let (a, _) = create_temporary_beside(&out).unwrap();
        let (b, _) = create_temporary_beside(&out).unwrap();
        assert_ne!(a, b);
        for tmp in [&a, &b] {
            let n = tmp.file_name().unwrap().to_string_lossy().into_owned();
            assert!(n.starts_with(".out.png.") && n.ends_with(".tmp") && !n.contains(&format!(".{}.", std::process::id())), "{n}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_does_not_follow_a_planted_link() {
        let dir = tempdir("planted");
        let out = dir.join("out.png");
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, b"untouched").unwrap();
        // The name the old code used, and a link at the target itself.
        std::os::unix::fs::symlink(&victim, dir.join(format!(".out.png.{}.tmp", std::process::id()))).unwrap();
        write_atomic(&out, b"picture").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"picture");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        let link = dir.join("link.png");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"picture").unwrap();
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        // Only the planted link and the outputs remain (no temporary file left over).
        let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
        let e = open_to_append(&dir.join(format!(".out.png.{}.tmp", std::process::id()))).err().unwrap().to_string();
        assert!(e.contains("cannot write"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_and_bundle_links_are_refused_by_name() {
        let dir = tempdir("special");
        let e = read_bytes(Path::new("/dev/zero")).err().unwrap().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file (a device)"), "{e}");
        let e = read_bytes(&dir).err().unwrap().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let link = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_bytes_at_most(&link, 10).err().unwrap().to_string();
        assert!(e.contains("zero: is not a regular file (a device)"), "{e}");
        let e = open_in_bundle(&link).err().unwrap().to_string();
        assert!(e.contains("zero: is a symbolic link (bundle files must be regular files inside the bundle folder)"), "{e}");
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_text(&fifo).err().unwrap().to_string();
        assert!(e.contains("fifo: is not a regular file (a FIFO)"), "{e}");
        let e = open_in_bundle(&fifo).err().unwrap().to_string();
        assert!(e.contains("(a FIFO)"), "{e}");
        // A regular file through a link is read when links are followed.
        let real = dir.join("real.txt");
        std::fs::write(&real, b"text").unwrap();
        let text_link = dir.join("text-link");
        std::os::unix::fs::symlink(&real, &text_link).unwrap();
        assert_eq!(read_text(&text_link).unwrap(), "text");
        assert!(read_text_in_bundle(&text_link, MAX_SMALL_FILE).is_err());
        assert_eq!(read_text_in_bundle(&real, MAX_SMALL_FILE).unwrap(), "text");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
