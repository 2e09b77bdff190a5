//! JSON-only HTTP shapes shared by every API surface (SYSTEM.md §11.1). These never cross the internal wire, so
//! they may use serde attributes postcard cannot carry (`untagged`, `skip_serializing_if`).

use serde::{Deserialize, Serialize};

/// The OpenAI error shape used everywhere: `{"error":{"message":…,"type":…,"code":…}}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: ErrorCode,
    /// The request field at fault, when there is one (OpenAI's `param`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// OpenAI sends a numeric status or a string code depending on the error.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Status(u16),
    Text(String),
}

impl ErrorResponse {
    pub fn new(message: impl Into<String>, kind: impl Into<String>, code: ErrorCode) -> Self {
        ErrorResponse {
            error: ErrorBody {
                message: message.into(),
                kind: kind.into(),
                code,
                param: None,
            },
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_matches_the_spec() {
        let e = ErrorResponse::new("no instance serves model X", "not_found", ErrorCode::Status(404));
        assert_eq!(
            serde_json::to_string(&e).ok(),
            Some(r#"{"error":{"message":"no instance serves model X","type":"not_found","code":404}}"#.to_owned())
        );
        let e = ErrorResponse::new(
            "stream ended early",
            "server_error",
            ErrorCode::Text("stream_incomplete".into()),
        )
        .with_param("messages");
        let json = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ErrorResponse>(&json).ok(), Some(e));
        assert!(json.contains(r#""code":"stream_incomplete""#) && json.contains(r#""param":"messages""#));
    }
}
