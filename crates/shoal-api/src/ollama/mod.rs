//! Ollama's API (issue 12 item 4), served at `/api/*` (where the official clients look by default) and at
//! `/ollama/api/*` (exo's paths): `POST chat` and `generate` ([`reply`]: NDJSON streaming by default, one JSON object
//! otherwise), `GET tags`, `GET ps`, `POST show`, `GET version`, `POST pull` ([`models`]), and `GET`/`HEAD /`
//! ("Ollama is running", which clients probe before anything else). Errors are `{"error":"…"}`
//! ([`Dialect::Ollama`]); a stream that fails after its first line ends with `{"error":"…","done":true}`.

pub mod models;
pub mod reply;
pub mod request;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use shoal_types::chunk::FinishReason;
use shoal_types::{ModelCard, ModelId, State};

use crate::Api;
use crate::error::{ApiError, Dialect};

/// The route prefixes: the official clients' default host, and exo's.
const PREFIXES: [&str; 2] = ["/api", "/ollama/api"];

/// The Ollama routes.
pub fn routes() -> Router<Api> {
    // `GET /` and `HEAD /` are routed by the dashboard, which answers clients that do not ask for HTML as here.
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/chat"), post(reply::chat))
            .route(&format!("{prefix}/generate"), post(reply::generate))
            .route(&format!("{prefix}/tags"), get(models::tags))
            .route(&format!("{prefix}/ps"), get(models::ps))
            .route(&format!("{prefix}/show"), post(models::show))
            .route(&format!("{prefix}/version"), get(models::version))
            .route(&format!("{prefix}/pull"), post(models::pull));
    }
    router
}

/// An error in Ollama's shape.
pub fn error_response(e: &ApiError) -> Response {
    Dialect::Ollama.error_response(e)
}

/// Ollama's 404 for a model it does not know, worded as Ollama words it (some clients match on "not found").
pub fn model_not_found(name: &str) -> ApiError {
    ApiError {
        message: format!("model '{name}' not found"),
        ..ApiError::model_not_found(name)
    }
}

/// The card a request names: its id or an alias, with Ollama's default tag `:latest` allowed after either
/// (`smollm2-135m:latest`), since Ollama clients add it to bare names.
pub fn resolve(state: &State, name: &str) -> Result<ModelCard, ApiError> {
    let found = shoal_core::placement::resolve_card(state, &ModelId::new(name)).or_else(|| {
        name.strip_suffix(":latest")
            .and_then(|bare| shoal_core::placement::resolve_card(state, &ModelId::new(bare)))
    });
    found.ok_or_else(|| model_not_found(name))
}

/// `done_reason` as Ollama writes it.
pub fn done_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::StopSequence(_) | FinishReason::ContentFilter => "stop",
    }
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

const MICROS_PER_SECOND: u64 = 1_000_000;
const SECONDS_PER_DAY: u64 = 86_400;

