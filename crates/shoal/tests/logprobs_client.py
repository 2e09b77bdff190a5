#!/usr/bin/env python3
"""Logprobs and `n` > 1 (issue 14, items 4 and 6) through the official `openai` Python client: Chat Completions
(whole and streaming), Completions (the legacy `logprobs` lists), Responses (`include` and `top_logprobs`), several
choices with seeds, the 400s naming the field, and the decode rate with and without `top_logprobs=20`.

Usage: logprobs_client.py http://127.0.0.1:PORT/v1   (the node serves `smollm2-135m`). Run by tests/logprobs.rs.
"""

import json
import math
import os
import statistics
import sys
import time
import urllib.request

import openai

MODEL = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Name three colours and say why you like them."}]
# Rounding: the values travel as f32 and JSON; a sum of probabilities may exceed 1 by this much.
EPS = 1e-4


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def client_gone(root):
    """Streams the node closed because their client went away (its metrics)."""
    for line in get(f"{root}/metrics").splitlines():
        if line.startswith('shoal_stream_closes_total{reason="client_gone"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def check_entries(entries, top_n, greedy):
    """Chat/Responses entries: sorted alternatives, values <= 0, probabilities summing <= 1, bytes matching."""
    assert entries, "at least one token has logprobs"
    for e in entries:
        assert e.logprob <= 0.0, e
        assert e.bytes is not None and bytes(e.bytes).decode("utf-8", "replace") == e.token, e
        if "\ufffd" not in e.token:
            assert bytes(e.bytes) == e.token.encode(), e
        tops = e.top_logprobs
        assert len(tops) == top_n, (len(tops), top_n)
        values = [t.logprob for t in tops]
        assert values == sorted(values, reverse=True), values
        assert all(v <= 0.0 for v in values), values
        assert sum(math.exp(v) for v in values) <= 1.0 + EPS, values
        if top_n and greedy:
            # Greedy: the chosen token is the most likely one, with the same value.
            assert tops[0].token == e.token and abs(tops[0].logprob - e.logprob) < 1e-6, (e.token, tops[0])
        if top_n and e.logprob >= tops[-1].logprob + 1e-6:
            assert e.token in [t.token for t in tops], (e.token, tops)


def chat_logprobs(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5
    )
    choice = whole.choices[0]
    entries = choice.logprobs.content
    check_entries(entries, 5, greedy=True)
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")
    assert joined == choice.message.content, (joined, choice.message.content)
    ok("chat logprobs", f"{len(entries)} tokens, first {entries[0].token!r} {entries[0].logprob:.4f}")

    stream = client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5, stream=True
    )
    streamed, text = [], ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert text == choice.message.content, (text, choice.message.content)
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert all(abs(a.logprob - b.logprob) < 1e-6 for a, b in zip(streamed, entries))
    ok("chat logprobs streamed", "the same tokens and values as the whole answer")

    zero = client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=0, max_tokens=4, logprobs=True, top_logprobs=0
    )
    check_entries(zero.choices[0].logprobs.content, 0, greedy=True)
    plain = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=4)
    assert plain.choices[0].logprobs is None, plain
    ok("chat logprobs off and top 0", "null without logprobs; no alternatives with top_logprobs=0")

    hot = client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=1.0, seed=3, max_tokens=12, logprobs=True, top_logprobs=20
    )
    check_entries(hot.choices[0].logprobs.content, 20, greedy=False)
    ok("chat logprobs sampled", "temperature 1: 20 sorted alternatives per token")


def completions_logprobs(client):
    whole = client.completions.create(model=MODEL, prompt="The sky is", temperature=0, max_tokens=8, logprobs=3)
    choice = whole.choices[0]
    lp = choice.logprobs
    n = len(lp.tokens)
    assert n > 0 and len(lp.token_logprobs) == n and len(lp.top_logprobs) == n and len(lp.text_offset) == n, lp
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp.text_offset
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0.0 and len(top) <= 3, (token, value, top)
        best = max(top, key=top.get)
        assert best == token and abs(top[best] - value) < 1e-6, (token, value, top)
    assert "".join(lp.tokens) == choice.text, (lp.tokens, choice.text)
    ok("completions logprobs", f"{n} tokens in the legacy lists, offsets {lp.text_offset[:4]}...")

    streamed = []
    for chunk in client.completions.create(
        model=MODEL, prompt="The sky is", temperature=0, max_tokens=8, logprobs=3, stream=True
    ):
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed.extend(zip(c.logprobs.tokens, c.logprobs.text_offset))
    assert [t for t, _ in streamed] == lp.tokens and [o for _, o in streamed] == lp.text_offset, streamed
    ok("completions logprobs streamed", "same tokens and offsets")


def responses_logprobs(client):
    whole = client.responses.create(
        model=MODEL,
        input="Name three colours.",
        temperature=0,
        max_output_tokens=10,
        include=["message.output_text.logprobs"],
        top_logprobs=3,
    )
    message = [item for item in whole.output if item.type == "message"][0]
    part = message.content[0]
    check_entries(part.logprobs, 3, greedy=True)
    ok("responses logprobs", f"{len(part.logprobs)} tokens on the output_text part")

    deltas, done = [], None
    for event in client.responses.create(
        model=MODEL,
        input="Name three colours.",
        temperature=0,
        max_output_tokens=10,
        include=["message.output_text.logprobs"],
        top_logprobs=3,
        stream=True,
    ):
        if event.type == "response.output_text.delta":
            deltas.extend(event.logprobs)
        elif event.type == "response.output_text.done":
            done = event.logprobs
    assert [d.token for d in deltas] == [e.token for e in part.logprobs], deltas
    assert done is not None and len(done) == len(deltas), done
    ok("responses logprobs streamed", "delta events carry each token's entry; the done event all of them")


