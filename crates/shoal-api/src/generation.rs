//! The path every dialect shares between parsing its request and writing its answer (SYSTEM.md §11.2):
//! [`start`] resolves the model, fills the card's defaults, refuses a prompt the context cannot hold, registers the
//! stream and sends its command; then either [`collect`] gathers the whole answer (non-streaming: nothing is written
//! until it is complete) or [`stream`] writes it as it comes through the dialect's [`Encoder`].
//!
//! A streaming response sends its status line at the first chunk, at observation in State, or after
//! [`HEADERS_AFTER`], whichever comes first; a stream that closes before then is a real HTTP error in the dialect's
//! shape, and one that closes later ends with the dialect's in-band error and terminator. Dropping the response body
//! (the client went away) drops the [`StreamHandle`], which cancels the task.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::stream;
use shoal_types::ModelCard;
use shoal_types::chunk::{Chunk, FinishReason, Usage};
use shoal_types::params::{GenerationParams, MAX_PARAMS_BYTES, ToolCall};

use crate::Api;
use crate::error::{ApiError, Dialect};
use crate::logprobs::{TokenLogprob, choice_params};
use crate::prompts::Count;
use crate::streams::{End, StreamEvent, StreamHandle};

/// A streaming response starts at the latest this long after registration (§11.2 step 4).
pub const HEADERS_AFTER: Duration = Duration::from_secs(1);
/// After this much silence a stream writes its dialect's keep-alive, so proxies and clients do not time it out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A registered generation.
pub struct Started {
    pub handle: StreamHandle,
    /// The model's card (the request's model resolved).
    pub card: ModelCard,
    /// The prompt's length in tokens, where this node holds the model and could count it.
    pub prompt_tokens: Option<usize>,
}

/// §11.2 steps 1–2 for a parsed request: unknown model → 404, prompt over the context → 400, too large → 413;
/// otherwise the stream is registered and its command sent.
pub async fn start(api: &Api, mut params: GenerationParams) -> Result<Started, ApiError> {
    if api.streams.is_stopping() {
        return Err(ApiError::shutting_down());
    }
    if let Some(fault) = api.cluster.view().status.storage {
        // A node that cannot write takes no new work (issue 15 item 4): another node of the cluster can.
        return Err(ApiError::storage_failed(&fault.error));
    }
    if let Some(limit) = api.streams.full() {
        return Err(ApiError::too_many_streams(limit));
    }
    let card = {
        let state = api.cluster.view().state;
        shoal_core::placement::resolve_card(&state, &params.model)
            .ok_or_else(|| ApiError::model_not_found(params.model.as_str()))?
    };
    fill_defaults(&mut params, &card);
    // The prompt and one generated token must fit the context.
    let room = (card.context_length as usize).saturating_sub(1);
    let prompt_tokens = api.prompts.count(&card, &params, room).await?;
    wait_until_servable(api, &card.id).await?;
    let prompt_tokens = match prompt_tokens {
        Some(Count::AtLeast(n)) => return Err(ApiError::context_length_exceeded(n, card.context_length)),
        Some(Count::Exactly(n)) => Some(n),
        None => None,
    };
    let encoded = shoal_types::codec::encode(&params)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if encoded > MAX_PARAMS_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request is {encoded} bytes once encoded; the limit is {MAX_PARAMS_BYTES}"),
        ));
    }
    let handle = api.streams.open_generation(params)?;
    Ok(Started {
        handle,
        card,
        prompt_tokens,
    })
}

/// [`start`] for each of a request's `n` choices (issue 14 item 6): `n` tasks with the same prompt, each with its
/// own seed ([`choice_params`]), sent together so the instance's runner admits them into the same batch (rank 0
/// batches whatever it holds; `n` ≤ `max_seqs` runs them in the same decode steps). Separate tasks reuse every path
/// one generation has (registry, cancel, failure) with no new machinery; dropping the handles cancels all of them.
pub async fn start_choices(api: &Api, params: GenerationParams, n: u32) -> Result<Vec<Started>, ApiError> {
    let mut started = Vec::with_capacity(n as usize);
    for index in 0..n.max(1) {
        // An error drops the choices already started, which cancels their tasks.
        started.push(start(api, choice_params(&params, index)).await?);
    }
    Ok(started)
}

/// [`collect`] for every choice at once, in index order; the first failure fails the request (and the handles the
/// caller drops cancel the rest).
pub async fn collect_choices(handles: &mut [StreamHandle]) -> Result<Vec<Completion>, ApiError> {
    futures_util::future::try_join_all(handles.iter_mut().map(collect)).await
}

