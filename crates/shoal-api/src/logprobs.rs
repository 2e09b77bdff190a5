//! Log-probabilities in every dialect that has them (issue 14, item 4), and `n` (several choices per request, item
//! 6): request fields, and the pure JSON shapes each dialect writes from the chunks' values.
//!
//! The values are the last rank's (`shoal_engine::logprobs`: the log-softmax of the penalised logits over the whole
//! vocabulary, at temperature 1, before top-k/top-p truncation). The end-of-generation token is never listed.

use serde_json::{Map, Value, json};
use shoal_types::chunk::TopLogprob;
use shoal_types::params::GenerationParams;

use crate::error::BadRequest;
use crate::fields;

/// The most alternatives per token (OpenAI's limit; the engine refuses more with the same number).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Legacy Completions' `logprobs` is itself the count of alternatives, at most 5 (OpenAI's limit).
pub const MAX_COMPLETIONS_LOGPROBS: u32 = 5;
/// The most choices one request may ask for (`n`): the sequences a runner batches by default (`max_seqs`), so
/// the n choices of a request share decode steps.
pub const MAX_CHOICES: u32 = 8;

/// One generated token's log-probability, with its spelling and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

impl TokenLogprob {
    /// The token as text (a token that is part of a UTF-8 character spells as U+FFFD; `bytes` keeps the truth).
    pub fn token(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Chat Completions and Responses: `logprobs` (bool) and `top_logprobs` (0–20, only with `logprobs`). OpenAI
/// answers a `top_logprobs` without `logprobs: true` with a 400, and so does shoal.
pub fn parse_chat_fields(obj: &Map<String, Value>, params: &mut GenerationParams) -> Result<(), BadRequest> {
    params.logprobs = fields::opt_bool(obj, "logprobs")?.unwrap_or(false);
    params.top_logprobs = top_logprobs(obj, "top_logprobs")?;
    if params.top_logprobs.is_some() && !params.logprobs {
        return Err(BadRequest::new("top_logprobs", "requires `logprobs` to be true"));
    }
    Ok(())
}

/// Responses' include entry that asks for logprobs on the message's `output_text` parts.
pub const RESPONSES_INCLUDE: &str = "message.output_text.logprobs";

/// Responses: `include: ["message.output_text.logprobs"]` asks for logprobs, `top_logprobs` (0–20) for
/// alternatives (and implies the logprobs: a count of alternatives with no values to attach them to means nothing).
/// Other `include` entries are accepted and ignored.
pub fn parse_responses_fields(obj: &Map<String, Value>, params: &mut GenerationParams) -> Result<(), BadRequest> {
    match obj.get("include") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(RESPONSES_INCLUDE) => params.logprobs = true,
                    Some(_) => {}
                    None => return Err(BadRequest::new(format!("include[{i}]"), "must be a string")),
                }
            }
        }
        Some(_) => return Err(BadRequest::new("include", "must be an array of strings")),
    }
    params.top_logprobs = top_logprobs(obj, "top_logprobs")?;
    params.logprobs |= params.top_logprobs.is_some();
    Ok(())
}

/// `name` as a count of alternatives, 0 to [`MAX_TOP_LOGPROBS`].
pub fn top_logprobs(obj: &Map<String, Value>, name: &str) -> Result<Option<u32>, BadRequest> {
    match fields::opt_u64(obj, name)? {
        Some(n) if n > u64::from(MAX_TOP_LOGPROBS) => {
            Err(BadRequest::new(name, format!("must be at most {MAX_TOP_LOGPROBS}")))
        }
        n => Ok(n.map(|n| n as u32)),
    }
}

/// Legacy Completions: `logprobs` is an integer 0–5, the count of alternatives (0: the chosen token's only).
pub fn parse_completions_field(obj: &Map<String, Value>, params: &mut GenerationParams) -> Result<(), BadRequest> {
    match fields::opt_u64(obj, "logprobs")? {
        None => {}
        Some(n) if n > u64::from(MAX_COMPLETIONS_LOGPROBS) => {
            return Err(BadRequest::new(
                "logprobs",
                format!("must be at most {MAX_COMPLETIONS_LOGPROBS}"),
            ));
        }
        Some(n) => {
            params.logprobs = true;
            params.top_logprobs = Some(n as u32);
        }
    }
    Ok(())
}

