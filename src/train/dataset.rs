//! The fine-tuning dataset: a folder with pictures (PNG, JPEG), `labels.jsonl` and `domain.json`.
//!
//! - `labels.jsonl`: one JSON object per line, `{"file": "0001.png", "category": "star", "style": "striped"}`;
//!   either label may be absent (or null). An optional `prompt` ("a red star in striped style") is the
//!   text the picture should be generated from, read only by the denoising term L_den (docs/finetune.md).
//!   Other fields (colour, caption, …) are ignored. Blank lines are
//!   skipped. Pictures without any label are allowed and ignored by the labelled losses.
//! - `domain.json`: `categories`, `styles` (at least two each), `category_templates` and `style_templates`
//!   (each with one `{}` for the name), `caption_templates` (with `{category}` and `{style}`), and
//!   `general_prompts` (for L_keep). Other fields are ignored.
//!
//! Parsing works on text (no file system), so the same code serves the CLI and a later page; every error
//! names the file and, for labels, the line.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tokenizer::{ClipTokenizer, MAX_POSITIONS};

/// `domain.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Domain {
    pub categories: Vec<String>,
    pub styles: Vec<String>,
    pub category_templates: Vec<String>,
    pub style_templates: Vec<String>,
    pub caption_templates: Vec<String>,
    pub general_prompts: Vec<String>,
}

impl Domain {
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        crate::config::refuse_duplicate_keys(file, text)?;
        let domain: Self = serde_json::from_str(text).map_err(|e| Error::file(file, format!("is not a valid domain file: {e}")))?;
        for (field, list, min) in [
            ("categories", &domain.categories, 2),
            ("styles", &domain.styles, 2),
            ("category_templates", &domain.category_templates, 1),
            ("style_templates", &domain.style_templates, 1),
            ("caption_templates", &domain.caption_templates, 1),
            ("general_prompts", &domain.general_prompts, 1),
        ] {
            if list.len() < min {
                return Err(Error::config(file, field, format!("needs at least {min} entr{}, found {}", if min == 1 { "y" } else { "ies" }, list.len())));
            }
            // One pass with a set (a quadratic scan took seconds on lists of tens of thousands).
            let mut seen = HashSet::with_capacity(list.len());
            if let Some(dup) = list.iter().find(|v| !seen.insert(v.as_str())) {
                return Err(Error::config(file, field, format!("`{dup}` appears twice")));
            }
        }
        for (field, list) in [("category_templates", &domain.category_templates), ("style_templates", &domain.style_templates)] {
            if let Some(t) = list.iter().find(|t| t.matches("{}").count() != 1) {
                return Err(Error::config(file, field, format!("`{t}` must contain `{{}}` exactly once (where the name goes)")));
            }
        }
        if let Some(t) = domain.caption_templates.iter().find(|t| !(t.contains("{category}") && t.contains("{style}"))) {
            return Err(Error::config(file, "caption_templates", format!("`{t}` must contain both {{category}} and {{style}}")));
        }
        Ok(domain)
    }

    /// Category k under every category template (category-major), likewise for styles.
    pub fn category_prompts(&self) -> Vec<String> {
        self.categories.iter().flat_map(|c| self.category_templates.iter().map(move |t| t.replace("{}", c))).collect()
    }

    pub fn style_prompts(&self) -> Vec<String> {
        self.styles.iter().flat_map(|s| self.style_templates.iter().map(move |t| t.replace("{}", s))).collect()
    }

    /// Caption template `j` for (category k, style s).
    pub fn caption(&self, template: usize, category: usize, style: usize) -> String {
        self.caption_templates[template].replace("{category}", &self.categories[category]).replace("{style}", &self.styles[style])
    }

    /// Token rows of `prompts`, refusing any that does not fit into 77 positions; `file` and `what` name
    /// the source in the error.
    pub fn tokenize(tokenizer: &ClipTokenizer, prompts: &[String], file: &str, what: &str) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .map(|p| {
                if p.trim().is_empty() {
                    return Err(Error::config(file, what, "holds an empty prompt"));
                }
                let t = tokenizer.encode(p, MAX_POSITIONS)?;
                if t.dropped_tokens > 0 {
                    return Err(Error::config(file, what, format!("`{p}` is longer than 77 tokens ({} too many)", t.dropped_tokens)));
                }
                Ok(t.ids)
            })
            .collect()
    }
}

