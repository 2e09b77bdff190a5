#!/usr/bin/env python3
"""Structured output (issue 14, item 3) through the official clients: 100 concurrent `json_schema` chat requests
whose answers all parse and validate (the `jsonschema` package), `json_object`, streaming, Responses `text.format`,
Ollama `format` through the `ollama` client, and a bad schema refused with a 400 naming the place in it.

Usage: structured_output.py http://127.0.0.1:PORT    (the node must serve `smollm2-135m` already)

Prints one line per check; any failed check raises, so the exit status is non-zero. Run by
crates/shoal/tests/structured_output.rs.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import ollama
import openai

MODEL = "smollm2-135m"
REQUESTS = 100
# Concurrent requests: they share the runner's batches, which keeps the 100 quick.
WORKERS = 8
# Every schema below has bounded strings and arrays, so a complete answer fits well within this.
MAX_TOKENS = 120

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 9999},
        "items": {
            "type": "array",
            "items": {"type": "string", "maxLength": 10},
            "minItems": 1,
            "maxItems": 3,
        },
        "paid": {"type": "boolean"},
    },
    "required": ["id", "items", "paid"],
    "additionalProperties": False,
}
PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "location": {
            "type": "object",
            "properties": {
                # Integers: a JSON number's fraction has no length limit, and a small model may write digits
                # until max_tokens.
                "lat": {"type": "integer", "minimum": -90, "maximum": 90},
                "lon": {"type": "integer", "minimum": -180, "maximum": 180},
            },
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
        "size": {"enum": ["small", "medium", "large"]},
    },
    "required": ["city", "location", "size"],
    "additionalProperties": False,
}
REVIEW = {
    "type": "object",
    "properties": {
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {
            "type": "array",
            "items": {"enum": ["fast", "cheap", "good", "bad"]},
            "maxItems": 2,
        },
        "author": {
            "type": "object",
            "properties": {"nick": {"type": "string", "maxLength": 8}, "verified": {"type": "boolean"}},
            "required": ["nick"],
            "additionalProperties": False,
        },
    },
    "required": ["stars", "tags", "author"],
    "additionalProperties": False,
}
SCHEMAS = [("person", PERSON), ("order", ORDER), ("place", PLACE), ("review", REVIEW)]
PROMPTS = [
    "Describe someone from a story you like.",
    "Make up an example record.",
    "Answer with data about a small town.",
    "Give me a short example in JSON.",
    "Invent something.",
]


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def user(content):
    return [{"role": "user", "content": content}]


def json_schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def one_request(client, i):
    name, schema = SCHEMAS[i % len(SCHEMAS)]
    prompt = PROMPTS[i % len(PROMPTS)]
    temperature = [0.0, 0.7, 1.0][i % 3]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user(prompt),
        temperature=temperature,
        seed=i,
        max_tokens=MAX_TOKENS,
        response_format=json_schema_format(name, schema),
    )
    choice = reply.choices[0]
    text = choice.message.content
    assert choice.finish_reason == "stop", f"request {i} ({name}): {choice.finish_reason}: {text!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AssertionError(f"request {i} ({name}) is not JSON: {e}: {text!r}") from e
    jsonschema.validate(value, schema)
    return reply.usage.completion_tokens


def main():
    root = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0, timeout=120)
    print(f"openai {openai.__version__}, jsonschema, ollama against {root}", flush=True)

    # (a) 100 json_schema requests, concurrent, over four schemas, prompts, seeds and temperatures.
    with ThreadPoolExecutor(WORKERS) as pool:
        tokens = list(pool.map(lambda i: one_request(client, i), range(REQUESTS)))
    ok("json_schema x100", f"all parse and validate; {sum(tokens)} tokens, longest {max(tokens)}")

    # (b) json_object: a JSON object, whatever the prompt asks.
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("Write a Python function that adds two numbers."),
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    text = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text
    else:
        # A small model may write a long object; what it wrote is still an object's beginning.
        assert text.startswith("{"), text
    ok("json_object", f"{reply.choices[0].finish_reason}: {text[:60]!r}")

    # (c) Streaming: the deltas concatenate to a valid answer.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=user(PROMPTS[0]),
        temperature=0,
        max_tokens=MAX_TOKENS,
        response_format=json_schema_format("person", PERSON),
        stream=True,
    )
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    streamed = "".join(parts)
    assert finish == "stop", finish
    jsonschema.validate(json.loads(streamed), PERSON)
    whole = client.chat.completions.create(
        model=MODEL,
        messages=user(PROMPTS[0]),
        temperature=0,
        max_tokens=MAX_TOKENS,
        response_format=json_schema_format("person", PERSON),
    )
    assert whole.choices[0].message.content == streamed, (whole.choices[0].message.content, streamed)
    ok("streamed json_schema", streamed)

    # (d) Responses `text.format`.
    response = client.responses.create(
        model=MODEL,
        input="Invent an order.",
        temperature=0,
        max_output_tokens=MAX_TOKENS,
        text={"format": {"type": "json_schema", "name": "order", "schema": ORDER, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), ORDER)
    response = client.responses.create(
        model=MODEL, input="Say hi.", max_output_tokens=MAX_TOKENS, text={"format": {"type": "json_object"}}
    )
    assert response.output_text.startswith("{"), response.output_text
    ok("responses text.format", response.output_text[:60])

    # (e) A bad schema: 400 naming where in it, before anything runs.
    bad = {"type": "object", "properties": {"who": {"type": "object", "properties": {"age": {"type": "integr"}}}}}
    try:
        client.chat.completions.create(
            model=MODEL, messages=user("x"), max_tokens=5, response_format=json_schema_format("bad", bad)
        )
        raise AssertionError("a bad schema was accepted")
    except openai.BadRequestError as e:
        param = e.body.get("param") if isinstance(e.body, dict) else None
        assert param == "response_format.json_schema.schema.properties.who.properties.age", (param, e.body)
        ok("bad schema 400", f"{param}: {e.body.get('message')}")

    # (f) Ollama `format`: "json" and a schema, through the ollama client.
    oll = ollama.Client(host=root, timeout=120)
    answer = oll.chat(
        model=MODEL,
        messages=user("Describe a person."),
        format=PERSON,
        options={"temperature": 0, "num_predict": MAX_TOKENS},
    )
    jsonschema.validate(json.loads(answer.message.content), PERSON)
    generated = oll.generate(model=MODEL, prompt="Give me a record.", format=REVIEW, options={"seed": 7})
    jsonschema.validate(json.loads(generated.response), REVIEW)
    answer = oll.chat(model=MODEL, messages=user("Say hi."), format="json", options={"num_predict": MAX_TOKENS})
    assert answer.message.content.startswith("{"), answer.message.content
    try:
        oll.chat(model=MODEL, messages=user("x"), format={"type": "object", "properties": {"x": {"type": "nope"}}})
        raise AssertionError("a bad ollama schema was accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 400, e
        assert "format.properties.x" in str(e.error), e.error
    ok("ollama format", f"{answer.message.content[:40]!r}")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
