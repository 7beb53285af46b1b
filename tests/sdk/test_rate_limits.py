"""API keys and 429s as the official OpenAI SDK sees them."""

import time

import httpx
import openai
import pytest

CHAT = "llama-3.1-8b"


def sdk(demo, key, retries=0):
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{demo.proxy_port}/v1", api_key=key, max_retries=retries, timeout=60
    )


def test_missing_and_unknown_keys_are_authentication_errors(demo):
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(demo, "tg-not-a-real-key").models.list()
    assert err.value.code == "invalid_api_key"
    r = httpx.get(f"http://127.0.0.1:{demo.proxy_port}/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_key_restricted_to_a_model_sees_only_it(demo):
    key = demo.create_key({"name": "only-mistral", "models": ["mistral-7b"]})
    client = sdk(demo, key)
    assert [m.id for m in client.models.list().data] == ["mistral-7b"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


def test_rate_limit_error_then_sdk_retry_succeeds_after_retry_after(demo):
    key = demo.create_key({"name": "rpm-60", "limits": {"requests_per_minute": 60}})
    client = sdk(demo, key)
    admitted, refused = 0, None
    # The bucket holds 60 and refills one a second: the burst runs dry after 60 plus one per
    # second the burst took.
    burst_started = time.monotonic()
    for _ in range(200):
        try:
            client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=1)
            admitted += 1
        except openai.RateLimitError as e:
            refused = e
            break
    assert refused is not None, "never refused"
    elapsed = time.monotonic() - burst_started
    assert 60 <= admitted <= 60 + elapsed + 1, (admitted, elapsed)
    assert refused.code == "rate_limit_exceeded"
    assert "requests per minute" in refused.message
    headers = refused.response.headers
    assert 1 <= int(headers["retry-after"]) <= 2
    assert "x-ratelimit-limit-requests" in headers
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    # Refusals land anywhere in the one-second refill period; take one with most of it left so
    # the next call is surely refused too.
    for _ in range(5):
        if wait_ms >= 500:
            break
        time.sleep(wait_ms / 1000)
        try:
            for _ in range(3):
                client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        except openai.RateLimitError as e:
            wait_ms = int(e.response.headers["retry-after-ms"])
    assert wait_ms >= 500
    # With retries on, the SDK is refused once more, waits `retry-after-ms` and gets through.
    started = time.monotonic()
    raw = sdk(demo, key, retries=2).chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    assert raw.parse().choices[0].message.content is not None
    assert raw.http_request.headers.get("x-stainless-retry-count") == "1", "one retry after a 429"
    assert time.monotonic() - started >= 0.5 * wait_ms / 1000