def several_choices(client):
    args = dict(model=MODEL, messages=PROMPT, temperature=1.0, seed=11, max_tokens=16)
    one = client.chat.completions.create(**{**args, "seed": 11})
    whole = client.chat.completions.create(n=3, **args)
    assert [c.index for c in whole.choices] == [0, 1, 2], whole.choices
    texts = [c.message.content for c in whole.choices]
    assert len(set(texts)) > 1, texts
    assert texts[0] == one.choices[0].message.content, "choice 0 uses the request's seed"
    again = client.chat.completions.create(n=3, **args)
    assert [c.message.content for c in again.choices] == texts, "the same seed reproduces every choice"
    assert whole.usage.prompt_tokens == one.usage.prompt_tokens, "the prompt is counted once"
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert whole.usage.completion_tokens <= 3 * 16 and whole.usage.completion_tokens >= 3, whole.usage
    ok("n=3 chat", f"three different choices, reproducible: {[t[:20] for t in texts]}")

    parts, finishes, usage = {}, {}, None
    for chunk in client.chat.completions.create(stream=True, n=3, stream_options={"include_usage": True}, **args):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                assert c.index not in finishes, "one finish_reason per choice"
                finishes[c.index] = c.finish_reason
    assert sorted(finishes) == [0, 1, 2], finishes
    assert [parts[i] for i in range(3)] == texts, (parts, texts)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage
    ok("n=3 chat streamed", "interleaved by index, each with its finish_reason, same texts, usage summed once")

    # Closing the stream of three choices cancels all three tasks.
    root = str(client.base_url).rstrip("/")[: -len("/v1")]
    before = client_gone(root)
    stream = client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=1.0, max_tokens=2000, n=3, stream=True
    )
    seen = set()
    for chunk in stream:
        seen.update(c.index for c in chunk.choices if c.delta.content)
        if len(seen) == 3:
            break
    stream.close()
    closed = time.monotonic()
    while json.loads(get(f"{root}/state"))["tasks"]:
        assert time.monotonic() - closed < 5, "tasks left 5 s after the close"
        time.sleep(0.05)
    assert client_gone(root) >= before + 3, (before, client_gone(root))
    ok("n=3 disconnect", f"all three tasks gone {time.monotonic() - closed:.2f} s after the close")

    comp = client.completions.create(model=MODEL, prompt="Once upon a time", n=2, temperature=1.0, seed=5, max_tokens=8)
    assert [c.index for c in comp.choices] == [0, 1], comp
    ok("n=2 completions", f"{[c.text for c in comp.choices]}")


def bad_requests(client):
    cases = [
        ("top_logprobs", lambda: client.chat.completions.create(
            model=MODEL, messages=PROMPT, logprobs=True, top_logprobs=21)),
        ("top_logprobs", lambda: client.chat.completions.create(model=MODEL, messages=PROMPT, top_logprobs=2)),
        ("n", lambda: client.chat.completions.create(model=MODEL, messages=PROMPT, n=9)),
        ("n", lambda: client.chat.completions.create(model=MODEL, messages=PROMPT, n=0)),
        ("logprobs", lambda: client.completions.create(model=MODEL, prompt="x", logprobs=6)),
        ("n", lambda: client.completions.create(model=MODEL, prompt="x", n=9)),
        ("top_logprobs", lambda: client.responses.create(model=MODEL, input="x", top_logprobs=21)),
    ]
    for field, call in cases:
        try:
            call()
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.param == field, (field, e.param, e)
        else:
            raise AssertionError(f"{field}: no 400")
    ok("bad requests", f"{len(cases)} 400s naming the field")


def decode_rate(client, top):
    """Decode tokens per second of one streamed greedy answer: generated tokens after the first over the time from
    the first piece to the last, so prefill is left out; the same count in both modes (the usage chunk's)."""
    extra = {"logprobs": True, "top_logprobs": top} if top is not None else {}
    first = last = None
    tokens = 0
    for chunk in client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 500, one number per line."}],
        temperature=0,
        max_tokens=96,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    ):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].logprobs):
            last = time.monotonic()
            first = first or last
    return (tokens - 1) / (last - first)


def measure(client):
    """Alternates plain and top_logprobs=20 runs (REPS each, `LOGPROBS_BENCH_REPS`) and prints the medians."""
    reps = int(os.environ.get("LOGPROBS_BENCH_REPS", "3"))
    plain, with_top = [], []
    for _ in range(reps):
        plain.append(decode_rate(client, None))
        with_top.append(decode_rate(client, 20))
    p, t = statistics.median(plain), statistics.median(with_top)
    print(
        f"decode tok/s (median of {reps}, 96 tokens): plain {p:.1f}, top_logprobs=20 {t:.1f} ({(t / p - 1) * 100:+.1f} %)"
        f"; plain {[round(x, 1) for x in plain]}, top 20 {[round(x, 1) for x in with_top]}"
    )


def main():
    base_url = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    chat_logprobs(client)
    completions_logprobs(client)
    responses_logprobs(client)
    several_choices(client)
    bad_requests(client)
    measure(client)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