/// One line of `labels.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub file: String,
    pub category: Option<usize>,
    pub style: Option<usize>,
    /// The picture's prompt for L_den.
    pub prompt: Option<String>,
    /// 1-based line number, for messages.
    pub line: usize,
}

#[derive(Deserialize)]
struct LabelLine {
    file: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    style: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
}

/// Parses `labels.jsonl` against the domain's class names; `file` names it in errors (with the line).
pub fn parse_labels(file: &str, text: &str, domain: &Domain) -> Result<Vec<Labelled>> {
    let mut out: Vec<Labelled> = Vec::new();
    // Linear in the lines and the class names: names are looked up in maps, and each file's first line is
    // kept in one (scanning the lines read so far took 7.6 s for 80,000 lines).
    let index = |names: &[String]| -> HashMap<String, usize> {
        let mut map = HashMap::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            map.entry(name.clone()).or_insert(k);
        }
        map
    };
    let (category_index, style_index) = (index(&domain.categories), index(&domain.styles));
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let at = format!("{file}:{n}");
        if line.trim().is_empty() {
            continue;
        }
        crate::config::refuse_duplicate_keys(&at, line)?;
        let parsed: LabelLine = serde_json::from_str(line).map_err(|e| Error::file(&at, format!("is not a JSON object with `file`, `category`, `style`: {e}")))?;
        let name = parsed.file.filter(|f| !f.trim().is_empty()).ok_or_else(|| Error::file(&at, "has no `file`"))?;
        if name.contains("..") || name.starts_with('/') || name.contains('\\') {
            return Err(Error::file(&at, format!("`{name}` must be a plain name inside the dataset folder")));
        }
        let find = |value: Option<String>, index: &HashMap<String, usize>, names: &[String], kind: &str| -> Result<Option<usize>> {
            match value {
                None => Ok(None),
                Some(v) => index
                    .get(&v)
                    .copied()
                    .map(Some)
                    .ok_or_else(|| Error::file(&at, format!("unknown {kind} `{v}` (domain.json has {})", names.join(", ")))),
            }
        };
        let category = find(parsed.category, &category_index, &domain.categories, "category")?;
        let style = find(parsed.style, &style_index, &domain.styles, "style")?;
        if let Some(first) = first_line.get(&name) {
            return Err(Error::file(&at, format!("`{name}` is already labelled on line {first}")));
        }
        if parsed.prompt.as_ref().is_some_and(|p| p.trim().is_empty()) {
            return Err(Error::file(&at, "has an empty `prompt`"));
        }
        first_line.insert(name.clone(), n);
        out.push(Labelled { file: name, category, style, prompt: parsed.prompt, line: n });
    }
    if out.is_empty() {
        return Err(Error::file(file, "has no labelled pictures"));
    }
    for (kind, names, get) in [
        ("category", &domain.categories, (|l: &Labelled| l.category) as fn(&Labelled) -> Option<usize>),
        ("style", &domain.styles, |l: &Labelled| l.style),
    ] {
        let mut used = vec![false; names.len()];
        out.iter().filter_map(get).for_each(|k| used[k] = true);
        if let Some(k) = used.iter().position(|u| !u) {
            return Err(Error::file(file, format!("no picture is labelled with the {kind} `{}`", names[k])));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        Domain::parse(
            "domain.json",
            r#"{"categories": ["star", "heart"], "styles": ["flat", "striped"], "category_templates": ["a {}"],
                "style_templates": ["{} style"], "caption_templates": ["a {category} in {style} style"], "general_prompts": ["a star"]}"#,
        )
        .unwrap()
    }

    #[test]
    fn labels_name_file_and_line() {
        let d = domain();
        let ok = "{\"file\": \"a.png\", \"category\": \"star\", \"style\": \"flat\"}\n\n{\"file\": \"b.png\", \"category\": \"heart\", \"style\": \"striped\"}\n{\"file\": \"c.png\"}";
        let labels = parse_labels("labels.jsonl", ok, &d).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!((labels[1].category, labels[1].style, labels[1].line), (Some(1), Some(1), 3));
        for (text, needle) in [
            ("{\"file\": \"a.png\", \"category\": \"star\"}\n{\"file\": \"b.png\", \"category\": \"cube\"}", "labels.jsonl:2: unknown category `cube`"),
            ("{\"file\": \"a.png\"\n", "labels.jsonl:1: is not a JSON object"),
            ("{\"category\": \"star\"}", "labels.jsonl:1: has no `file`"),
            ("{\"file\": \"a.png\", \"category\": \"star\", \"style\": \"flat\"}", "no picture is labelled with the category `heart`"),
        ] {
            let err = parse_labels("labels.jsonl", text, &d).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    /// Duplicates are named as before (the later line, the first one's line; the repeated name), and
    /// finding them is linear: 80,000 label lines and a domain of 80,000 categories each take well under a
    /// second (the quadratic scans took 7.6 s on the lines).
    #[test]
    fn duplicates_are_named_and_found_in_linear_time() {
        let d = domain();
        let text = "{\"file\": \"a.png\", \"category\": \"star\", \"style\": \"flat\"}\n{\"file\": \"b.png\", \"category\": \"heart\", \"style\": \"striped\"}\n\n{\"file\": \"a.png\"}";
        let err = parse_labels("labels.jsonl", text, &d).unwrap_err().to_string();
        assert!(err.contains("labels.jsonl:4") && err.contains("`a.png` is already labelled on line 1"), "{err}");
        let err = Domain::parse("d.json", r#"{"categories": ["a", "b", "c", "b", "a"], "styles": ["x", "y"], "category_templates": ["{}"], "style_templates": ["{}"], "caption_templates": ["{category} {style}"], "general_prompts": ["p"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.json") && err.contains("categories") && err.contains("`b` appears twice"), "{err}");

        const N: usize = 80_000;
        let mut lines: Vec<String> = (0..N).map(|i| format!("{{\"file\": \"{i:06}.png\", \"category\": \"{}\", \"style\": \"{}\"}}", ["star", "heart"][i % 2], ["flat", "striped"][i / 2 % 2])).collect();
        let start = std::time::Instant::now();
        assert_eq!(parse_labels("labels.jsonl", &lines.join("\n"), &d).unwrap().len(), N);
        lines.push(format!("{{\"file\": \"{:06}.png\"}}", N - 1));
        let err = parse_labels("labels.jsonl", &lines.join("\n"), &d).unwrap_err().to_string();
        assert!(err.contains(&format!("labels.jsonl:{}", N + 1)) && err.contains(&format!("already labelled on line {N}")), "{err}");
        let names: Vec<String> = (0..N).map(|i| format!("\"c{i}\"")).collect();
        let domain_text = |categories: &[String]| {
            format!(r#"{{"categories": [{}], "styles": ["x", "y"], "category_templates": ["{{}}"], "style_templates": ["{{}}"], "caption_templates": ["{{category}} {{style}}"], "general_prompts": ["p"]}}"#, categories.join(", "))
        };
        assert_eq!(Domain::parse("d.json", &domain_text(&names)).unwrap().categories.len(), N);
        let mut repeated = names.clone();
        repeated.push(names[0].clone());
        let err = Domain::parse("d.json", &domain_text(&repeated)).unwrap_err().to_string();
        assert!(err.contains("`c0` appears twice"), "{err}");
        assert!(start.elapsed().as_secs_f64() < 5.0, "took {:?}", start.elapsed());
    }

    #[test]
    fn domain_refuses_empty_lists_and_bad_templates() {
        let err = Domain::parse("d.json", r#"{"categories": ["a", "b"], "styles": ["x", "y"], "category_templates": [], "style_templates": ["{}"], "caption_templates": ["{category} {style}"], "general_prompts": ["p"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.json") && err.contains("category_templates"), "{err}");
        let err = Domain::parse("d.json", r#"{"categories": ["a", "b"], "styles": ["x", "y"], "category_templates": ["a"], "style_templates": ["{}"], "caption_templates": ["{category} {style}"], "general_prompts": ["p"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly once"), "{err}");
    }
}