/// Usage of a request's choices together: the prompt once (as OpenAI counts it), completions summed.
pub fn summed_usage(usages: impl IntoIterator<Item = Usage>) -> Usage {
    let mut sum = Usage::default();
    for (i, u) in usages.into_iter().enumerate() {
        if i == 0 {
            sum.prompt_tokens = u.prompt_tokens;
            sum.cached_tokens = u.cached_tokens;
        }
        sum.completion_tokens += u.completion_tokens;
        sum.reasoning_tokens += u.reasoning_tokens;
    }
    sum.total_tokens = sum.prompt_tokens + sum.completion_tokens;
    sum
}

/// Waits, reconciled from State, until an instance of `model` serves (or nothing of it is placed: the master then
/// answers), for at most the stream TTL: a model still downloading or loading is a 503 `model_loading` naming where
/// each stage stands, a failed deployment a 503 `model_failed` with its reason, never a stream that stays silent.
async fn wait_until_servable(api: &Api, model: &shoal_types::ModelId) -> Result<(), ApiError> {
    use shoal_core::readiness::{Readiness, readiness};
    let mut views = api.cluster.watch();
    let deadline = tokio::time::Instant::now() + api.streams.ttl();
    loop {
        let now = readiness(&views.borrow_and_update().state, model);
        let detail = match now {
            Readiness::Serving | Readiness::Unplaced => return Ok(()),
            Readiness::Failed { reason } => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_failed", reason));
            }
            Readiness::NotReady { detail } => detail,
        };
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return Err(ApiError::stopping());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_loading", detail));
            }
        }
    }
}

/// Resolves the model to its card's id and fills unset sampling fields from the card's defaults (§2.3).
pub fn fill_defaults(params: &mut GenerationParams, card: &ModelCard) {
    params.model = card.id.clone();
    let d = &card.sampling_defaults;
    let mode = match params.enable_thinking {
        Some(true) => d.thinking.as_ref(),
        Some(false) => d.non_thinking.as_ref(),
        None => None,
    };
    macro_rules! fill {
        ($field:ident) => {
            if params.$field.is_none() {
                params.$field = mode.and_then(|m| m.$field).or(d.$field);
            }
        };
    }
    fill!(temperature);
    fill!(top_p);
    fill!(top_k);
    fill!(min_p);
    fill!(repetition_penalty);
    fill!(presence_penalty);
    fill!(frequency_penalty);
}

/// A whole answer.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    /// Text the model marked as thinking (reasoning models), kept apart from `text`.
    pub reasoning: String,
    pub finish: Option<FinishReason>,
    /// The calls the answer ended in (then `finish` is `None`: each dialect names that end its own way).
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// When the first token arrived: where the prompt's evaluation ended (Ollama reports the two durations).
    pub first_token_at: Option<std::time::Instant>,
    /// Each generated token's, when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprob>,
}

impl Completion {
    pub fn finish(&self) -> FinishReason {
        self.finish.unwrap_or(FinishReason::Stop)
    }
}

/// Waits for the whole answer (non-streaming): nothing has been written, so every failure is a real HTTP error.
pub async fn collect(handle: &mut StreamHandle) -> Result<Completion, ApiError> {
    let mut done = Completion::default();
    loop {
        match handle.next().await {
            Some(StreamEvent::Observed) => {}
            Some(StreamEvent::Chunk(Chunk::Token {
                text,
                is_thinking,
                finish,
                usage,
                logprob,
                top_logprobs,
                token_bytes,
                ..
            })) => {
                done.first_token_at.get_or_insert_with(std::time::Instant::now);
                if let Some(logprob) = logprob {
                    done.logprobs.push(TokenLogprob {
                        bytes: token_bytes,
                        logprob,
                        top: top_logprobs,
                    });
                }
                if is_thinking {
                    done.reasoning.push_str(&text);
                } else {
                    done.text.push_str(&text);
                }
                done.finish = finish.or(done.finish);
                if let Some(usage) = usage {
                    done.usage = usage;
                }
            }
            Some(StreamEvent::Chunk(Chunk::ToolCall { calls, usage, .. })) => {
                done.first_token_at.get_or_insert_with(std::time::Instant::now);
                done.tool_calls = calls;
                if let Some(usage) = usage {
                    done.usage = usage;
                }
            }
            Some(StreamEvent::Chunk(_)) => {}
            Some(StreamEvent::End(End::Finished)) => return Ok(done),
            Some(StreamEvent::End(End::Closed(reason))) => return Err(ApiError::from_close(&reason)),
            None => return Err(ApiError::stopping()),
        }
    }
}

