#!/usr/bin/env python3
"""`tool_choice: auto` through the official openai client (issue 14).

Usage: tools_auto_client.py http://127.0.0.1:PORT

The node serves `smollm2-135m`, whose template has no tool support: the tools are described in the system prompt
and a call is the generic JSON format (`{"tool_calls": [...]}` or a bare call), which starts when the answer opens
with `{`. From there the grammar forces a well-formed call whose arguments validate against the tool's schema. A
135M model does not call tools on its own, so the conversation shows it earlier calls before asking again.
Checks: greedy and sampled answers that start a call are calls whose arguments validate (never a broken call shown
as text), streamed as whole; `parallel_tool_calls: false` gives at most one call; a prompt that yields plain text
still yields plain text.
Prints one line per check; a failed check raises. Run by crates/shoal/tests/tools_auto.rs.
"""

import json
import sys

import jsonschema
import openai

MODEL = "smollm2-135m"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather forecast for a city", "parameters": SCHEMA},
}
EARLIER = [("Paris", 2, "celsius", "sunny"), ("Boston", 5, "fahrenheit", "rain")]
ASK = "What is the weather in Berlin for 3 days, in celsius?"
SAMPLED = 4


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def history():
    messages = []
    for i, (city, days, unit, answer) in enumerate(EARLIER):
        call_id = f"call_{i}"
        args = {"city": city, "days": days, "unit": unit}
        messages += [
            {"role": "user", "content": f"What is the weather in {city} for {days} days, in {unit}?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}
            ]},
            {"role": "tool", "tool_call_id": call_id, "content": answer},
        ]
    return messages + [{"role": "user", "content": ASK}]


def check_calls(choice):
    """The answer's calls, each valid against the schema; an answer that opened a call must be a call."""
    calls = choice.message.tool_calls or []
    text = choice.message.content or ""
    assert not text.lstrip().startswith("{"), f"a call started but came back as text: {text!r}"
    for c in calls:
        assert c.function.name == "get_weather", c
        jsonschema.validate(json.loads(c.function.arguments), SCHEMA)
    if calls:
        assert choice.finish_reason == "tool_calls", choice
    return calls


def main():
    base = sys.argv[1].rstrip("/")
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

    # (a) Greedy: the call, valid, streamed the same.
    r = oa.chat.completions.create(model=MODEL, messages=history(), tools=[WEATHER], tool_choice="auto",
                                   temperature=0, max_tokens=64)
    calls = check_calls(r.choices[0])
    assert calls, r.choices[0]
    stream = oa.chat.completions.create(model=MODEL, messages=history(), tools=[WEATHER], tool_choice="auto",
                                        temperature=0, max_tokens=64, stream=True)
    parts, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                p = parts.setdefault(d.index, {"name": "", "arguments": ""})
                if d.function:
                    p["name"] += d.function.name or ""
                    p["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and len(parts) == len(calls), (finish, parts)
    assert json.loads(parts[0]["arguments"]) == json.loads(calls[0].function.arguments), parts
    ok("(a) greedy auto call", f"{calls[0].function.name}({calls[0].function.arguments}), streamed the same")

    # (b) Sampled (n choices of one request, each its own seed) with parallel calls off: every answer that starts
    # a call is one valid call.
    r = oa.chat.completions.create(model=MODEL, messages=history(), tools=[WEATHER], temperature=1.3, seed=7,
                                   n=SAMPLED, max_tokens=64, parallel_tool_calls=False)
    made = 0
    for choice in r.choices:
        calls = check_calls(choice)
        assert len(calls) <= 1, calls
        made += len(calls)
    assert made >= 1, r.choices
    ok("(b) sampled auto calls", f"{made} of {SAMPLED} answers were calls, one each, all valid")

    # (c) Plain text stays plain text.
    plain = [{"role": "user", "content": "Write one sentence about the sea."}]
    r = oa.chat.completions.create(model=MODEL, messages=plain, tools=[WEATHER], temperature=0, max_tokens=24)
    choice = r.choices[0]
    assert not choice.message.tool_calls and choice.message.content, choice
    assert choice.finish_reason in ("stop", "length"), choice
    ok("(c) plain text", repr(choice.message.content))

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
