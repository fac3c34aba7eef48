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

/// The whole file as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::file(name(path), format!("cannot read: {e}")))
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
