"""The official Anthropic Python SDK against the demo's /v1/messages (vLLM-flavoured replicas
pass Messages through; the demo's trtllm cluster serves none)."""

import json
import time
import urllib.request

import anthropic
import pytest

MODEL = "llama-3.1-8b"  # cluster vllm-a: replicas 8101 and 8102, served name below
SERVED = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Say hello to the fleet"}]


def sdk(demo, key, retries=0, **kwargs):
    return anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{demo.proxy_port}", api_key=key, max_retries=retries,
        timeout=60, **kwargs,
    )


def test_create_reaches_the_replica_with_its_served_name_and_is_metered(demo):
    demo.reset_sims()
    client = sdk(demo, demo.fresh_key("msg-create"))
    message = client.messages.create(model=MODEL, max_tokens=12, messages=MESSAGES)
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 12
    assert message.model == MODEL, "the alias, not the served name"
    [record] = [r for r in demo.all_sim_requests() if r["path"] == "/v1/messages"]
    body = json.loads(record["body"])
    assert body["model"] == SERVED
    assert "stream_options" not in body
    # anthropic-version is passed through; the client's key never reaches a replica.
    assert record["headers"]["anthropic-version"]
    assert "x-api-key" not in record["headers"]
    usage = demo.wait_usage("msg-create", 1)
    assert usage["prompt_tokens"] == message.usage.input_tokens
    assert usage["completion_tokens"] == 12


def in_flight(demo):
    """Requests the demo's vLLM replicas are still answering."""
    total = 0
    for fixed in (8101, 8102):
        url = f"http://127.0.0.1:{demo.sim_port(fixed)}/sim/stats"
        with urllib.request.urlopen(url, timeout=10) as r:
            total += json.load(r)["in_flight"]
    return total


def test_stream_is_incremental_and_its_usage_is_what_was_metered(demo):
    client = sdk(demo, demo.fresh_key("msg-stream"))
    texts, generating_at_first_text = [], None
    # 40 tokens 25 ms apart (the demo's --decode-ms): about a second of generation.
    with client.messages.stream(model=MODEL, max_tokens=40, messages=MESSAGES) as stream:
        for text in stream.text_stream:
            if not texts:
                generating_at_first_text = in_flight(demo)
            texts.append(text)
        final = stream.get_final_message()
    assert generating_at_first_text == 1, "the first text arrived while the replica generated"
    assert len(texts) == 40, "one text delta per token"
    assert final.content[0].text == "".join(texts)
    assert final.stop_reason == "max_tokens"
    assert final.model == MODEL, "message_start names the alias"
    usage = demo.wait_usage("msg-stream", 1)
    assert final.usage.output_tokens == usage["completion_tokens"] == 40
    assert final.usage.input_tokens == usage["prompt_tokens"] > 0


def test_tool_use_input_json_deltas_are_byte_identical_to_the_replica(demo):
    client = sdk(demo, demo.fresh_key("msg-tool"))
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    request = {"max_tokens": 8, "messages": MESSAGES, "tools": tools,
               "tool_choice": {"type": "any"}}
    via_proxy = []
    with client.messages.stream(model=MODEL, **request) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                via_proxy.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].name == "get_weather"
    assert final.content[0].input == json.loads("".join(via_proxy))
    # The same request straight to a replica (same seed, same text): the raw partial_json
    # strings the replica sends.
    raw = json.dumps({"model": SERVED, "stream": True, **request}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{demo.sim_port(8101)}/v1/messages", data=raw,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    direct = [
        json.loads(line[len("data: "):])["delta"]["partial_json"]
        for line in text.splitlines()
        if line.startswith("data: ") and "input_json_delta" in line
    ]
    assert len(direct) == 10  # opening, one per token, closing
    assert via_proxy == direct


def test_count_tokens(demo):
    client = sdk(demo, demo.fresh_key("msg-count"))
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES, system="Be brief.")
    message = client.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens > 0


def x_api_key_client(demo, key):
    """A client sending its key only as `x-api-key` (how Claude Code and older SDKs send it;
    this SDK sends `api_key` as a bearer token)."""
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{demo.proxy_port}", api_key=None,
                               default_headers={"x-api-key": key}, max_retries=0)


def test_bad_key_is_an_authentication_error_by_bearer_and_by_x_api_key(demo):
    with pytest.raises(anthropic.AuthenticationError) as err:
        sdk(demo, "tg-not-a-real-key").messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError) as err:
        x_api_key_client(demo, "tg-not-a-real-key").messages.create(
            model=MODEL, max_tokens=1, messages=MESSAGES)
    sent = err.value.response.request.headers
    assert sent["x-api-key"] == "tg-not-a-real-key" and "authorization" not in sent
    assert err.value.body["error"]["type"] == "authentication_error"
    good = x_api_key_client(demo, demo.key)
    assert good.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES).usage.output_tokens == 1


def test_unknown_model_and_a_cluster_without_messages_are_not_found_errors(demo):
    client = sdk(demo, demo.key)
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-nonexistent", max_tokens=1, messages=MESSAGES)
    assert err.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in err.value.message
    # mistral-7b lives on the demo's trtllm cluster: trtllm-serve has no Messages API.
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="mistral-7b", max_tokens=1, messages=MESSAGES)
    assert "mistral-7b" in err.value.message and "/v1/messages" in err.value.message
    with pytest.raises(anthropic.BadRequestError) as err:
        client.post("/v1/messages", cast_to=object, body={"model": MODEL, "messages": MESSAGES})
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err.value.message


def test_rate_limit_error_then_retry_after_retry_after_succeeds(demo):
    client = sdk(demo, key := demo.fresh_key("msg-rpm", limits={"requests_per_minute": 60}))
    refused = None
    # count_tokens spends the same requests-per-minute bucket and answers at once.
    for _ in range(200):
        try:
            client.messages.count_tokens(model=MODEL, messages=MESSAGES)
        except anthropic.RateLimitError as e:
            refused = e
            break
    assert refused is not None, "never refused"
    assert refused.body["type"] == "error"
    assert refused.body["error"]["type"] == "rate_limit_error"
    wait = float(refused.response.headers["retry-after"])
    assert 1 <= wait <= 2
    time.sleep(wait)
    message = client.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)
    assert message.usage.output_tokens == 1
    # The SDK's own retry loop honours retry-after(-ms) and gets through as well.
    for _ in range(200):
        try:
            client.messages.count_tokens(model=MODEL, messages=MESSAGES)
        except anthropic.RateLimitError:
            break
    started = time.monotonic()
    retrying = sdk(demo, key, retries=3)
    assert retrying.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens > 0
    assert time.monotonic() - started < 5


def test_client_request_id_comes_back_beside_ours(demo):
    client = sdk(demo, demo.fresh_key("msg-id"))
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=MESSAGES,
        extra_headers={"X-Request-ID": "claude-code/42"},
    )
    assert raw.headers["x-client-request-id"] == "claude-code/42"
    assert raw.headers["x-request-id"].startswith("tg-")
    assert raw.parse().model == MODEL