/// `n`: 1 to [`MAX_CHOICES`] choices (1 when absent).
pub fn choices(obj: &Map<String, Value>) -> Result<u32, BadRequest> {
    match fields::opt_u64(obj, "n")? {
        None => Ok(1),
        Some(0) => Err(BadRequest::new("n", "must be at least 1")),
        Some(n) if n > u64::from(MAX_CHOICES) => Err(BadRequest::new("n", format!("must be at most {MAX_CHOICES}"))),
        Some(n) => Ok(n as u32),
    }
}

/// The parameters of choice `index` of a request: its own seed (the request's + index, as vLLM derives them) so the
/// choices differ and each is reproducible; without a seed every choice draws its own.
pub fn choice_params(params: &GenerationParams, index: u32) -> GenerationParams {
    let mut p = params.clone();
    p.seed = params.seed.map(|s| s.wrapping_add(u64::from(index)));
    p
}

fn bytes_json(bytes: &[u8]) -> Value {
    Value::from(bytes.iter().map(|&b| Value::from(b)).collect::<Vec<_>>())
}

/// One entry of Chat Completions' `logprobs.content`, Responses' `logprobs` and Ollama's `logprobs`:
/// `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
pub fn entry_json(lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|t| json!({ "token": t.token, "logprob": t.logprob, "bytes": bytes_json(&t.bytes) }))
        .collect();
    json!({
        "token": lp.token(),
        "logprob": lp.logprob,
        "bytes": bytes_json(&lp.bytes),
        "top_logprobs": top,
    })
}

/// Chat Completions' `choices[].logprobs`: `null` when not asked, else `{content: [...], refusal: null}`.
pub fn chat_json(asked: bool, entries: &[TokenLogprob]) -> Value {
    if !asked {
        return Value::Null;
    }
    json!({ "content": entries.iter().map(entry_json).collect::<Vec<_>>(), "refusal": null })
}

