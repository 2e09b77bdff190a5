#!/usr/bin/env python3
"""Tools and tool calls through the official openai, anthropic and ollama Python clients (issue 14).

Usage: tools_client.py http://127.0.0.1:PORT

The node serves `smollm2-135m`, whose template has no tool support: the tools are described in the system prompt and
the model answers in the generic JSON format. A 135M model does not call tools on its own, so the conversation shows
it an earlier call (given back as each dialect writes it) before asking again; greedy decoding then repeats the
pattern. Checks: tools reach the prompt (and `tool_choice: none` keeps them out), a call comes back in each
dialect's shape, streamed calls equal whole ones, a tool result is rendered and answered, and bad tools are a 400
naming the field. Prints one line per check; a failed check raises. Run by crates/shoal/tests/tools.rs.
"""

import json
import sys

import anthropic
import ollama
import openai

MODEL = "smollm2-135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
CITIES = [("Paris", 1, "sunny")]
ASK = "What is the weather in Berlin for 3 days?"


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def openai_history():
    """Two earlier turns that called the tool, then the question."""
    messages = []
    for i, (city, days, answer) in enumerate(CITIES):
        call_id = f"call_{i}"
        messages += [
            {"role": "user", "content": f"What is the weather in {city} for {days} days?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "days": days})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": answer},
        ]
    return messages + [{"role": "user", "content": ASK}]


def check_call(name, args):
    assert name == "get_weather", name
    assert isinstance(args, dict), args
    assert isinstance(args.get("city"), str) and isinstance(args.get("days"), int), args


