//! Reading checkpoint `config.json` files with errors that name the file and the field.
//!
//! Configs are read field by field (not through a serde derive) so that a missing field can fall back
//! to the reference library's default while a wrong type or an unsupported value is refused by name.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The largest integer a config may give (a count, a size, an id): 2^20. No supported model needs more
/// (vocabularies are under 300 k, widths under 20 k, timesteps 1,000), and a larger value would only make a
/// reader allocate or loop before the weights could contradict it (a scheduler's 10^12 training timesteps
/// would ask for terabytes of betas), so it is refused by name.
pub const MAX_CONFIG_INTEGER: usize = 1 << 20;

/// Refuses an integer of a config over [`MAX_CONFIG_INTEGER`], naming `file` and `field`: the one bound of
/// model, scheduler and training configs (src/train reads its config through serde and checks its sizes
/// here).
pub fn bounded_integer(file: &str, field: &str, value: u64) -> Result<usize> {
    if value > MAX_CONFIG_INTEGER as u64 {
        return Err(Error::config(file, field, format!("{value} is over the largest value a config may give ({MAX_CONFIG_INTEGER})")));
    }
    Ok(value as usize)
}

/// Refuses JSON text in which one object gives a key twice, naming `file` and the key's path
/// (`components.unet.config.sample_size`): JSON parsers disagree on which of the two counts (serde_json and
/// Python's `json` keep the last), so a file that says two things is refused rather than read one way.
/// Linear in the text's length; text that is not JSON is left to the caller's parser to report.
pub fn refuse_duplicate_keys(file: &str, text: &str) -> Result<()> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Seek<'a> {
        found: &'a mut Option<String>,
        path: String,
    }
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
                if self.found.is_some() {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                if !seen.insert(key) {
                    *self.found = Some(path);
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                map.next_value_seed(Seek { found: &mut *self.found, path })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            let mut i = 0;
            while seq.next_element_seed(Seek { found: &mut *self.found, path: format!("{}[{i}]", self.path) })?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
    }

    let mut found = None;
    let mut de = serde_json::Deserializer::from_str(text);
    // Invalid JSON is the caller's parser's to report; only a duplicate found before the error counts.
    let _ = Seek { found: &mut found, path: String::new() }.deserialize(&mut de);
    match found {
        Some(path) => Err(Error::config(file, path, "appears twice in its object; give each key once")),
        None => Ok(()),
    }
}

/// A parsed JSON object plus the name of the file it came from.
#[derive(Debug, Clone)]
pub struct ConfigJson {
    pub file: String,
    pub object: Map<String, Value>,
}

