//! One error type for the whole crate. Every variant names what it is about (file, tensor, field),
//! so that a user who brought a broken model folder learns which part is broken.

use std::fmt;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a user can get wrong, and everything the device can do to us.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A whole file is unusable (missing, empty, truncated, bad header, not JSON).
    File { file: String, message: String },
    /// One tensor inside a weights file is missing, misshapen, of the wrong dtype or non-finite.
    Tensor { file: String, tensor: String, message: String },
    /// A config field is missing, of the wrong type, or has a value we do not support.
    Config { file: String, field: String, message: String },
    /// An argument the caller passed (prompt, weights, sizes, backend name, ...).
    Invalid { what: String, message: String },
    /// The GPU or the runtime failed (no adapter, lost device, out of memory, failed read-back).
    Device { message: String },
    /// The caller cancelled a generation between two steps.
    Cancelled,
}

impl Error {
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::File { file: file.into(), message: message.into() }
    }
    pub fn tensor(file: impl Into<String>, tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tensor { file: file.into(), tensor: tensor.into(), message: message.into() }
    }
    pub fn config(file: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { file: file.into(), field: field.into(), message: message.into() }
    }
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), message: message.into() }
    }
    pub fn device(message: impl Into<String>) -> Self {
        Error::Device { message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { file, message } => write!(f, "{file}: {message}"),
            Error::Tensor { file, tensor, message } => write!(f, "{file}: tensor `{tensor}`: {message}"),
            Error::Config { file, field, message } => write!(f, "{file}: field `{field}`: {message}"),
            Error::Invalid { what, message } => write!(f, "invalid {what}: {message}"),
            Error::Device { message } => write!(f, "GPU/device error: {message}"),
            Error::Cancelled => write!(f, "generation cancelled"),
        }
    }
}

impl std::error::Error for Error {}
