//! Reading request fields from a JSON object, each with a 400 that names the field. Every dialect's parser is built
//! from these, so a wrong type reads the same in all of them.

use serde_json::{Map, Value};

use crate::error::BadRequest;

/// More stop sequences than any client sends (OpenAI allows 4); a thousand would cost every decode step.
pub const MAX_STOP: usize = 16;

/// The body as a JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BadRequest::new("body", format!("not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(BadRequest::new("body", "must be a JSON object")),
    }
}

/// The non-empty `model` string every generation request names.
pub fn model(obj: &Map<String, Value>) -> Result<String, BadRequest> {
    match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(Value::String(_)) => Err(BadRequest::new("model", "must not be empty")),
        Some(_) => Err(BadRequest::new("model", "must be a string")),
        None => Err(BadRequest::new("model", "is required")),
    }
}

pub fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(BadRequest::new(name, "must be true or false")),
    }
}

pub fn opt_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(BadRequest::new(name, "must be a string")),
    }
}

pub fn opt_object<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a Map<String, Value>>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(BadRequest::new(name, "must be an object")),
    }
}

pub fn opt_u64(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None if n.as_i64().is_some() => Err(BadRequest::new(name, "must not be negative")),
            None => Err(BadRequest::new(name, "must be an integer")),
        },
        Some(_) => Err(BadRequest::new(name, "must be an integer")),
    }
}

/// A token count of at least 1 (`max_tokens` and its kin), saturated to `u32`.
pub fn opt_token_limit(obj: &Map<String, Value>, name: &str) -> Result<Option<u32>, BadRequest> {
    match opt_u64(obj, name)? {
        Some(0) => Err(BadRequest::new(name, "must be at least 1")),
        Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
        None => Ok(None),
    }
}

pub fn opt_u32(obj: &Map<String, Value>, name: &str) -> Result<Option<u32>, BadRequest> {
    Ok(opt_u64(obj, name)?.map(|k| u32::try_from(k).unwrap_or(u32::MAX)))
}

pub fn opt_f32_in(obj: &Map<String, Value>, name: &str, min: f32, max: f32) -> Result<Option<f32>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if v.is_finite() && (min..=max).contains(&v) {
                Ok(Some(v))
            } else {
                Err(BadRequest::new(name, format!("must be between {min} and {max}")))
            }
        }
        Some(_) => Err(BadRequest::new(name, "must be a number")),
    }
}

/// `top_p` in (0, 1].
pub fn opt_top_p(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, BadRequest> {
    let top_p = opt_f32_in(obj, name, 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(BadRequest::new(name, "must be greater than 0"));
    }
    Ok(top_p)
}

/// A seed: any integer (a negative one is taken as its two's complement, as llama.cpp's servers do).
pub fn opt_seed(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .ok_or_else(|| BadRequest::new(name, "must be an integer"))?,
        )),
        Some(_) => Err(BadRequest::new(name, "must be an integer")),
    }
}

/// Stop sequences: a string or an array of non-empty strings, at most [`MAX_STOP`].
pub fn stop_list(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, BadRequest> {
    let stop: Vec<String> = match obj.get(name) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(BadRequest::new(format!("{name}[{i}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(BadRequest::new(name, "must be a string or an array of strings")),
    };
    if stop.len() > MAX_STOP {
        return Err(BadRequest::new(name, format!("at most {MAX_STOP} sequences")));
    }
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(BadRequest::new(format!("{name}[{i}]"), "must not be empty"));
    }
    Ok(stop)
}