impl ConfigJson {
    /// Parses a config's text. Python's `json` writes IEEE specials as bare `Infinity`, `-Infinity` and
    /// `NaN` (diffusers' DPMSolverMultistepScheduler saves `"lambda_min_clipped": -Infinity`), which
    /// strict JSON refuses; they are read as the strings "Infinity" etc., which the number getters accept.
    pub fn parse(file: impl Into<String>, text: &str) -> Result<Self> {
        let file = file.into();
        if text.trim().is_empty() {
            return Err(Error::file(&file, "the file is empty, expected a JSON config"));
        }
        let text = quote_python_specials(text);
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::file(&file, format!("not valid JSON: {e}")))?;
        refuse_duplicate_keys(&file, &text)?;
        match value {
            Value::Object(object) => Ok(Self { file, object }),
            _ => Err(Error::file(&file, "expected a JSON object")),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        Self::parse(path.display().to_string(), &crate::files::read_text(path)?)
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
        Ok(self.opt_usize(field)?.unwrap_or(default))
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| Error::config(&self.file, field, "missing"))
    }

    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(field)?.unwrap_or(default))
    }

    /// A finite number, or None when absent or null. Python's `NaN` and `±Infinity` (and values beyond
    /// f32's range, which the models would turn into infinities) are refused by name: a decoder's NaN
    /// `scaling_factor` would write an all-black picture, an infinite `shift_factor` another picture.
    /// Fields where an infinity means something read [`ConfigJson::opt_f64_or_infinite`].
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        let value = self.opt_f64_or_infinite(field)?;
        if let Some(v) = value.filter(|v| v.is_infinite()) {
            let found = if v > 0.0 { "Infinity" } else { "-Infinity" };
            return Err(Error::config(&self.file, field, format!("must be a finite number, found {found}")));
        }
        if let Some(v) = value.filter(|v| v.abs() > f32::MAX as f64) {
            return Err(Error::config(&self.file, field, format!("must be within f32's range (±3.4e38), found {v:e}")));
        }
        Ok(value)
    }

    /// A number, `Infinity` and `-Infinity` included (Python's bare specials, or those strings: diffusers
    /// saves `"lambda_min_clipped": -Infinity`), or None when absent or null; `NaN` is refused by name.
    pub fn opt_f64_or_infinite(&self, field: &str) -> Result<Option<f64>> {
        let value = self.typed(field, "a number", |v| match v {
            Value::String(s) => match s.as_str() {
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                "NaN" => Some(f64::NAN),
                _ => None,
            },
            _ => v.as_f64(),
        })?;
        if value.is_some_and(f64::is_nan) {
            return Err(Error::config(&self.file, field, "must be a number, found NaN"));
        }
        Ok(value)
    }

    /// A non-negative integer up to [`MAX_CONFIG_INTEGER`], or None when absent or null.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.typed(field, "a non-negative integer", |v| v.as_u64())?.map(|x| self.bounded(field, x)).transpose()
    }

    fn bounded(&self, field: &str, value: u64) -> Result<usize> {
        bounded_integer(&self.file, field, value)
    }

    /// true / false, or None when absent or null.
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        self.typed(field, "true or false", Value::as_bool)
    }

    /// An owned string, or None when absent or null.
    pub fn opt_string(&self, field: &str) -> Result<Option<String>> {
        self.typed(field, "a string", |v| v.as_str().map(str::to_string))
    }

    /// Whether the field is present and not null.
    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    fn typed<T>(&self, field: &str, expected: &str, get: impl Fn(&Value) -> Option<T>) -> Result<Option<T>> {
        self.get(field).map(|v| get(v).ok_or_else(|| self.wrong(field, expected, v))).transpose()
    }

    pub fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str> {
        self.get(field).map_or(Ok(default), |v| v.as_str().ok_or_else(|| self.wrong(field, "a string", v)))
    }

    /// A positive integer (sizes, head counts), `default` when absent.
    pub fn positive_or(&self, field: &str, default: usize) -> Result<usize> {
        self.positive(field, self.usize_or(field, default)?)
    }

    /// A required positive integer.
    pub fn positive_usize(&self, field: &str) -> Result<usize> {
        self.positive(field, self.usize(field)?)
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
        Ok(self.opt_bool(field)?.unwrap_or(default))
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
            return Ok(vec![self.bounded(field, x)?; n]);
        }
        let list = v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong(field, "an integer or a list of integers", v))?;
        let list = list.into_iter().map(|x| self.bounded(field, x)).collect::<Result<Vec<_>>>()?;
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

/// Quotes bare `Infinity`, `-Infinity` and `NaN` outside strings (see [`ConfigJson::parse`]).
fn quote_python_specials(text: &str) -> String {
    const SPECIALS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if let Some(special) = SPECIALS.iter().find(|s| bytes[i..].starts_with(s.as_bytes())) {
            out.push(b'"');
            out.extend_from_slice(special.as_bytes());
            out.push(b'"');
            i += special.len();
            continue;
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII was inserted, at ASCII positions: still UTF-8.
    String::from_utf8(out).expect("UTF-8 preserved")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_specials_become_strings_outside_strings_only() {
        let text = r#"{"a": -Infinity, "b": "NaN \" Infinity", "c": [NaN, Infinity]}"#;
        assert_eq!(quote_python_specials(text), r#"{"a": "-Infinity", "b": "NaN \" Infinity", "c": ["NaN", "Infinity"]}"#);
    }
}
