#!/usr/bin/env python3
"""Drives a shoal node's OpenAI-compatible API with the official `openai` Python client (issue 5): Chat
Completions, and (issue 12) Responses and Completions.

Usage: openai_client.py http://127.0.0.1:PORT/v1

The node must serve `smollm2-135m` already. Prints one line per check; any failed check raises, so the exit status
is non-zero. Run by crates/shoal/tests/openai_client.rs.
"""

import json
import sys
import time
import urllib.request

import openai

MODEL = "smollm2-135m"
COUNT_PROMPT = "Count from 1 to 500, one number per line."


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def user(content):
    return [{"role": "user", "content": content}]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def main():
    base_url = sys.argv[1].rstrip("/")
    assert base_url.endswith("/v1"), f"the base URL ends with /v1: {base_url}"
    root = base_url[: -len("/v1")]
    # No retries: a request that fails must fail the check, not be hidden by a second try.
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    print(f"openai {openai.__version__} against {base_url}", flush=True)

    # (a) Non-streaming, greedy.
    prompt = user("What is the capital of France?")
    whole = client.chat.completions.create(model=MODEL, messages=prompt, temperature=0, max_tokens=24)
    assert whole.object == "chat.completion", whole
    assert whole.id.startswith("chatcmpl-"), whole.id
    assert len(whole.choices) == 1, whole
    choice = whole.choices[0]
    text = choice.message.content
    assert choice.message.role == "assistant", choice
    assert text, f"non-empty content: {whole}"
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    usage = whole.usage
    assert usage is not None, whole
    assert usage.prompt_tokens > 0, usage
    assert 0 < usage.completion_tokens <= 24, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 24, usage
    ok("(a) non-streaming chat", f"{text!r}, finish {choice.finish_reason}, usage {usage.model_dump()}")

    # (b) Streaming the same request: the deltas concatenate to the same text; a finish reason; the usage last.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=prompt,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finishes, usages, ids, count = [], [], [], set(), 0
    for chunk in stream:
        count += 1
        assert chunk.object == "chat.completion.chunk", chunk
        ids.add(chunk.id)
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason is not None:
                finishes.append(c.finish_reason)
    streamed = "".join(pieces)
    assert streamed == text, f"streamed {streamed!r} != non-streaming {text!r}"
    assert len(ids) == 1, f"one id for every chunk: {ids}"
    assert finishes == [choice.finish_reason], f"one finish reason, as without streaming: {finishes}"
    assert len(usages) == 1, f"one usage chunk: {usages}"
    assert usages[0].completion_tokens == usage.completion_tokens, (usages[0], usage)
    assert usages[0].prompt_tokens == usage.prompt_tokens, (usages[0], usage)
    ok("(b) streaming chat", f"{count} chunks, {len(pieces)} deltas, finish {finishes[0]}, usage last")

    # (c) A stop string ends the reply before it.
    reply = client.chat.completions.create(
        model=MODEL, messages=user(COUNT_PROMPT), temperature=0, max_tokens=64, stop=["5"]
    )
    content = reply.choices[0].message.content
    assert "5" not in content, content
    assert reply.choices[0].finish_reason == "stop", reply.choices[0]
    ok("(c) stop string", f"{content!r}, finish stop")

    # (d) A seed reproduces a sampled reply.
    def sampled():
        r = client.chat.completions.create(
            model=MODEL, messages=user("Tell me a short story."), temperature=0.9, seed=7, max_tokens=16
        )
        return r.choices[0].message.content

    first, second = sampled(), sampled()
    assert first, "a sampled reply"
    assert first == second, f"seed 7 twice: {first!r} != {second!r}"
    ok("(d) seed", f"seed 7 twice gives {first!r}")

    # (e) Cancel by closing the stream: the node drops the task and counts the client as gone.
    def closes_client_gone():
        for line in get(f"{root}/metrics").splitlines():
            if line.startswith('shoal_stream_closes_total{reason="client_gone"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    gone_before = closes_client_gone()
    stream = client.chat.completions.create(
        model=MODEL, messages=user(COUNT_PROMPT), temperature=0, max_tokens=2000, stream=True
    )
    read = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            read += 1
            if read == 5:
                break
    assert read == 5, f"5 content chunks before the end: {read}"
    stream.close()
    closed = time.monotonic()
    while True:
        tasks = json.loads(get(f"{root}/state"))["tasks"]
        if not tasks:
            break
        assert time.monotonic() - closed < 5, f"tasks left 5 s after the close: {tasks}"
        time.sleep(0.05)
    gone_after = time.monotonic() - closed
    gone = closes_client_gone()
    assert gone >= 1 and gone > gone_before, f"client_gone closes: {gone_before} → {gone}"
    ok("(e) cancel by closing the stream", f"no task {gone_after:.2f} s after close; client_gone closes {gone:g}")

    # (f) An unknown model is a 404.
    try:
        client.chat.completions.create(model="no-such-model", messages=user("x"))
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
        ok("(f) unknown model", f"NotFoundError: {e.message}")
    else:
        raise AssertionError("an unknown model raises NotFoundError")

    # (g) max_tokens = 0 is a 400.
    try:
        client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=0)
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        ok("(g) max_tokens=0", f"BadRequestError: {e.message}")
    else:
        raise AssertionError("max_tokens=0 raises BadRequestError")

    # (h) The model list names the model (as its card's id, with MODEL among its aliases), ready to serve.
    models = list(client.models.list())
    named = [m for m in models if m.id == MODEL or MODEL in (getattr(m, "aliases", None) or [])]
    assert len(named) == 1, [m.model_dump() for m in models]
    assert getattr(named[0], "ready", None) is True, named[0].model_dump()
    ok("(h) models.list", f"{len(models)} models; {MODEL} is {named[0].id!r}, ready")

    responses_checks(client)
    completions_checks(client, chat_prompt_tokens=usage.prompt_tokens)

    print("all checks passed", flush=True)


