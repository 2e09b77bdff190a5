//! Ollama (to be written).

/// The Ollama routes.
pub fn routes() -> axum::Router<crate::Api> {
    axum::Router::new()
}
