#!/usr/bin/env python3
"""Forced tool calls (issue 14: `tool_choice` `required` and named, enforced by a grammar) through the official
openai, anthropic and ollama clients; arguments validated with the `jsonschema` package.

Usage: tool_choice_client.py http://127.0.0.1:PORT    (the node must serve `smollm2-135m` already)

The test model's template has no tool support, so shoal describes the tools in the system prompt and the model answers
in the generic JSON format; the grammar makes every forced answer a call whose arguments validate, even sampled hot.
- OpenAI: 100 `tool_choice="required"` requests (prompts, seeds and temperatures varied) are 100 calls that
  validate; a named function among two tools is always that function; a streamed answer's `tool_calls` deltas
  (index, id, name, argument fragments) concatenate to exactly the whole answer's call with the same seed;
  `finish_reason` is `tool_calls` in both.
- Anthropic: `tool_choice` `any` and `tool` give `tool_use` blocks whose `input` validates and `stop_reason`
  `tool_use`; the streamed `input_json_delta` fragments concatenate to the whole answer's input (temperature 0: the
  Messages API has no seed).
- Ollama has no `tool_choice` (nor has shoal's Ollama endpoint: its `tools` leave the choice to the model, as
  `auto`), so nothing forces a call there: with a conversation that shows the model one call, every call it makes
  must validate, the answer must make one, and the streamed answer equals the whole one (temperature 0).

Every request is sent at once through one pool, so the runner's batch stays full (rank 0 runs `max_seqs` sequences
at a time and queues the rest); its cost is prefill and decode tokens, so prompts and `max_tokens` are kept short.
Prints one line per check and a summary with counts and timings; any failed check raises, so the exit status is
non-zero. Run by crates/shoal/tests/tools.rs.
"""

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import jsonschema
import ollama
import openai

MODEL = "smollm2-135m"
FORCED = 100
# More workers than the runner's `max_seqs` (8): a queued request takes a freed place at once, without waiting for
# the client's next round trip.
WORKERS = 12
# A forced call is about 40 tokens here (the grammar lets whitespace in, at most 8 characters of it in a row, and
# bounds the string and the integer); a cap only costs what is generated, and a cut call would fail the count.
MAX_TOKENS = 72
TIMEOUT_S = 300
# Bounded fields: the grammar then bounds every answer, so no sampled answer runs into MAX_TOKENS.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
}
PROMPTS = [
    "Will it rain in Oslo this week?",
    "Weather in Lima tomorrow?",
    "Forecast for Tokyo, 5 days.",
    "Is it sunny in Cairo?",
    "Do I need a coat in Berlin?",
]
TEMPERATURES = [0.3, 0.7, 1.0, 1.3]
# Prompt and generated tokens of the whole (not streamed) answers, appended from the pool's threads: the engine's cost.
TOKENS = []


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def user(content):
    return [{"role": "user", "content": content}]


def validate(args, what):
    try:
        jsonschema.validate(args, SCHEMA)
    except jsonschema.ValidationError as e:
        raise AssertionError(f"{what}: arguments {args!r} do not validate: {e.message}") from e


class Clients:
    def __init__(self, root):
        self.oa = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        self.an = anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        self.ol = ollama.Client(host=root, timeout=TIMEOUT_S)


# ---- OpenAI ----