def responses_checks(client):
    """OpenAI Responses (issue 12): non-streaming, incomplete, streaming raw and through the SDK's helper, errors."""
    question = "What is the capital of France?"

    # (i) Non-streaming: the Response object, `output_text`, usage, echoed fields.
    whole = client.responses.create(
        model=MODEL,
        input=question,
        instructions="Answer briefly.",
        temperature=0,
        max_output_tokens=24,
        metadata={"suite": "shoal"},
    )
    assert whole.object == "response", whole
    assert whole.id.startswith("resp_"), whole.id
    assert whole.status in ("completed", "incomplete"), whole.status
    assert whole.error is None, whole.error
    text = whole.output_text
    assert text, f"non-empty output_text: {whole}"
    assert len(whole.output) == 1 and whole.output[0].type == "message", whole.output
    assert whole.output[0].role == "assistant", whole.output[0]
    assert whole.output[0].id.startswith("msg_"), whole.output[0].id
    usage = whole.usage
    assert usage.input_tokens > 0, usage
    assert 0 < usage.output_tokens <= 24, usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens, usage
    assert usage.input_tokens_details.cached_tokens == 0, usage
    assert usage.output_tokens_details.reasoning_tokens == 0, usage
    assert whole.metadata == {"suite": "shoal"}, whole.metadata
    assert whole.instructions == "Answer briefly.", whole.instructions
    assert whole.max_output_tokens == 24, whole.max_output_tokens
    assert whole.temperature == 0, whole.temperature
    if whole.status == "incomplete":
        assert whole.incomplete_details.reason == "max_output_tokens", whole.incomplete_details
        assert usage.output_tokens == 24, usage
    else:
        assert whole.incomplete_details is None, whole.incomplete_details
    ok("(i) responses.create", f"{text!r}, status {whole.status}, usage {usage.model_dump()}")

    # (j) A small max_output_tokens: `incomplete`, for that reason, with exactly that many tokens.
    short = client.responses.create(model=MODEL, input=COUNT_PROMPT, temperature=0, max_output_tokens=4)
    assert short.status == "incomplete", short
    assert short.incomplete_details.reason == "max_output_tokens", short.incomplete_details
    assert short.usage.output_tokens == 4, short.usage
    assert short.output_text, short
    assert short.output[0].status == "incomplete", short.output[0]
    ok("(j) responses incomplete", f"{short.output_text!r}, reason max_output_tokens, 4 tokens")

    # (k) Streaming the request of (i): every event in order, sequence numbers from 0, deltas == the final text.
    stream = client.responses.create(
        model=MODEL,
        input=question,
        instructions="Answer briefly.",
        temperature=0,
        max_output_tokens=24,
        stream=True,
    )
    kinds, sequence, deltas, final, done_text = [], [], [], None, None
    for event in stream:
        kinds.append(event.type)
        sequence.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            assert event.output_index == 0 and event.content_index == 0, event
            assert event.item_id.startswith("msg_"), event
            deltas.append(event.delta)
        elif event.type == "response.output_text.done":
            done_text = event.text
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert sequence == list(range(len(sequence))), f"sequence numbers count from 0: {sequence}"
    terminal = "response.completed" if whole.status == "completed" else "response.incomplete"
    expected = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        terminal,
    ]
    assert kinds == expected, f"events in order: {kinds}"
    streamed = "".join(deltas)
    assert final is not None, kinds
    assert streamed == final.output_text == done_text, (streamed, final.output_text, done_text)
    assert streamed == text, f"streamed {streamed!r} != non-streaming {text!r}"
    assert final.usage.output_tokens == usage.output_tokens, (final.usage, usage)
    assert final.usage.input_tokens == usage.input_tokens, (final.usage, usage)
    ok("(k) responses streaming", f"{len(kinds)} events, {len(deltas)} deltas, {terminal}")

    # (l) The SDK's streaming helper accumulates the same text and returns the completed Response.
    with client.responses.stream(
        model=MODEL, input="Say hello.", temperature=0, max_output_tokens=200
    ) as helper:
        snapshots = [e.snapshot for e in helper if e.type == "response.output_text.delta"]
        final = helper.get_final_response()
    assert final.status == "completed", final
    assert snapshots and snapshots[-1] == final.output_text, (snapshots[-1:], final.output_text)
    ok("(l) responses.stream helper", f"{final.output_text!r} in {len(snapshots)} deltas")

    # (m) Errors: an unknown model is a 404; a bad field is a 400 naming it.
    try:
        client.responses.create(model="no-such-model", input="x")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
    else:
        raise AssertionError("an unknown model raises NotFoundError")
    for bad, field in (({"max_output_tokens": 0}, "max_output_tokens"), ({"store": True}, "store")):
        try:
            client.responses.create(model=MODEL, input="x", **bad)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and field in e.message, e
        else:
            raise AssertionError(f"{bad} raises BadRequestError")
    ok("(m) responses errors", "unknown model NotFoundError; max_output_tokens=0, store=True BadRequestError")


