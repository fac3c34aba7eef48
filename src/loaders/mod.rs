//! Readers of checkpoint formats that hold several models at once (native only): they sit above `weights`
//! (the tensors) and `models` (the configs), which do not know them.

pub mod single_file;