/// RFC 3339 in UTC with microseconds (`2026-12-05T13:49:10.123456Z`), as Ollama writes `created_at`; microseconds
/// because Python's `datetime` (which the official client parses `modified_at` with) holds no finer.
pub fn rfc3339(unix_micros: u64) -> String {
    let secs = unix_micros / MICROS_PER_SECOND;
    let micros = unix_micros % MICROS_PER_SECOND;
    let (days, of_day) = (secs / SECONDS_PER_DAY, secs % SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    const DAYS_PER_ERA: u64 = 146_097;
    // Shifted so eras start on 0000-03-01: leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / DAYS_PER_ERA;
    let day_of_era = z % DAYS_PER_ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (DAYS_PER_ERA - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The size in parameters as Ollama shows it (`135M`, `7B`), read from the model's name, where it says (cards do
/// not record a parameter count).
pub fn parameter_size(card: &ModelCard) -> String {
    let name = card.id.as_str().rsplit('/').next().unwrap_or_default();
    name.split(['-', '_', '.'])
        .find_map(|part| {
            let (digits, unit) = part.split_at(part.len().checked_sub(1)?);
            let unit = unit.to_ascii_uppercase();
            let numeric = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
            (numeric && matches!(unit.as_str(), "M" | "B" | "K")).then(|| format!("{digits}{unit}"))
        })
        .unwrap_or_default()
}

/// `details` of a model, as tags, ps and show write it.
pub fn details(card: &ModelCard) -> Value {
    let format = match card.format {
        shoal_types::card::ModelFormat::Gguf => "gguf",
        shoal_types::card::ModelFormat::Safetensors => "safetensors",
    };
    json!({
        "parent_model": "",
        "format": format,
        "family": card.family,
        "families": [card.family],
        "parameter_size": parameter_size(card),
        "quantization_level": card.quantization,
    })
}

/// The card's weights digest as Ollama writes one (`sha256:<hex>` is the layer form; tags list the bare hex): the
/// sha256 of its first file, where the card lists one.
pub fn digest(card: &ModelCard) -> Option<String> {
    card.sources.iter().find_map(|s| {
        let file = s.files.first()?;
        s.sha256.get(file).cloned()
    })
}

/// A 400 for a `num_ctx` larger than the model's context.
pub fn check_num_ctx(num_ctx: Option<u64>, card: &ModelCard) -> Result<(), ApiError> {
    match num_ctx {
        Some(n) if n > u64::from(card.context_length) => Err(ApiError::bad_request(
            "options.num_ctx",
            format!(
                "{n} is more than this model's context of {} tokens",
                card.context_length
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn card() -> ModelCard {
        shoal_types::card::find_card(&shoal_types::card::builtin_cards(), "smollm2-135m")
            .cloned()
            .expect("built-in card")
    }

    #[test]
    fn rfc3339_writes_utc_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789
        assert_eq!(rfc3339(951_827_696_789_000), "2000-02-29T12:34:56.789000Z");
        assert_eq!(rfc3339(1_796_478_550_000_001), "2026-12-05T13:49:10.000001Z");
        assert_eq!(rfc3339(4_102_444_799_000_000), "2099-12-31T23:59:59.000000Z");
        assert_eq!(rfc3339(4_107_542_400_000_000), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn cards_become_ollama_details() {
        let card = card();
        assert_eq!(parameter_size(&card), "135M");
        let d = details(&card);
        assert_eq!(d["format"], "gguf");
        assert_eq!(d["family"], "llama");
        assert_eq!(d["quantization_level"], "Q4_1");
        assert_eq!(
            digest(&card).as_deref(),
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        );
        let gemma = shoal_types::card::find_card(&shoal_types::card::builtin_cards(), "gemma3-270m")
            .cloned()
            .expect("built-in card");
        assert_eq!(parameter_size(&gemma), "270M");
    }

    #[test]
    fn names_resolve_with_or_without_the_latest_tag_and_num_ctx_is_bounded() {
        let state = State::default();
        let card = card();
        for name in [
            "smollm2-135m",
            "smollm2-135m:latest",
            "HuggingFaceTB/SmolLM2-135M-Instruct:latest",
        ] {
            assert_eq!(resolve(&state, name).map(|c| c.id), Ok(card.id.clone()), "{name}");
        }
        let missing = resolve(&state, "nope:7b").expect_err("unknown");
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(
            Dialect::Ollama.error_body(&missing),
            json!({"error": "model 'nope:7b' not found"})
        );
        assert!(check_num_ctx(Some(u64::from(card.context_length)), &card).is_ok());
        assert!(check_num_ctx(None, &card).is_ok());
        let over = check_num_ctx(Some(u64::from(card.context_length) + 1), &card).expect_err("over");
        assert_eq!(over.param.as_deref(), Some("options.num_ctx"));
        assert_eq!(done_reason(FinishReason::Length), "length");
        assert_eq!(done_reason(FinishReason::Stop), "stop");
    }
}