def completions_checks(client, chat_prompt_tokens):
    """OpenAI Completions (issue 12): the prompt as is, non-streaming and streaming, the default length, errors."""
    # A text to continue (a bare question gets an end-of-text token at once from a chat-tuned model).
    prompt = "The capital of France is"

    # (n) Non-streaming: no chat template (fewer prompt tokens than the chat request), text, usage.
    whole = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12)
    assert whole.object == "text_completion", whole
    assert whole.id.startswith("cmpl-"), whole.id
    assert len(whole.choices) == 1, whole
    choice = whole.choices[0]
    assert choice.text, whole
    assert choice.index == 0 and choice.logprobs is None, choice
    assert choice.finish_reason in ("stop", "length"), choice
    usage = whole.usage
    assert 0 < usage.prompt_tokens < chat_prompt_tokens, (usage, chat_prompt_tokens)
    assert 0 < usage.completion_tokens <= 12, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 12, usage
    ok("(n) completions.create", f"{choice.text!r}, finish {choice.finish_reason}, usage {usage.model_dump()}")

    # (o) OpenAI's default max_tokens for Completions is 16: a long answer stops there with `length`.
    default = client.completions.create(model=MODEL, prompt=COUNT_PROMPT + "\n1\n2\n", temperature=0)
    assert default.choices[0].finish_reason == "length", default
    assert default.usage.completion_tokens == 16, default.usage
    short = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3, short
    ok("(o) completions length", "16 tokens by default, 3 with max_tokens=3, finish length")

    # (p) Streaming the request of (n): pieces join to the same text; one finish reason; usage last.
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finishes, usages, ids = [], [], [], set()
    for chunk in stream:
        assert chunk.object == "text_completion", chunk
        ids.add(chunk.id)
        if chunk.usage is not None:
            assert not chunk.choices, chunk
            usages.append(chunk.usage)
        for c in chunk.choices:
            pieces.append(c.text)
            if c.finish_reason is not None:
                finishes.append(c.finish_reason)
    streamed = "".join(pieces)
    assert streamed == choice.text, f"streamed {streamed!r} != non-streaming {choice.text!r}"
    assert len(ids) == 1, ids
    assert finishes == [choice.finish_reason], finishes
    assert len(usages) == 1 and usages[0].completion_tokens == usage.completion_tokens, (usages, usage)
    ok("(p) completions streaming", f"{len(pieces)} chunks, finish {finishes[0]}, usage last")

    # (q) Errors: an unknown model is a 404; a bad field is a 400 naming it.
    try:
        client.completions.create(model="no-such-model", prompt="x")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
    else:
        raise AssertionError("an unknown model raises NotFoundError")
    for bad, field in (({"echo": True}, "echo"), ({"prompt": ["a", "b"]}, "prompt"), ({"n": 9}, "n")):
        kwargs = {"model": MODEL, "prompt": "x", **bad}
        try:
            client.completions.create(**kwargs)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and f"`{field}`" in e.message, e
        else:
            raise AssertionError(f"{bad} raises BadRequestError")
    ok("(q) completions errors", "unknown model NotFoundError; echo, two prompts, n=9 BadRequestError")


if __name__ == "__main__":
    main()
