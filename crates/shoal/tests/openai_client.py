#!/usr/bin/env python3
"""Drives a shoal node's OpenAI-compatible API with the official `openai` Python client (issue 5).

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

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
