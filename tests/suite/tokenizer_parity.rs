//! Token ids equal transformers' CLIPTokenizer on every committed case (tests/fixtures/tokenizer_cases.json).

use crate::common::fixtures;
use control_clip::{ClipTokenizer, MAX_POSITIONS};

#[test]
fn ids_equal_the_reference_on_every_case() {
    let tokenizer = ClipTokenizer::read(&fixtures().join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49408);
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    assert!(cases.iter().all(|c| c["dropped_tokens"].is_u64()), "every case states its dropped tokens");
    let failures = differing_cases(&tokenizer, cases);
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The committed cases whose ids (and, where the case gives it, dropped-token count) the tokenizer does not
/// reproduce, described.
fn differing_cases(tokenizer: &ClipTokenizer, cases: &[serde_json::Value]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tokenizer.encode(text, MAX_POSITIONS).unwrap();
        let dropped = case["dropped_tokens"].as_u64().map(|d| d as usize);
        if got.ids != expected || dropped.is_some_and(|d| got.dropped_tokens != d) {
            failures.push(format!("{text:?}: got {:?} (dropped {}), expected {:?} (dropped {dropped:?})", got.ids, got.dropped_tokens, expected));
        }
    }
    failures
}

#[test]
fn long_prompts_are_truncated_and_say_so() {
    let tokenizer = ClipTokenizer::read(&fixtures().join("tokenizer.json")).unwrap();
    let prompt = vec!["red"; 100].join(" ");
    let t = tokenizer.encode(&prompt, MAX_POSITIONS).unwrap();
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.dropped_tokens, 25);
    assert_eq!(t.ids[76], tokenizer.eos_id());
    let notice = t.truncation_notice().unwrap();
    assert!(notice.contains("25 token"), "{notice}");
    assert!(notice.contains("red"), "{notice}");
    assert!(tokenizer.encode("a cat", MAX_POSITIONS).unwrap().truncation_notice().is_none());
}

#[test]
fn a_broken_tokenizer_file_is_named() {
    let err = ClipTokenizer::from_bytes("broken/tokenizer.json", b"{not json").err().unwrap().to_string();
    assert!(err.contains("broken/tokenizer.json") && err.contains("not a valid tokenizer.json"), "{err}");
    let err = ClipTokenizer::from_bytes("empty/tokenizer.json", b"").err().unwrap().to_string();
    assert!(err.contains("empty/tokenizer.json") && err.contains("empty"), "{err}");
}

/// A tokenizer folder as diffusers pipelines hold it (vocab.json + merges.txt + special tokens, no
/// tokenizer.json): ids equal transformers' CLIPTokenizer from the same folder on every case, for the real
/// vocabulary and for a small one that pads with `!` (tests/fixtures/fixtures_tokenizer_files.py).
#[test]
fn vocab_and_merges_give_transformers_ids() {
    for name in ["real", "small"] {
        let dir = fixtures().join("tokenizer_files").join(name);
        let tokenizer = ClipTokenizer::read_dir(&dir).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
        assert_eq!(tokenizer.pad_id() as u64, cases["pad_id"].as_u64().unwrap(), "{name}: pad id");
        let cases = cases["cases"].as_array().unwrap();
        assert!(cases.len() >= 50, "{name}: only {} cases", cases.len());
        let failures = differing_cases(&tokenizer, cases);
        assert!(failures.is_empty(), "{name}: {} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }
}

#[test]
fn bad_vocab_or_merges_are_named_with_their_line() {
    use control_clip::tokenizer::{SpecialTokens, tokenizer_json_from_vocab};
    let dir = fixtures().join("tokenizer_files/small");
    let vocab = std::fs::read(dir.join("vocab.json")).unwrap();
    let merges = std::fs::read_to_string(dir.join("merges.txt")).unwrap();
    let build = |vocab: &[u8], merges: &str| {
        tokenizer_json_from_vocab(("t/vocab.json", vocab), ("t/merges.txt", merges.as_bytes()), &SpecialTokens::default()).err().map(|e| e.to_string())
    };
    assert_eq!(build(&vocab, &merges), None);
    let mut lines: Vec<&str> = merges.lines().collect();
    lines[3] = "onlyone";
    let e = build(&vocab, &lines.join("\n")).unwrap();
    assert!(e.contains("t/merges.txt:4") && e.contains("not a merge"), "{e}");
    lines[3] = "q zzz";
    let e = build(&vocab, &lines.join("\n")).unwrap();
    assert!(e.contains("t/merges.txt:4") && e.contains("`qzzz`"), "{e}");
    let e = build(b"[1, 2]", &merges).unwrap();
    assert!(e.contains("t/vocab.json") && e.contains("JSON object"), "{e}");
    let e = build(br#"{"a": 0, "b": 0}"#, &merges).unwrap();
    assert!(e.contains("id 0") && e.contains("more than one token"), "{e}");
    let e = build(br#"{"a": 0}"#, "").unwrap();
    assert!(e.contains("<|startoftext|>"), "{e}");
}
