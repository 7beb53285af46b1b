"""The official OpenAI Python SDK against the demo: the judge of OpenAI compatibility."""

import openai
import pytest

CHAT = "llama-3.1-8b"
CHAT_SERVED = "meta-llama/Llama-3.1-8B-Instruct"
TRT = "mistral-7b"
TRT_SERVED = "mistralai/Mistral-7B-Instruct-v0.3"
EMBED = "text-embedding-small"


def test_non_streaming_chat(client, demo, recorder):
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello there"}], max_tokens=5
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.model == CHAT, "the alias, not the served name"
    seen = demo.all_sim_requests()
    assert [s["model"] for s in seen] == [CHAT_SERVED]
    sent = recorder.bodies[-1]
    assert seen[0]["body_len"] == len(sent) - len(CHAT) + len(CHAT_SERVED)


def test_streaming_chat(client, demo):
    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=12, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {c.model for c in chunks} == {CHAT}, "every chunk names the alias"
    seen = demo.all_sim_requests()
    assert seen[0]["completion_tokens"] == 12


def test_trtllm_cluster_via_completions(client, demo):
    r = client.completions.create(model=TRT, prompt="Once upon a time", max_tokens=4)
    assert r.choices[0].text
    assert r.usage.completion_tokens == 4
    assert r.model == TRT
    assert demo.sim_requests(8103)[0]["model"] == TRT_SERVED


def test_embeddings(client):
    r = client.embeddings.create(model=EMBED, input=["one", "two"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) > 0
    assert r.usage.prompt_tokens > 0
    assert r.model == EMBED


def test_unknown_model_is_not_found(client, demo):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert err.value.type == "invalid_request_error"
    assert demo.all_sim_requests() == []


def test_bad_request_is_raised_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "invalid_model"


def create_model_last(client, content: str):
    """A chat completion through the SDK with `model` as the last key, as SDK v1/v2 serialise
    `create(messages=..., model=...)` (v3 puts `model` first; both must work)."""
    return client.post(
        "/chat/completions",
        body={"messages": [{"role": "user", "content": content}], "max_tokens": 2, "model": CHAT},
        cast_to=openai.types.chat.ChatCompletion,
    )


@pytest.mark.parametrize("size", [1 << 20, 16 << 20], ids=["1MiB", "16MiB"])
def test_large_prompt_with_model_last(client, demo, recorder, size):
    create_model_last(client, "")
    overhead = len(recorder.bodies[-1])
    demo.reset_sims()
    r = create_model_last(client, "a" * (size - overhead))
    assert r.choices[0].message.content
    sent = recorder.bodies[-1]
    assert len(sent) == size
    assert sent.rfind(b'"model"') > sent.find(b'"messages"'), "model is the last key"
    seen = demo.all_sim_requests()
    assert len(seen) == 1
    assert seen[0]["model"] == CHAT_SERVED
    assert seen[0]["body_len"] == len(sent) - len(CHAT) + len(CHAT_SERVED)


def test_sdk_v3_body_order_too(client, demo, recorder):
    client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "b" * (1 << 20)}], max_tokens=2
    )
    sent = recorder.bodies[-1]
    assert demo.all_sim_requests()[0]["body_len"] == len(sent) - len(CHAT) + len(CHAT_SERVED)


def test_oversized_body_is_413(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            messages=[{"role": "user", "content": "a" * (17 << 20)}], model=CHAT
        )
    assert err.value.status_code == 413
    assert err.value.code == "request_too_large"


from conftest import metric_sum, wait_settled  # noqa: E402


def test_stream_without_usage_sees_no_usage_chunk_and_is_metered(client, demo):
    before = metric_sum(demo, "tokengate_requests_total", model=CHAT)
    completion_before = metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="completion")
    prompt_before = metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="prompt")
    chunks = list(
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "count to ten"}], max_tokens=9, stream=True
        )
    )
    assert all(c.choices for c in chunks), "no `choices: []` event reaches the client"
    assert all(c.usage is None for c in chunks), "no usage chunk reaches the client"
    truth = demo.all_sim_requests()
    assert truth[0]["include_usage"] is True, "the proxy asked the replica for usage"
    wait_settled(demo, CHAT, before + 1)
    assert metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="completion") - completion_before == truth[0]["completion_tokens"] == 9
    assert metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="prompt") - prompt_before == truth[0]["prompt_tokens"]


def test_stream_with_include_usage_sees_exactly_one(client, demo):
    before = metric_sum(demo, "tokengate_requests_total", model=CHAT)
    completion_before = metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="completion")
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    truth = demo.all_sim_requests()[0]
    assert with_usage[0].usage.completion_tokens == truth["completion_tokens"] == 6
    assert with_usage[0].usage.prompt_tokens == truth["prompt_tokens"]
    wait_settled(demo, CHAT, before + 1)
    assert metric_sum(demo, "tokengate_tokens_total", model=CHAT, kind="completion") - completion_before == 6


def test_cut_stream_raises_in_the_sdk(client, demo):
    truncated_before = metric_sum(demo, "tokengate_truncated_streams_total", model=CHAT)
    before = metric_sum(demo, "tokengate_requests_total", model=CHAT)
    for replica in (8101, 8102):
        demo.sim_post(replica, "/sim/faults", {"cut_after_tokens": 3})
    try:
        with pytest.raises(openai.APIError) as err:
            for _ in client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=True
            ):
                pass
        assert "truncated" in str(err.value)
    finally:
        for replica in (8101, 8102):
            demo.sim_post(replica, "/sim/faults", {"cut_after_tokens": None})
    wait_settled(demo, CHAT, before + 1)
    assert metric_sum(demo, "tokengate_truncated_streams_total", model=CHAT) == truncated_before + 1


def test_client_request_id_comes_back_beside_ours(client):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        extra_headers={"X-Request-ID": "aiperf/req-1"},
    )
    assert raw.headers["x-client-request-id"] == "aiperf/req-1"
    assert raw.headers["x-request-id"].startswith("tg-")
    assert raw.parse().model == CHAT
