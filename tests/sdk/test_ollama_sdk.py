"""The official `ollama` Python client against the demo's /api/* (translated to the replicas'
chat/completions): list, chat streamed and not, generate, and ResponseError for an unknown
model and a bad key. The key goes as `Authorization: Bearer`, as the client sends it."""


import httpx
import ollama
import pytest

MODEL = "llama-3.1-8b"  # cluster vllm-a in conf/demo.toml
MESSAGES = [{"role": "user", "content": "Say hello to the fleet"}]


def client(demo, key):
    return ollama.Client(
        host=f"http://127.0.0.1:{demo.proxy_port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_list_shows_the_aliases_the_key_may_use(demo):
    only = demo.fresh_key("ol-list", models=[MODEL])
    names = [m.model for m in client(demo, only).list().models]
    assert names == [MODEL]
    everything = [m.model for m in client(demo, demo.fresh_key("ol-all")).list().models]
    assert MODEL in everything and len(everything) > 1


def test_chat_not_streamed_is_metered_as_its_eval_count(demo):
    c = client(demo, demo.fresh_key("ol-chat"))
    reply = c.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 8})
    assert reply.model == MODEL
    assert reply.done and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.eval_count == 8
    assert reply.total_duration > 0
    usage = demo.wait_usage("ol-chat", 1)
    assert usage["completion_tokens"] == reply.eval_count
    assert usage["prompt_tokens"] == reply.prompt_eval_count


def test_chat_streams_incrementally_and_ends_with_done(demo):
    c = client(demo, demo.fresh_key("ol-stream"))
    parts = list(c.chat(model=MODEL, messages=MESSAGES, stream=True, options={"num_predict": 12}))
    assert len(parts) >= 3
    assert all(not p.done for p in parts[:-1])
    text = "".join(p.message.content for p in parts)
    assert text.strip()
    last = parts[-1]
    assert last.done and last.eval_count == 12
    assert all(p.model == MODEL for p in parts), "every line names the alias"
    usage = demo.wait_usage("ol-stream", 1)
    assert usage["completion_tokens"] == 12


def test_generate_streamed_and_not(demo):
    c = client(demo, demo.fresh_key("ol-gen"))
    reply = c.generate(model=MODEL, prompt="Once upon a time", options={"num_predict": 5})
    assert reply.done and reply.response.strip() and reply.eval_count == 5
    parts = list(c.generate(model=MODEL, prompt="Once", stream=True, options={"num_predict": 4}))
    assert parts[-1].done and parts[-1].eval_count == 4
    assert "".join(p.response for p in parts).strip()


def test_unknown_model_and_bad_key_raise_response_error(demo):
    c = client(demo, demo.fresh_key("ol-err"))
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="no-such-model", messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.error == "model 'no-such-model' not found"
    with pytest.raises(ollama.ResponseError) as e:
        list(c.chat(model="no-such-model", messages=MESSAGES, stream=True))
    assert e.value.status_code == 404
    bad = client(demo, "tg-not-a-real-key")
    with pytest.raises(ollama.ResponseError) as e:
        bad.list()
    assert e.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as e:
        bad.generate(model=MODEL, prompt="x")
    assert e.value.status_code == 401


def test_client_request_id_comes_back_beside_ours(demo):
    """The ollama client hides response headers: the same call by httpx, which it is built on."""
    key = demo.fresh_key("ol-id")
    reply = httpx.post(
        f"http://127.0.0.1:{demo.proxy_port}/api/chat",
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "open-webui/9"},
        json={"model": MODEL, "messages": MESSAGES, "stream": False,
              "options": {"num_predict": 3}},
        timeout=60,
    )
    assert reply.status_code == 200
    assert reply.headers["x-client-request-id"] == "open-webui/9"
    assert reply.headers["x-request-id"].startswith("tg-")
    assert reply.json()["model"] == MODEL