/// One unit a dialect writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A server-sent event: `event: <name>` (when named) and `data: <data>`.
    Event { name: Option<&'static str>, data: String },
    /// An SSE comment line (`: <text>`), ignored by clients.
    Comment(&'static str),
    /// One line of newline-delimited JSON.
    Line(String),
}

impl Frame {
    pub fn data(data: impl Into<String>) -> Frame {
        Frame::Event {
            name: None,
            data: data.into(),
        }
    }

    pub fn event(name: &'static str, data: impl Into<String>) -> Frame {
        Frame::Event {
            name: Some(name),
            data: data.into(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Event { name, data } => {
                if let Some(name) = name {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'\n');
                }
                // A data field cannot hold a newline: each line is its own `data:` (JSON text never has one).
                for line in data.split('\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                out.push(b'\n');
            }
            Frame::Comment(text) => {
                out.extend_from_slice(b": ");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            Frame::Line(line) => {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// How a stream is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson` (Ollama).
    NdJson,
}

/// A dialect's streaming wire format: what it writes at each step of a stream. Each method appends frames to `out`.
pub trait Encoder: Send + 'static {
    fn wire(&self) -> Wire;
    fn dialect(&self) -> Dialect;
    /// The frames that open the stream, written with the headers (OpenAI's role delta, Anthropic's `message_start`).
    fn open(&mut self, out: &mut Vec<Frame>);
    /// Generated text (`thinking`: the model marked it as reasoning).
    fn text(&mut self, text: &str, thinking: bool, out: &mut Vec<Frame>);
    /// One generated token with its logprobs (requests that asked for them) and the text it made safe to show
    /// (possibly empty). Dialects without logprobs write the text alone.
    fn token(&mut self, text: &str, thinking: bool, logprob: &TokenLogprob, out: &mut Vec<Frame>) {
        let _ = logprob;
        if !text.is_empty() {
            self.text(text, thinking, out);
        }
    }
    /// The choice the next calls are about (`n` > 1: OpenAI's `choices[].index`); dialects with one choice ignore it.
    fn choice(&mut self, index: usize) {
        let _ = index;
    }
    /// The final chunk's finish reason and usage.
    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>);
    /// The final chunk when the answer ended in tool calls (instead of [`Encoder::finish`]): the calls as the dialect
    /// writes them, then its end (`finish_reason: "tool_calls"`, `stop_reason: "tool_use"`).
    fn tool_calls(&mut self, calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>);
    /// After the final chunk: the terminator (OpenAI's `[DONE]`), if the dialect has one beyond `finish`'s frames.
    fn done(&mut self, out: &mut Vec<Frame>);
    /// The stream failed after its headers were sent: the dialect's in-band error and terminator.
    fn fail(&mut self, error: &ApiError, out: &mut Vec<Frame>);
    /// What to write after [`KEEP_ALIVE`] of silence; `None` writes nothing.
    fn keep_alive(&self) -> Option<Frame> {
        match self.wire() {
            Wire::Sse => Some(Frame::Comment("keep-alive")),
            Wire::NdJson => None,
        }
    }
}

/// Writes a registered generation as a stream in `encoder`'s format (§11.2 step 4).
pub async fn stream(handle: StreamHandle, encoder: impl Encoder) -> Response {
    stream_choices(vec![handle], encoder).await
}

/// Writes the `n` generations of one request (its choices, in index order) as one stream: their chunks interleave
/// as they come, each after [`Encoder::choice`]; it finishes once every choice has, and a choice that fails fails
/// the whole stream (the others' handles drop with it, which cancels their tasks, as a disconnect does).
pub async fn stream_choices(handles: Vec<StreamHandle>, encoder: impl Encoder) -> Response {
    let total = handles.len();
    let mut choices = Choices::new(handles);
    let first = match tokio::time::timeout(HEADERS_AFTER, choices.next()).await {
        Ok(Some((_, StreamEvent::End(End::Closed(reason))))) => {
            return encoder.dialect().error_response(&ApiError::from_close(&reason));
        }
        Ok(None) => return encoder.dialect().error_response(&ApiError::stopping()),
        Ok(Some(event)) => Some(event),
        Err(_) => None,
    };
    for handle in &choices.handles {
        handle.mark_bytes_sent();
    }
    let wire = encoder.wire();
    let mut writer = Writer {
        choices,
        first,
        queue: VecDeque::new(),
        done: false,
        finished: 0,
        total,
        encoder,
    };
    let mut opening = Vec::new();
    writer.encoder.open(&mut opening);
    writer.queue.extend(opening);
    let body = stream::unfold(writer, |mut w| async move {
        loop {
            if !w.queue.is_empty() {
                // Everything ready goes out in one write.
                let mut bytes = Vec::new();
                for frame in w.queue.drain(..) {
                    frame.write(&mut bytes);
                }
                return Some((Ok::<_, Infallible>(Bytes::from(bytes)), w));
            }
            if w.done {
                return None;
            }
            let next = match w.first.take() {
                Some(event) => Some(event),
                None => match tokio::time::timeout(KEEP_ALIVE, w.choices.next()).await {
                    Ok(event) => event,
                    Err(_) => {
                        if let Some(frame) = w.encoder.keep_alive() {
                            w.queue.push_back(frame);
                        }
                        continue;
                    }
                },
            };
            w.push(next);
        }
    });
    let content_type = match wire {
        Wire::Sse => "text/event-stream",
        Wire::NdJson => "application/x-ndjson",
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The registered generations of one request's choices, read as one sequence of `(choice, event)`.
pub struct Choices {
    handles: Vec<StreamHandle>,
    /// Per choice: its stream has not ended yet.
    live: Vec<bool>,
}

impl Choices {
    pub fn new(handles: Vec<StreamHandle>) -> Self {
        let live = vec![true; handles.len()];
        Choices { handles, live }
    }

    /// The next event of any live choice; `None` once every choice has ended, or when the node stops. Cancel-safe
    /// (each handle's `next` is), so it can race a timeout.
    pub async fn next(&mut self) -> Option<(usize, StreamEvent)> {
        let Choices { handles, live } = self;
        let waiting: Vec<_> = handles
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .map(|(i, h)| Box::pin(async move { (i, h.next().await) }))
            .collect();
        if waiting.is_empty() {
            return None;
        }
        let ((i, event), _, _) = futures_util::future::select_all(waiting).await;
        match event {
            Some(StreamEvent::End(_)) => live[i] = false,
            Some(_) => {}
            None => return None,
        }
        event.map(|e| (i, e))
    }
}

struct Writer<E> {
    choices: Choices,
    /// The event that arrived while the handler decided to answer.
    first: Option<(usize, StreamEvent)>,
    queue: VecDeque<Frame>,
    done: bool,
    /// Choices finished, of `total`: the terminator follows the last.
    finished: usize,
    total: usize,
    encoder: E,
}

impl<E: Encoder> Writer<E> {
    fn push(&mut self, event: Option<(usize, StreamEvent)>) {
        let mut out = Vec::new();
        let event = event.map(|(index, event)| {
            self.encoder.choice(index);
            event
        });
        match event {
            Some(StreamEvent::Observed) | Some(StreamEvent::Chunk(Chunk::PrefillProgress { .. })) => {}
            Some(StreamEvent::Chunk(Chunk::Token {
                text,
                is_thinking,
                finish,
                usage,
                logprob,
                top_logprobs,
                token_bytes,
                ..
            })) => {
                if let Some(logprob) = logprob {
                    let lp = TokenLogprob {
                        bytes: token_bytes,
                        logprob,
                        top: top_logprobs,
                    };
                    self.encoder.token(&text, is_thinking, &lp, &mut out);
                } else if !text.is_empty() {
                    self.encoder.text(&text, is_thinking, &mut out);
                }
                if let Some(finish) = finish {
                    self.encoder.finish(finish, &usage.unwrap_or_default(), &mut out);
                }
            }
            Some(StreamEvent::Chunk(Chunk::ToolCall { calls, usage, .. })) => {
                self.encoder.tool_calls(&calls, &usage.unwrap_or_default(), &mut out);
            }
            // An error chunk closes the stream in the registry, which sends `End::Closed` next.
            Some(StreamEvent::Chunk(Chunk::Error { .. })) => {}
            Some(StreamEvent::End(End::Finished)) => {
                self.finished += 1;
                if self.finished >= self.total {
                    self.encoder.done(&mut out);
                    self.done = true;
                }
            }
            Some(StreamEvent::End(End::Closed(reason))) => {
                if reason.writes_response() {
                    self.encoder.fail(&ApiError::from_close(&reason), &mut out);
                }
                self.done = true;
            }
            None => self.done = true,
        }
        self.queue.extend(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(frames: &[Frame]) -> String {
        let mut out = Vec::new();
        for f in frames {
            f.write(&mut out);
        }
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn frames_are_written_as_their_wire_defines() {
        assert_eq!(written(&[Frame::data("[DONE]")]), "data: [DONE]\n\n");
        assert_eq!(
            written(&[Frame::event("ping", r#"{"type":"ping"}"#)]),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
        assert_eq!(written(&[Frame::data("a\nb")]), "data: a\ndata: b\n\n");
        assert_eq!(written(&[Frame::Comment("keep-alive")]), ": keep-alive\n\n");
        assert_eq!(written(&[Frame::Line("{\"done\":true}".into())]), "{\"done\":true}\n");
    }
}
