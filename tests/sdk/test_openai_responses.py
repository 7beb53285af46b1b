"""The official OpenAI Python SDK against the demo's /v1/responses (vLLM-flavoured replicas pass
the Responses API through; stored responses live on the replica that created them)."""

import json
import urllib.error
import urllib.request

import openai
import pytest

MODEL = "llama-3.1-8b"  # cluster vllm-a: replicas 8101 and 8102
INPUT = "Say hello to the fleet"


def sdk(demo, key, retries=0):
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{demo.proxy_port}/v1", api_key=key, max_retries=retries,
        timeout=60,
    )


def creator_of(demo, response_id):
    """The demo replica (fixed port) whose simulator stores `response_id` (asked directly)."""
    found = []
    for fixed in (8101, 8102):
        url = f"http://127.0.0.1:{demo.sim_port(fixed)}/v1/responses/{response_id}"
        try:
            with urllib.request.urlopen(url, timeout=10):
                found.append(fixed)
        except urllib.error.HTTPError:
            pass
    assert len(found) == 1, f"{response_id} stored on {found}"
    return found[0]


def test_create_is_metered_and_retrieve_reaches_the_creating_replica(demo):
    client = sdk(demo, demo.fresh_key("resp-create"))
    response = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=8)
    assert response.object == "response" and response.status == "completed"
    assert response.output_text.strip()
    assert response.usage.output_tokens == 8
    assert response.model == MODEL, "the alias, not the served name"
    usage = demo.wait_usage("resp-create", 1)
    assert usage["prompt_tokens"] == response.usage.input_tokens
    assert usage["completion_tokens"] == response.usage.output_tokens
    # Retrieve: routed to the one replica that stored it (the other would answer 404).
    creator_of(demo, response.id)
    for _ in range(4):
        again = client.responses.retrieve(response.id)
        assert again.id == response.id and again.output_text == response.output_text
    # Reading it back is not new usage.
    assert demo.wait_usage("resp-create", 5)["completion_tokens"] == 8


def test_stream_usage_is_what_was_metered(demo):
    client = sdk(demo, demo.fresh_key("resp-stream"))
    deltas, completed = [], None
    with client.responses.stream(model=MODEL, input=INPUT, max_output_tokens=10) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
            if event.type in ("response.created", "response.in_progress"):
                assert event.response.model == MODEL, "stream events name the alias"
    assert len(deltas) == 10 and completed is not None
    assert completed.output_text == "".join(deltas)
    assert completed.model == MODEL
    usage = demo.wait_usage("resp-stream", 1)
    assert usage["prompt_tokens"] == completed.usage.input_tokens
    assert usage["completion_tokens"] == completed.usage.output_tokens == 10


def test_previous_response_id_follows_the_conversation_to_its_replica(demo):
    client = sdk(demo, demo.fresh_key("resp-follow"))

    def replica(fixed):
        return f"/admin/replicas/vllm-a/127.0.0.1:{demo.sim_port(fixed)}"

    # Two conversations started on each replica (the other drained meanwhile), whatever the
    # policy would have chosen.
    firsts = []
    for only, other in ((8101, 8102), (8102, 8101)):
        demo.admin("POST", replica(other) + "/drain")
        try:
            firsts += [
                client.responses.create(model=MODEL, input=f"{INPUT} {n}", max_output_tokens=4)
                for n in range(2)
            ]
        finally:
            demo.admin("POST", replica(other) + "/undrain")
    holders = {first.id: creator_of(demo, first.id) for first in firsts}
    assert sorted(holders.values()) == [8101, 8101, 8102, 8102], holders
    for first in firsts:
        follow = client.responses.create(
            model=MODEL, input="And then?", previous_response_id=first.id, max_output_tokens=4,
        )
        assert follow.previous_response_id == first.id
        assert creator_of(demo, follow.id) == holders[first.id], "ran where its history is"


def test_unknown_previous_response_and_another_keys_id_are_not_found(demo):
    alice = sdk(demo, demo.fresh_key("resp-alice"))
    bob = sdk(demo, demo.fresh_key("resp-bob"))
    mine = alice.responses.create(model=MODEL, input=INPUT, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError) as caught:
        bob.responses.retrieve(mine.id)
    assert caught.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        alice.responses.create(model=MODEL, input="x", previous_response_id="resp_gone")
    assert caught.value.code == "previous_response_not_found"
    assert json.dumps(caught.value.body)


def test_client_request_id_comes_back_beside_ours(demo):
    client = sdk(demo, demo.fresh_key("resp-id"))
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=INPUT, max_output_tokens=4,
        extra_headers={"X-Request-ID": "codex-run/7"},
    )
    assert raw.headers["x-client-request-id"] == "codex-run/7"
    assert raw.headers["x-request-id"].startswith("tg-")
    assert raw.parse().model == MODEL
