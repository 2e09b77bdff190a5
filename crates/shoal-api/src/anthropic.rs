//! Anthropic Messages (to be written).

/// The Anthropic routes.
pub fn routes() -> axum::Router<crate::Api> {
    axum::Router::new()
}
