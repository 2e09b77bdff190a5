#!/usr/bin/env python3
"""Drives a shoal node's Anthropic Messages API with the official `anthropic` Python client (issue 12).

Usage: anthropic_client.py http://127.0.0.1:PORT

The node must serve `smollm2-135m` already. Prints one line per check; any failed check raises, so the exit status
is non-zero. Run by crates/shoal/tests/anthropic_client.rs.
"""

import sys

import anthropic

MODEL = "smollm2-135m"
COUNT_PROMPT = "Count from 1 to 500, one number per line."
SYSTEM = "You are a helpful assistant."


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def user(content):
    return [{"role": "user", "content": content}]


def main():
    base_url = sys.argv[1].rstrip("/")
    # No retries: a request that fails must fail the check, not be hidden by a second try. Any key: the node has none.
    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    print(f"anthropic {anthropic.__version__} against {base_url}", flush=True)

    # (a) Non-streaming, greedy, with a system prompt as blocks.
    prompt = user("What is the capital of France?")
    system = [{"type": "text", "text": SYSTEM}]
    whole = client.messages.create(model=MODEL, system=system, messages=prompt, temperature=0, max_tokens=24)
    assert whole.type == "message", whole
    assert whole.id.startswith("msg_"), whole.id
    assert whole.role == "assistant", whole
    assert whole.model == MODEL, whole.model
    assert len(whole.content) == 1 and whole.content[0].type == "text", whole.content
    text = whole.content[0].text
    assert text, f"non-empty content: {whole}"
    assert whole.stop_reason in ("end_turn", "max_tokens"), whole.stop_reason
    assert whole.stop_sequence is None, whole
    usage = whole.usage
    assert usage.input_tokens > 0, usage
    assert 0 < usage.output_tokens <= 24, usage
    if whole.stop_reason == "max_tokens":
        assert usage.output_tokens == 24, usage
    ok("(a) messages.create", f"{text!r}, stop {whole.stop_reason}, usage {usage.model_dump(exclude_none=True)}")

    # (b) The SDK's streaming helper: the text stream joins to the final message's text, which is (a)'s.
    with client.messages.stream(
        model=MODEL, system=system, messages=prompt, temperature=0, max_tokens=24
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text, f"{streamed!r} != final {final.content[0].text!r}"
    assert streamed == text, f"streamed {streamed!r} != non-streaming {text!r}"
    assert final.id.startswith("msg_"), final.id
    assert final.stop_reason == whole.stop_reason, (final.stop_reason, whole.stop_reason)
    assert final.usage.input_tokens == usage.input_tokens, (final.usage, usage)
    assert final.usage.output_tokens == usage.output_tokens, (final.usage, usage)
    ok("(b) messages.stream", f"text_stream == final message, stop {final.stop_reason}, usage as (a)")

    # (c) count_tokens: the input_tokens the same request reports.
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=prompt)
    assert counted.input_tokens == usage.input_tokens, (counted, usage)
    ok("(c) messages.count_tokens", f"{counted.input_tokens} tokens, as (a) reported")

    # (d) A small max_tokens: stop_reason max_tokens, exactly that many tokens.
    short = client.messages.create(model=MODEL, messages=prompt, temperature=0, max_tokens=3)
    assert short.stop_reason == "max_tokens", short
    assert short.usage.output_tokens == 3, short.usage
    assert short.stop_sequence is None, short
    ok("(d) max_tokens", f"{short.content[0].text!r}, stop max_tokens after 3 tokens")

    # (e) A stop sequence the model hits: stop_reason stop_sequence, naming it; the text ends before it.
    counting = client.messages.create(
        model=MODEL, messages=user(COUNT_PROMPT), temperature=0, max_tokens=64, stop_sequences=["7", "3"]
    )
    assert counting.stop_reason == "stop_sequence", counting
    assert counting.stop_sequence == "3", counting
    assert "3" not in counting.content[0].text, counting.content
    with client.messages.stream(
        model=MODEL, messages=user(COUNT_PROMPT), temperature=0, max_tokens=64, stop_sequences=["7", "3"]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == counting.content[0].text, (streamed, counting.content)
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "3"), final
    ok("(e) stop_sequences", f"{counting.content[0].text!r}, stopped on {counting.stop_sequence!r}, streamed too")

    # (f) An unknown model is Anthropic's 404, for a generation and a count.
    for call in (
        lambda: client.messages.create(model="no-such-model", messages=user("x"), max_tokens=4),
        lambda: client.messages.count_tokens(model="no-such-model", messages=user("x")),
    ):
        try:
            call()
        except anthropic.NotFoundError as e:
            assert e.status_code == 404, e
            assert e.body["error"]["type"] == "not_found_error", e.body
        else:
            raise AssertionError("an unknown model raises NotFoundError")
    ok("(f) unknown model", "NotFoundError (not_found_error) for create and count_tokens")

    # (g) max_tokens is required (the SDK sends none when it is NOT_GIVEN).
    try:
        client.messages.create(model=MODEL, messages=user("x"), max_tokens=anthropic.NOT_GIVEN)
    except anthropic.BadRequestError as e:
        assert e.status_code == 400, e
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "max_tokens" in e.message, e.message
        ok("(g) missing max_tokens", f"BadRequestError: {e.message}")
    else:
        raise AssertionError("a missing max_tokens raises BadRequestError")

    # (h) An image block is refused, naming it.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    try:
        client.messages.create(
            model=MODEL, messages=user([{"type": "text", "text": "What is this?"}, image]), max_tokens=4
        )
    except anthropic.BadRequestError as e:
        assert "messages[0].content[1].type" in e.message, e.message
        ok("(h) image block", f"BadRequestError: {e.message}")
    else:
        raise AssertionError("an image block raises BadRequestError")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
