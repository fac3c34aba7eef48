//! Reading checkpoint `config.json` files with errors that name the file and the field.
//!
//! Configs are read field by field (not through a serde derive) so that a missing field can fall back
//! to the reference library's default while a wrong type or an unsupported value is refused by name.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A parsed JSON object plus the name of the file it came from.
pub struct ConfigJson {
    pub file: String,
    pub object: Map<String, Value>,
}

impl ConfigJson {
    pub fn parse(file: impl Into<String>, text: &str) -> Result<Self> {
        let file = file.into();
        if text.trim().is_empty() {
            return Err(Error::file(&file, "the file is empty, expected a JSON config"));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| Error::file(&file, format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(object) => Ok(Self { file, object }),
            _ => Err(Error::file(&file, "expected a JSON object")),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(&file, format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    /// A nested object (e.g. `text_config` inside a full CLIPModel config), if present.
    pub fn nested(&self, field: &str) -> Option<ConfigJson> {
        match self.object.get(field) {
            Some(Value::Object(o)) => Some(ConfigJson { file: format!("{} ({field})", self.file), object: o.clone() }),
            _ => None,
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.object.get(field).filter(|v| !v.is_null())
    }

    fn wrong(&self, field: &str, expected: &str, v: &Value) -> Error {
        Error::config(&self.file, field, format!("expected {expected}, found {v}"))
    }

    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        self.get(field).map_or(Ok(default), |v| v.as_u64().map(|x| x as usize).ok_or_else(|| self.wrong(field, "a non-negative integer", v)))
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        let v = self.get(field).ok_or_else(|| Error::config(&self.file, field, "missing"))?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| self.wrong(field, "a non-negative integer", v))
    }

    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        self.get(field).map_or(Ok(default), |v| v.as_f64().ok_or_else(|| self.wrong(field, "a number", v)))
    }

    pub fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str> {
        self.get(field).map_or(Ok(default), |v| v.as_str().ok_or_else(|| self.wrong(field, "a string", v)))
    }

    /// Refuses a value that must be positive (sizes, head counts).
    pub fn positive(&self, field: &str, value: usize) -> Result<usize> {
        if value == 0 {
            return Err(Error::config(&self.file, field, "must be positive, found 0"));
        }
        Ok(value)
    }
}

impl ConfigJson {
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        self.get(field).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| self.wrong(field, "true or false", v)))
    }

    /// A string, or None when the field is absent or null.
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        self.get(field).map(|v| v.as_str().ok_or_else(|| self.wrong(field, "a string or null", v))).transpose()
    }

    /// A list of strings (block types and the like).
    pub fn str_list(&self, field: &str) -> Result<Vec<String>> {
        let v = self.get(field).ok_or_else(|| Error::config(&self.file, field, "missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong(field, "a list of strings", v))
    }

    /// A list of `n` integers, written either as a list or as one integer for all (diffusers' style);
    /// `default` when the field is absent or null.
    pub fn usize_per_block(&self, field: &str, n: usize, default: Option<usize>) -> Result<Vec<usize>> {
        let Some(v) = self.get(field) else {
            return default.map(|d| vec![d; n]).ok_or_else(|| Error::config(&self.file, field, "missing"));
        };
        if let Some(x) = v.as_u64() {
            return Ok(vec![x as usize; n]);
        }
        let list = v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong(field, "an integer or a list of integers", v))?;
        if list.len() != n {
            return Err(Error::config(&self.file, field, format!("has {} entries, expected one per block ({n})", list.len())));
        }
        Ok(list)
    }

    /// Refuses a field whose value is anything but absent, null, or one of `allowed` — for the
    /// options a model variant may set that we do not implement.
    pub fn require_default(&self, field: &str, allowed: &[serde_json::Value]) -> Result<()> {
        match self.get(field) {
            None => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(v) => Err(Error::config(&self.file, field, format!("value {v} is not supported"))),
        }
    }
}