/// Legacy Completions' `choices[].logprobs`: parallel lists `tokens`, `token_logprobs`, `top_logprobs` (one
/// `{token: logprob}` map per token) and `text_offset` (where each token starts in the text, in characters,
/// counted from `offset`).
pub fn completions_json(asked: bool, entries: &[TokenLogprob], offset: usize) -> Value {
    if !asked {
        return Value::Null;
    }
    let mut at = offset;
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for lp in entries {
        let token = lp.token();
        offsets.push(Value::from(at));
        at += token.chars().count();
        values.push(Value::from(lp.logprob));
        let mut top = Map::new();
        for t in &lp.top {
            top.insert(t.token.clone(), Value::from(t.logprob));
        }
        tops.push(Value::Object(top));
        tokens.push(Value::from(token));
    }
    json!({ "tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &[u8], logprob: f32) -> TokenLogprob {
        TokenLogprob {
            bytes: bytes.to_vec(),
            logprob,
            top: vec![TopLogprob {
                token: String::from_utf8_lossy(bytes).into_owned(),
                token_id: 1,
                logprob,
                bytes: bytes.to_vec(),
            }],
        }
    }

    fn obj(text: &str) -> Map<String, Value> {
        fields::object(text.as_bytes()).expect("object")
    }

    #[test]
    fn chat_fields_follow_openai() {
        let mut p = GenerationParams::default();
        parse_chat_fields(&obj(r#"{"logprobs":true,"top_logprobs":20}"#), &mut p).expect("valid");
        assert!(p.logprobs);
        assert_eq!(p.top_logprobs, Some(20));
        for (body, field) in [
            (r#"{"logprobs":true,"top_logprobs":21}"#, "top_logprobs"),
            (r#"{"top_logprobs":2}"#, "top_logprobs"),
            (r#"{"logprobs":false,"top_logprobs":0}"#, "top_logprobs"),
            (r#"{"logprobs":true,"top_logprobs":-1}"#, "top_logprobs"),
            (r#"{"logprobs":"yes"}"#, "logprobs"),
        ] {
            let e = parse_chat_fields(&obj(body), &mut GenerationParams::default()).expect_err(body);
            assert_eq!(e.field, field, "{body}");
        }
    }

    #[test]
    fn responses_fields() {
        let mut p = GenerationParams::default();
        parse_responses_fields(&obj(r#"{"include":["message.output_text.logprobs"]}"#), &mut p).expect("valid");
        assert!(p.logprobs && p.top_logprobs.is_none());
        let mut p = GenerationParams::default();
        parse_responses_fields(
            &obj(r#"{"include":["reasoning.encrypted_content"],"top_logprobs":3}"#),
            &mut p,
        )
        .expect("valid");
        assert!(p.logprobs && p.top_logprobs == Some(3));
        for (body, field) in [
            (r#"{"include":"x"}"#, "include"),
            (r#"{"include":[1]}"#, "include[0]"),
            (r#"{"top_logprobs":21}"#, "top_logprobs"),
        ] {
            let e = parse_responses_fields(&obj(body), &mut GenerationParams::default()).expect_err(body);
            assert_eq!(e.field, field, "{body}");
        }
    }

    #[test]
    fn completions_logprobs_is_a_count_up_to_five() {
        let mut p = GenerationParams::default();
        parse_completions_field(&obj(r#"{"logprobs":0}"#), &mut p).expect("valid");
        assert!(p.logprobs && p.top_logprobs == Some(0));
        let mut p = GenerationParams::default();
        parse_completions_field(&obj(r#"{"logprobs":null}"#), &mut p).expect("valid");
        assert!(!p.logprobs);
        for body in [r#"{"logprobs":6}"#, r#"{"logprobs":true}"#, r#"{"logprobs":1.5}"#] {
            let e = parse_completions_field(&obj(body), &mut GenerationParams::default()).expect_err(body);
            assert_eq!(e.field, "logprobs");
        }
    }

    #[test]
    fn n_is_one_to_eight_and_seeds_follow_the_index() {
        assert_eq!(choices(&obj("{}")), Ok(1));
        assert_eq!(choices(&obj(r#"{"n":8}"#)), Ok(MAX_CHOICES));
        for body in [r#"{"n":0}"#, r#"{"n":9}"#, r#"{"n":"2"}"#, r#"{"n":-1}"#] {
            assert_eq!(choices(&obj(body)).expect_err(body).field, "n");
        }
        let p = GenerationParams {
            seed: Some(u64::MAX),
            ..GenerationParams::default()
        };
        assert_eq!(choice_params(&p, 0).seed, Some(u64::MAX));
        assert_eq!(choice_params(&p, 2).seed, Some(1));
        assert_eq!(choice_params(&GenerationParams::default(), 3).seed, None);
    }

    #[test]
    fn shapes() {
        let entries = [
            entry(b"Hi", -0.5),
            entry(&[0xe2, 0x80], -1.0),
            entry(" there".as_bytes(), -2.0),
        ];
        assert_eq!(chat_json(false, &entries), Value::Null);
        let chat = chat_json(true, &entries);
        assert_eq!(chat["content"][0]["token"], "Hi");
        assert_eq!(chat["content"][1]["bytes"], json!([0xe2, 0x80]));
        assert_eq!(chat["content"][2]["top_logprobs"][0]["logprob"], -2.0);
        assert_eq!(chat["refusal"], Value::Null);
        let legacy = completions_json(true, &entries, 0);
        assert_eq!(legacy["tokens"][0], "Hi");
        assert_eq!(legacy["token_logprobs"][2], -2.0);
        assert_eq!(legacy["top_logprobs"][0]["Hi"], -0.5);
        assert_eq!(legacy["text_offset"], json!([0, 2, 3]));
    }
}
