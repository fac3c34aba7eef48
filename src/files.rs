//! Reading and writing the user's files (native only), with the one wording of every file error:
//! "<path>: cannot read: <reason>" and so on. Outputs are written to a temporary name and renamed, so that
//! a failed run never leaves a half-written file.

use std::path::Path;

use crate::error::{Error, Result};

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// The whole file.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::file(name(path), format!("cannot read: {e}")))
}

/// The most a text file (a config, manifest, dataset list or training config: kilobytes in practice) or a
/// tokenizer / picture file may hold: 64 MiB. A larger one is refused from its size, before it is read.
pub const MAX_SMALL_FILE: u64 = 64 << 20;

/// The whole file if it holds at most `max` bytes; a larger one is refused before anything is read (the
/// read itself stops at `max + 1` bytes, should the file grow meanwhile).
pub fn read_bytes_at_most(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |e: std::io::Error| Error::file(name(path), format!("cannot read: {e}"));
    let too_large = |len: u64| Error::file(name(path), format!("is {len} bytes, over the {max}-byte limit for a file of this kind"));
    let file = std::fs::File::open(path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The whole file as UTF-8 text, at most [`MAX_SMALL_FILE`] bytes.
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes_at_most(path, MAX_SMALL_FILE)?).map_err(|e| Error::file(name(path), format!("is not UTF-8 text: {e}")))
}

/// Writes `bytes` to a hidden temporary file beside `path` (`.name.<pid>.tmp`), then renames it to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(name(path), format!("cannot write: {e}"))
    })
}

/// Creates a folder and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::file(name(path), format!("cannot create: {e}")))
}
