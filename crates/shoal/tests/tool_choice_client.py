#!/usr/bin/env python3
"""`tool_choice` required and named, enforced by a grammar (issue 14), through the official clients.

Usage: tool_choice_client.py http://127.0.0.1:PORT

The node serves `smollm2-135m` (generic tool format, no tool support in its template). With `tool_choice="required"`
every answer must be a call whose arguments validate against the function's JSON schema, even sampled at a high
temperature: 100 through the openai client (sampled with 100 seeds, 8 at a time), streamed ones equal to whole ones
with the same seed, and fewer through the anthropic (`tool_choice: any` / `tool`) and ollama clients (Ollama has no
`tool_choice`: its `tools` alone are not forced, so only the shape is checked there). Run by
crates/shoal/tests/tools.rs.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import anthropic
import jsonschema
import openai

MODEL = "smollm2-135m"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": SCHEMA}}
OTHER = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Will it rain in Oslo this week?"}]
N = 100
PARALLEL = 8
SAMPLED = {"temperature": 0.7, "max_tokens": 128}


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def main():
    base = sys.argv[1].rstrip("/")
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    an = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)

    def whole(seed):
        r = oa.chat.completions.create(
            model=MODEL, messages=ASK, tools=[TOOL, OTHER], tool_choice="required", seed=seed, **SAMPLED
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", (seed, c)
        call = c.message.tool_calls[0].function
        return call.name, call.arguments

    with ThreadPoolExecutor(PARALLEL) as pool:
        calls = list(pool.map(whole, range(N)))
    valid = 0
    for name, args in calls:
        if name == "get_weather":
            jsonschema.validate(json.loads(args), SCHEMA)
            valid += 1
        else:
            assert name == "get_time" and json.loads(args) == {}, (name, args)
    ok("(a) required", f"{N} of {N} answers are calls, {valid} get_weather calls validate against the schema")

    # Named: always that function.
    def named(seed):
        r = oa.chat.completions.create(
            model=MODEL, messages=ASK, tools=[TOOL, OTHER], seed=seed,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, **SAMPLED
        )
        call = r.choices[0].message.tool_calls[0].function
        assert call.name == "get_weather", call
        jsonschema.validate(json.loads(call.arguments), SCHEMA)
        return call.arguments

    with ThreadPoolExecutor(PARALLEL) as pool:
        named_args = list(pool.map(named, range(5)))
    ok("(b) named", f"5 of 5 get_weather calls validate, e.g. {named_args[0]}")

    # Streamed deltas concatenate to the same call as the whole answer with the same seed.
    def streamed(seed):
        parts = {}
        for chunk in oa.chat.completions.create(
            model=MODEL, messages=ASK, tools=[TOOL], tool_choice="required", seed=seed, stream=True, **SAMPLED
        ):
            for c in chunk.choices:
                for d in c.delta.tool_calls or []:
                    p = parts.setdefault(d.index, ["", ""])
                    p[0] += (d.function.name or "") if d.function else ""
                    p[1] += (d.function.arguments or "") if d.function else ""
        r = oa.chat.completions.create(
            model=MODEL, messages=ASK, tools=[TOOL], tool_choice="required", seed=seed, **SAMPLED
        )
        call = r.choices[0].message.tool_calls[0].function
        assert parts[0][0] == call.name and json.loads(parts[0][1]) == json.loads(call.arguments), (parts, call)

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(streamed, range(3)))
    ok("(c) streamed", "3 streamed calls equal the whole ones with the same seed")

    # Anthropic: `any` and `tool`.
    a_tool = {"name": "get_weather", "input_schema": SCHEMA}
    for i, choice in enumerate([{"type": "any"}, {"type": "tool", "name": "get_weather"}] * 2):
        m = an.messages.create(model=MODEL, messages=ASK, tools=[a_tool], tool_choice=choice, max_tokens=128,
                               temperature=0.7)
        assert m.stop_reason == "tool_use", (i, m)
        use = [b for b in m.content if b.type == "tool_use"][0]
        assert use.name == "get_weather", use
        jsonschema.validate(use.input, SCHEMA)
    ok("(d) anthropic", "4 of 4 tool_use blocks (any, tool) validate")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
