#!/usr/bin/env python3
"""Drives a shoal node's Ollama API with the official `ollama` Python client (issue 12).

Usage: ollama_client.py http://127.0.0.1:PORT

The client talks to the default paths (`/api/*`). The node must serve `smollm2-135m` already, and hold its files
(so a pull of it succeeds without downloading). Prints one line per check; any failed check raises, so the exit
status is non-zero. Run by crates/shoal/tests/ollama_client.rs.
"""

import json
import sys
import urllib.request

import ollama

MODEL = "smollm2-135m"
CARD_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
COUNT_PROMPT = "Count from 1 to 500, one number per line."
GREEDY = {"temperature": 0, "num_predict": 24}


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def user(content):
    return [{"role": "user", "content": content}]


def request(host, method, path):
    req = urllib.request.Request(f"{host}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, response.read().decode()


def final_counts(r, limit):
    assert r.done is True, r
    assert r.done_reason in ("stop", "length"), r.done_reason
    assert r.prompt_eval_count and r.prompt_eval_count > 0, r
    assert r.eval_count and 0 < r.eval_count <= limit, r
    if r.done_reason == "length":
        assert r.eval_count == limit, r
    for field in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(r, field), int) and getattr(r, field) >= 0, (field, r)
    assert r.total_duration >= r.eval_duration, r
    # Clients divide eval_count by eval_duration for tokens per second.
    assert r.eval_duration > 0 and r.prompt_eval_duration > 0, r
    assert r.created_at and r.created_at.endswith("Z"), r.created_at


def main():
    host = sys.argv[1].rstrip("/")
    client = ollama.Client(host=host, timeout=60)
    print(f"ollama client against {host}", flush=True)

    # (a) The probe clients make first.
    assert request(host, "GET", "/") == (200, "Ollama is running")
    assert request(host, "HEAD", "/")[0] == 200
    status, text = request(host, "GET", "/api/version")
    version = json.loads(text)["version"]
    assert status == 200 and version.count(".") == 2, text
    ok("(a) GET / and /api/version", f"'Ollama is running', version {version}")

    # (b) Non-streaming chat, greedy.
    prompt = user("What is the capital of France?")
    whole = client.chat(model=MODEL, messages=prompt, options=GREEDY)
    text = whole.message.content
    assert whole.message.role == "assistant", whole
    assert text, f"non-empty content: {whole}"
    assert whole.model == MODEL, whole.model
    final_counts(whole, 24)
    ok("(b) chat", f"{text!r}, done_reason {whole.done_reason}, {whole.prompt_eval_count}+{whole.eval_count} tokens")

    # (c) Streaming the same: the pieces concatenate to the same text; only the last part is done, with the counts.
    parts = list(client.chat(model=MODEL, messages=prompt, options=GREEDY, stream=True))
    assert len(parts) >= 2, parts
    assert all(p.done is False for p in parts[:-1]), parts
    streamed = "".join(p.message.content or "" for p in parts)
    assert streamed == text, f"streamed {streamed!r} != non-streaming {text!r}"
    last = parts[-1]
    final_counts(last, 24)
    assert last.done_reason == whole.done_reason, (last, whole)
    assert (last.prompt_eval_count, last.eval_count) == (whole.prompt_eval_count, whole.eval_count), (last, whole)
    ok("(c) chat stream", f"{len(parts)} parts, done_reason {last.done_reason}")

    # (d) done_reason: "length" at num_predict, "stop" at a stop string.
    short = client.chat(model=MODEL, messages=user(COUNT_PROMPT), options={"temperature": 0, "num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3, short
    stopped = client.chat(
        model=MODEL, messages=user(COUNT_PROMPT), options={"temperature": 0, "num_predict": 64, "stop": ["5"]}
    )
    assert stopped.done_reason == "stop", stopped
    assert "5" not in stopped.message.content, stopped.message.content
    ok("(d) done_reason", f"length after 3 tokens; stop before '5': {stopped.message.content!r}")

    # (e) Generate through the template, streaming and not, and raw.
    gen = client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert gen.response, gen
    final_counts(gen, 24)
    parts = list(client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY, stream=True))
    assert "".join(p.response or "" for p in parts) == gen.response, (parts, gen)
    final_counts(parts[-1], 24)
    raw_prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    raw = client.generate(model=MODEL, prompt=raw_prompt, raw=True, options=GREEDY)
    assert raw.response, raw
    final_counts(raw, 24)
    # The model ends this answer itself, well before the limit.
    assert raw.done_reason == "stop" and raw.eval_count < 24, raw
    ok("(e) generate", f"{gen.response!r}; raw {raw.response!r}; {len(parts)} stream parts")

    # (f) The load call: no prompt, no generation.
    load = client.generate(model=MODEL)
    assert load.done is True and load.done_reason == "load" and load.response == "", load
    ok("(f) load call", "done_reason load")

    # (g) list, ps, show.
    models = client.list().models
    mine = [m for m in models if m.model == CARD_ID]
    assert len(mine) == 1, models
    assert mine[0].size > 0 and mine[0].details.quantization_level == "Q4_1", mine[0]
    assert mine[0].details.family == "llama" and mine[0].details.format == "gguf", mine[0]
    running = client.ps().models
    assert [m.model for m in running] == [CARD_ID], running
    assert running[0].size_vram == 0 and running[0].expires_at is not None, running[0]
    shown = client.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "llama", shown.modelinfo
    assert shown.modelinfo["llama.context_length"] == 8192, shown.modelinfo
    assert "completion" in shown.capabilities, shown.capabilities
    assert shown.details.parameter_size == "135M", shown.details
    ok("(g) list, ps, show", f"{len(models)} models, {len(running)} running, show {shown.details.parameter_size}")

    # (h) Pull: present already → success; progress streamed.
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses and statuses[-1] == "success", statuses
    assert client.pull(MODEL).status == "success"
    ok("(h) pull", f"statuses {statuses}")

    # (i) Errors: unknown model → 404 (chat, show, pull); a bad option → 400 naming it.
    for call in (
        lambda: client.chat(model="no-such-model", messages=user("x")),
        lambda: client.show("no-such-model"),
        lambda: client.pull("no-such-model"),
        lambda: list(client.pull("no-such-model", stream=True)),
    ):
        try:
            call()
        except ollama.ResponseError as e:
            assert e.status_code == 404, e
            assert "not found" in e.error, e.error
        else:
            raise AssertionError("an unknown model raises ResponseError")
    try:
        client.chat(model=MODEL, messages=user("x"), options={"num_ctx": 1_000_000})
    except ollama.ResponseError as e:
        assert e.status_code == 400 and "options.num_ctx" in e.error, e
    else:
        raise AssertionError("num_ctx over the context raises ResponseError")
    ok("(i) errors", "404 for an unknown model, 400 naming options.num_ctx")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