def openai_args(i, named=False):
    """The i-th request's parameters: prompts, seeds and temperatures vary so the 100 are not one answer."""
    kwargs = dict(
        model=MODEL,
        messages=user(PROMPTS[i % len(PROMPTS)]),
        temperature=TEMPERATURES[i % len(TEMPERATURES)],
        seed=1000 + i,
        max_tokens=MAX_TOKENS,
        # One call per answer (shoal allows several otherwise, and each would need more tokens).
        parallel_tool_calls=False,
    )
    if named:
        kwargs.update(tools=[TIME, WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    else:
        kwargs.update(tools=[WEATHER], tool_choice="required")
    return kwargs


def openai_whole(c, i, named=False):
    reply = c.oa.chat.completions.create(**openai_args(i, named))
    choice = reply.choices[0]
    what = f"openai {'named' if named else 'required'} #{i}"
    assert choice.finish_reason == "tool_calls", f"{what}: {choice.finish_reason}: {choice.message}"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1, f"{what}: {len(calls)} calls: {choice.message}"
    call = calls[0]
    assert call.type == "function" and call.id, f"{what}: {call}"
    assert call.function.name == "get_weather", f"{what}: {call}"
    validate(json.loads(call.function.arguments), what)
    TOKENS.append(reply.usage.prompt_tokens + reply.usage.completion_tokens)
    return call.function.name, call.function.arguments, reply.usage.completion_tokens


def openai_streamed(c, i, named=False):
    """The call the deltas build, as a client library assembles it: per index, the id and type once, the name and
    the argument fragments concatenated."""
    calls, finish = {}, None
    for chunk in c.oa.chat.completions.create(stream=True, **openai_args(i, named)):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": "", "fragments": 0})
                if d.id:
                    assert call["id"] in (None, d.id), f"call {d.index}'s id changed: {call['id']} then {d.id}"
                    call["id"] = d.id
                if d.function:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
                    call["fragments"] += bool(d.function.arguments)
    what = f"openai streamed {'named' if named else 'required'} #{i}"
    assert finish == "tool_calls", f"{what}: finish_reason {finish}"
    assert list(calls) == [0], f"{what}: indexes {list(calls)}"
    assert calls[0]["id"], f"{what}: no id"
    return (calls[0]["name"], calls[0]["arguments"]), calls[0]["fragments"]


# ---- Anthropic ----

A_WEATHER = {"name": "get_weather", "description": "Weather forecast", "input_schema": SCHEMA}
A_CHOICES = {
    "any": {"type": "any", "disable_parallel_tool_use": True},
    "tool": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
}


def anthropic_args(kind, i, temperature):
    return dict(
        model=MODEL,
        messages=user(PROMPTS[i % len(PROMPTS)]),
        tools=[A_WEATHER],
        tool_choice=A_CHOICES[kind],
        max_tokens=MAX_TOKENS,
        temperature=temperature,
    )


def anthropic_whole(c, kind, i, temperature):
    m = c.an.messages.create(**anthropic_args(kind, i, temperature))
    what = f"anthropic {kind} #{i}"
    assert m.stop_reason == "tool_use", f"{what}: {m.stop_reason}: {m.content}"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id, f"{what}: {m.content}"
    validate(uses[0].input, what)
    TOKENS.append(m.usage.input_tokens + m.usage.output_tokens)
    return uses[0].input


def anthropic_streamed(c, kind, i):
    blocks, stop = {}, None
    with c.an.messages.create(stream=True, **anthropic_args(kind, i, 0.0)) as stream:
        for event in stream:
            if event.type == "content_block_start" and event.content_block.type == "tool_use":
                block = event.content_block
                blocks[event.index] = {"name": block.name, "id": block.id, "json": "", "fragments": 0}
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                blocks[event.index]["json"] += event.delta.partial_json
                blocks[event.index]["fragments"] += 1
            elif event.type == "message_delta":
                stop = event.delta.stop_reason or stop
    what = f"anthropic streamed {kind} #{i}"
    assert stop == "tool_use", f"{what}: stop_reason {stop}"
    assert len(blocks) == 1, f"{what}: {blocks}"
    (block,) = blocks.values()
    assert block["name"] == "get_weather" and block["id"], f"{what}: {block}"
    streamed = json.loads(block["json"])
    validate(streamed, what)
    return streamed, block["fragments"]


# ---- Ollama ----

# One earlier call and its answer: the model, free to choose, then calls the tool for a new question (it seldom does
# from the instructions alone).
O_HISTORY = [
    {"role": "user", "content": "Weather in Paris for 2 days?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}],
    },
    {"role": "tool", "content": "Sunny", "tool_name": "get_weather"},
    {"role": "assistant", "content": "Sunny in Paris."},
]
O_QUESTIONS = ["Weather in Oslo for 3 days?"]


def ollama_args(i):
    return dict(
        model=MODEL,
        messages=O_HISTORY + user(O_QUESTIONS[i]),
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": MAX_TOKENS},
    )


def ollama_calls(message, what):
    calls = []
    for call in message.tool_calls or []:
        assert call.function.name == "get_weather", f"{what}: {call}"
        validate(dict(call.function.arguments), what)
        calls.append((call.function.name, dict(call.function.arguments)))
    return calls


def ollama_whole(c, i):
    r = c.ol.chat(**ollama_args(i))
    TOKENS.append(r.prompt_eval_count + r.eval_count)
    return r.message.content, ollama_calls(r.message, f"ollama #{i}")


def ollama_streamed(c, i):
    content, calls = "", []
    for part in c.ol.chat(stream=True, **ollama_args(i)):
        content += part.message.content or ""
        calls += ollama_calls(part.message, f"ollama streamed #{i}")
    return content, calls


# ---- All at once ----

def main():
    root = sys.argv[1].rstrip("/")
    c = Clients(root)
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}, jsonschema against {root}", flush=True)
    # (name, function): every request of every check, submitted together; each result is checked as it stands and
    # compared below.
    jobs = [(("required", i), lambda i=i: openai_whole(c, i)) for i in range(FORCED)]
    jobs += [(("named", i), lambda i=i: openai_whole(c, i, named=True)) for i in range(2)]
    # Streamed twins of a required and a named request above: same prompt, seed and temperature.
    jobs += [(("required streamed", 0), lambda: openai_streamed(c, 0))]
    jobs += [(("named streamed", 1), lambda: openai_streamed(c, 1, named=True))]
    for kind in A_CHOICES:
        jobs += [((f"anthropic {kind}", 1), lambda k=kind: anthropic_whole(c, k, 1, 1.0))]
        jobs += [((f"anthropic {kind} greedy", 0), lambda k=kind: anthropic_whole(c, k, 0, 0.0))]
        jobs += [((f"anthropic {kind} streamed", 0), lambda k=kind: anthropic_streamed(c, k, 0))]
    for i in range(len(O_QUESTIONS)):
        jobs += [(("ollama", i), lambda i=i: ollama_whole(c, i))]
        jobs += [(("ollama streamed", i), lambda i=i: ollama_streamed(c, i))]

    def timed(job):
        began = time.monotonic()
        value = job()
        return value, time.monotonic() - began

    began = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [(key, pool.submit(timed, job)) for key, job in jobs]
        results, failed = {}, {}
        for key, future in futures:
            # Every request runs to its end, so a failure reports how many of the 100 failed, not only the first.
            try:
                results[key] = future.result()
            except Exception as e:  # an assertion, a non-JSON call, an HTTP error: each counted and shown
                failed[key] = f"{type(e).__name__}: {e}"
    wall = time.monotonic() - began
    for key, why in failed.items():
        print(f"FAILED {key}: {why}", flush=True)
    valid = sum(1 for i in range(FORCED) if ("required", i) in results)
    assert not failed, f"{len(failed)} of {len(jobs)} requests failed; required calls valid: {valid} of {FORCED}"
    value = {key: v for key, (v, _) in results.items()}
    latency = sorted(s for _, s in results.values())

    required = [value[("required", i)] for i in range(FORCED)]
    assert len(required) == FORCED
    distinct = len({args for _, args, _ in required})
    tokens = [t for _, _, t in required]
    ok(
        "openai required",
        f"{len(required)} of {FORCED} answers are one get_weather call whose arguments validate; {distinct} distinct "
        f"arguments, {min(tokens)}-{max(tokens)} tokens (max_tokens {MAX_TOKENS}); e.g. {required[0][1]}",
    )
    named = [value[("named", i)] for i in range(2)]
    ok("openai named", f"{len(named)} of 2 calls are get_weather (of get_time, get_weather) and validate")
    fragments = []
    for kind, i in [("required", 0), ("named", 1)]:
        whole, (streamed, n) = value[(kind, i)][:2], value[(f"{kind} streamed", i)]
        assert streamed == whole, f"openai {kind} #{i}: streamed {streamed} != whole {whole}"
        fragments.append(n)
    ok("openai streamed", "the tool_calls deltas of a required and a named answer are the whole answers' calls "
       f"(arguments in {fragments} fragments)")

    for kind in A_CHOICES:
        greedy, (streamed, n) = value[(f"anthropic {kind} greedy", 0)], value[(f"anthropic {kind} streamed", 0)]
        assert streamed == greedy, f"anthropic {kind}: streamed {streamed} != whole {greedy}"
        fragments.append(n)
    ok("anthropic", "tool_choice any and tool: 4 of 4 tool_use blocks validate; the input_json_delta fragments of "
       f"both ({fragments[2:]}) are the whole inputs, e.g. {greedy}")

    present = 0
    for i in range(len(O_QUESTIONS)):
        whole, streamed = value[("ollama", i)], value[("ollama streamed", i)]
        assert streamed == whole, f"ollama #{i}: streamed {streamed} != whole {whole}"
        assert whole[1], f"ollama #{i} made no call (not forced: no tool_choice), so nothing was checked: {whole[0]!r}"
        present += len(whole[1])
    ok("ollama", f"{present} calls in {len(O_QUESTIONS)} answers (tools alone, not forced) validate, e.g. "
       f"{value[('ollama', 0)][1][0]}; streamed answers equal the whole ones")

    n, tokens = len(jobs), sum(TOKENS)
    print(
        f"forced tool calls: openai {FORCED}/{FORCED} required + 2/2 named + 2/2 streamed, anthropic 4/4 + 2/2 "
        f"streamed, ollama {present} calls valid; {n} requests in {wall:.1f} s, {WORKERS} at a time (whole answers: "
        f"{tokens} prompt and generated tokens, {tokens / wall:.0f}/s); latency p50 "
        f"{statistics.median(latency):.1f} s, max {latency[-1]:.1f} s",
        flush=True,
    )
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