def main():
    base = sys.argv[1].rstrip("/")
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    an = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)
    ol = ollama.Client(host=base, timeout=120)
    greedy = {"temperature": 0, "max_tokens": 48}

    # (a) The tools reach the prompt (described in the system prompt for this template); `none` keeps them out.
    plain = [{"role": "user", "content": ASK}]
    base_count = oa.chat.completions.create(model=MODEL, messages=plain, max_tokens=1).usage.prompt_tokens
    with_tools = oa.chat.completions.create(model=MODEL, messages=plain, tools=[WEATHER], max_tokens=1)
    without = oa.chat.completions.create(
        model=MODEL, messages=plain, tools=[WEATHER], tool_choice="none", max_tokens=1
    ).usage.prompt_tokens
    assert with_tools.usage.prompt_tokens > base_count + 50, (with_tools.usage, base_count)
    assert without == base_count, (without, base_count)
    ok("(a) tools in the prompt", f"{base_count} tokens plain, {with_tools.usage.prompt_tokens} with tools")

    # (b) OpenAI chat: the call, whole and streamed.
    history = openai_history()
    whole = oa.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], **greedy)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].id, calls
    check_call(calls[0].function.name, json.loads(calls[0].function.arguments))
    stream = oa.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], stream=True, stream_options={"include_usage": True}, **greedy
    )
    parts, finish, usage = {}, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                p = parts.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                p["id"] = d.id or p["id"]
                if d.function:
                    p["name"] += d.function.name or ""
                    p["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and usage and usage.completion_tokens > 0, (finish, usage)
    assert parts[0]["name"] == calls[0].function.name, parts
    assert json.loads(parts[0]["arguments"]) == json.loads(calls[0].function.arguments), parts
    ok("(b) openai tool call", f"{calls[0].function.name}({calls[0].function.arguments}), streamed the same")

    # (c) The round trip: the result goes back and the model answers in text.
    answer = oa.chat.completions.create(
        model=MODEL,
        messages=history
        + [
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "cloudy, 12 degrees"},
        ],
        tools=[WEATHER],
        **greedy,
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls"), answer
    # The call and its result were rendered into the prompt.
    assert answer.usage.prompt_tokens > whole.usage.prompt_tokens + 10, (answer.usage, whole.usage)
    ok("(c) tool result answered", f"{answer.choices[0].finish_reason}: {answer.choices[0].message.content!r}")

    # (d) Bad tools: a 400 naming the field.
    bad = dict(WEATHER, function=dict(WEATHER["function"], parameters="nope"))
    try:
        oa.chat.completions.create(model=MODEL, messages=plain, tools=[bad], max_tokens=1)
        raise AssertionError("bad tools accepted")
    except openai.BadRequestError as e:
        assert "tools[0].function.parameters" in str(e), e
    try:
        oa.chat.completions.create(
            model=MODEL, messages=plain, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}
        )
        raise AssertionError("unknown named tool accepted")
    except openai.BadRequestError as e:
        assert "tool_choice" in str(e), e
    ok("(d) openai bad tools", "400 naming tools[0].function.parameters and tool_choice")

    # (e) Responses: function_call items, whole and streamed.
    flat = {"type": "function", **WEATHER["function"]}
    items = []
    for i, (city, days, result) in enumerate(CITIES):
        items += [
            {"role": "user", "content": f"What is the weather in {city} for {days} days?"},
            {"type": "function_call", "call_id": f"call_{i}", "name": "get_weather",
             "arguments": json.dumps({"city": city, "days": days})},
            {"type": "function_call_output", "call_id": f"call_{i}", "output": result},
        ]
    items.append({"role": "user", "content": ASK})
    resp = oa.responses.create(model=MODEL, input=items, tools=[flat], temperature=0, max_output_tokens=48)
    fc = [o for o in resp.output if o.type == "function_call"]
    assert fc and fc[0].call_id, resp.output
    check_call(fc[0].name, json.loads(fc[0].arguments))
    events = list(oa.responses.create(model=MODEL, input=items, tools=[flat], temperature=0, max_output_tokens=48,
                                      stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and json.loads(done[0].arguments) == json.loads(fc[0].arguments), [e.type for e in events]
    assert events[-1].type == "response.completed", events[-1]
    ok("(e) responses function_call", f"{fc[0].name}({fc[0].arguments}), streamed the same")

    # (f) Anthropic: tool_use blocks, whole and streamed; tool_result given back.
    a_tool = {"name": "get_weather", "description": WEATHER["function"]["description"],
              "input_schema": WEATHER["function"]["parameters"]}
    a_history = []
    for i, (city, days, result) in enumerate(CITIES):
        a_history += [
            {"role": "user", "content": f"What is the weather in {city} for {days} days?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather",
                                               "input": {"city": city, "days": days}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": result}]},
        ]
    a_history.append({"role": "user", "content": ASK})
    msg = an.messages.create(model=MODEL, messages=a_history, tools=[a_tool], max_tokens=48, temperature=0)
    assert msg.stop_reason == "tool_use", msg
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].id, msg.content
    check_call(uses[0].name, uses[0].input)
    with an.messages.stream(model=MODEL, messages=a_history, tools=[a_tool], max_tokens=48, temperature=0) as s:
        final = s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed and streamed[0].input == uses[0].input, final
    try:
        an.messages.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1,
                           tools=[{"name": "f", "input_schema": "nope"}])
        raise AssertionError("bad anthropic tools accepted")
    except anthropic.BadRequestError as e:
        assert "tools[0].input_schema" in str(e), e
    ok("(f) anthropic tool_use", f"{uses[0].name}({uses[0].input}), streamed the same, bad tools named")

    # (g) Ollama: message.tool_calls with arguments as an object, whole and streamed.
    o_history = []
    for city, days, result in CITIES:
        o_history += [
            {"role": "user", "content": f"What is the weather in {city} for {days} days?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city, "days": days}}}]},
            {"role": "tool", "tool_name": "get_weather", "content": result},
        ]
    o_history.append({"role": "user", "content": ASK})
    options = {"temperature": 0, "num_predict": 48}
    r = ol.chat(model=MODEL, messages=o_history, tools=[WEATHER], options=options)
    assert r.message.tool_calls, r
    check_call(r.message.tool_calls[0].function.name, dict(r.message.tool_calls[0].function.arguments))
    parts = list(ol.chat(model=MODEL, messages=o_history, tools=[WEATHER], options=options, stream=True))
    s_calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert s_calls and dict(s_calls[0].function.arguments) == dict(r.message.tool_calls[0].function.arguments)
    assert parts[-1].done, parts[-1]
    ok("(g) ollama tool_calls", f"{r.message.tool_calls[0].function}, streamed the same")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
