"""workbench.llm: the OpenAI-compatible HTTP client against real loopback servers, the local
in-process back end, the response cache, and the parsing helpers."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch
from llm_server import ChatServer, Reply, echo_backend, local_backend

from workbench.llm import (
    ChatClient,
    ChatResponse,
    LLMError,
    LocalChatClient,
    OpenAIClient,
    ResponseCache,
    default_cache_path,
    estimate_tokens,
    llm_client,
    parse_json_reply,
    retry_parse,
)

KEY = "sk-test-SECRET-0123456789abcdefXYZ"
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def server():
    with ChatServer(echo_backend) as srv:
        yield srv


def client_for(srv: ChatServer, tmp_path: Path | None = None, **kw) -> OpenAIClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_retries", 3)
    return OpenAIClient(srv.url, "test-model", cache=(tmp_path / "cache") if tmp_path else None, **kw)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- HTTP round trips --------------------------------------------------------------------------------

def test_round_trip_sends_openai_request_and_reads_usage(server: ChatServer) -> None:
    c = client_for(server, api_key=KEY)
    r = c.chat(user("hello there world"), max_tokens=7, temperature=0.5, seed=3, stop=["\n"])
    assert r.text == "echo: hello there world"
    assert (r.prompt_tokens, r.completion_tokens) == (3, 4)  # the server's own usage numbers
    assert not r.cached and not r.estimated and r.finish_reason == "stop"
    body = server.bodies[0]
    assert body["model"] == "test-model" and body["messages"] == user("hello there world")
    assert (body["max_tokens"], body["temperature"], body["seed"], body["stop"]) == (7, 0.5, 3, ["\n"])
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert c.usage == {"requests": 1, "cache_hits": 0, "prompt_tokens": 3, "completion_tokens": 4,
                       "cached_prompt_tokens": 0, "cached_completion_tokens": 0, "retries": 0}
    c.reset_usage()
    assert c.usage["requests"] == 0


def test_base_url_forms_reach_the_same_endpoint(server: ChatServer) -> None:
    root = server.url[: -len("/v1")]
    for base in (root, root + "/", server.url, server.url + "/chat/completions"):
        assert OpenAIClient(base, "m", cache=None).chat(user("x")).text == "echo: x"
    assert server.requests == 4


def test_missing_usage_is_estimated() -> None:
    with ChatServer(echo_backend, usage=False) as srv:
        r = client_for(srv).chat(user("abcdefgh"))
    assert r.estimated
    assert r.completion_tokens == estimate_tokens("echo: abcdefgh") == 4
    assert r.prompt_tokens == estimate_tokens("abcdefgh") + 4 + 2


def test_no_key_sends_no_authorization(server: ChatServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client_for(server, config_path=tmp_path / "none.json").chat(user("x"))
    assert "Authorization" not in server.headers[0]


# -- cache ---------------------------------------------------------------------------------------------

def test_cache_rerun_makes_no_request(server: ChatServer, tmp_path: Path) -> None:
    c = client_for(server, tmp_path)
    a = c.chat(user("one"), max_tokens=5)
    b = c.chat(user("one"), max_tokens=5)
    assert server.requests == 1
    assert not a.cached and b.cached
    assert (b.text, b.prompt_tokens, b.completion_tokens) == (a.text, a.prompt_tokens, a.completion_tokens)
    assert c.usage["requests"] == 1 and c.usage["cache_hits"] == 1
    assert c.usage["cached_prompt_tokens"] == a.prompt_tokens and c.usage["prompt_tokens"] == a.prompt_tokens
    # a new client (a new session) on the same cache file: still no request
    assert client_for(server, tmp_path).chat(user("one"), max_tokens=5).cached
    assert server.requests == 1
    # every key component matters
    for kw in ({"max_tokens": 6}, {"temperature": 0.3}, {"seed": 1}, {"stop": "x"}):
        assert not c.chat(user("one"), **{"max_tokens": 5, **kw}).cached
    assert not c.chat(user("one "), max_tokens=5).cached
    assert not OpenAIClient(server.url, "other-model", cache=tmp_path / "cache").chat(user("one"), max_tokens=5).cached
    assert server.requests == 7
    # cache=False on a call skips the lookup; cache=None on the client turns it off
    assert not c.chat(user("one"), max_tokens=5, cache=False).cached
    off = client_for(server)
    off.chat(user("one"), max_tokens=5)
    off.chat(user("one"), max_tokens=5)
    assert server.requests == 10 and off.cache is None


def test_cache_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: ChatServer) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "wbcache"))
    assert default_cache_path() == tmp_path / "wbcache" / "llm" / "responses.sqlite"
    c = OpenAIClient(server.url, "m", backoff=0.01)
    assert c.cache is not None and c.cache.path == default_cache_path()
    c.chat(user("z"))
    assert c.chat(user("z")).cached and default_cache_path().exists() and len(c.cache) == 1


def test_cache_key_hashes_every_component() -> None:
    base = dict(kind="openai", model="m", messages=user("a"), max_tokens=5, temperature=0.0, seed=0, stop=[])
    k0 = ResponseCache.key(**base)
    assert len(k0) == 64 and k0 == ResponseCache.key(**base)
    changes = dict(kind="local", model="n", messages=user("b"), max_tokens=6, temperature=0.5, seed=1, stop=["x"])
    keys = {ResponseCache.key(**{**base, k: v}) for k, v in changes.items()}
    assert len(keys) == len(changes) and k0 not in keys


_WRITER = textwrap.dedent("""
    import importlib.util, sys
    # workbench/llm/cache.py alone (importing the package would load torch: slow to start)
    spec = importlib.util.spec_from_file_location("llm_alone", sys.argv[3])
    mod = sys.modules["llm_alone"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.ResponseCache(sys.argv[1])
    tag = sys.argv[2]
    for i in range(150):
        c.put(f"{tag}-{i}", {"text": f"{tag}{i}", "n": i})
        assert c.get(f"{tag}-{i}")["text"] == f"{tag}{i}"
""")


def test_cache_is_safe_across_processes_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    import workbench.llm.cache

    src = workbench.llm.cache.__file__
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{j}", src]) for j in range(2)]
    cache = ResponseCache(path)
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(150):
                cache.put(f"{tag}-{i}", {"text": f"{tag}{i}"})
                assert cache.get(f"{tag}-{i}")["text"] == f"{tag}{i}"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{j}",)) for j in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert not errors
    assert len(ResponseCache(path)) == 5 * 150
    assert ResponseCache(path).get("p1-149")["text"] == "p1149"


def test_cache_folder_path_and_damaged_entry(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "dir")
    assert c.path == tmp_path / "dir" / "responses.sqlite"
    c.put("k", {"text": "ok"})
    c._conn().execute("UPDATE responses SET value = '{not json' WHERE key = 'k'")
    assert c.get("k") is None  # a damaged entry is a miss, not a crash


# -- retries and errors --------------------------------------------------------------------------------

def test_503_twice_then_success() -> None:
    with ChatServer(echo_backend, script=[Reply(503, {"error": {"message": "busy"}}), Reply(502, "bad gateway")]) as srv:
        c = client_for(srv, max_retries=3)
        r = c.chat(user("after retries"))
        assert r.text == "echo: after retries"
        assert srv.requests == 3
        assert c.usage["retries"] == 2 and c.usage["requests"] == 1


def test_429_respects_retry_after() -> None:
    with ChatServer(echo_backend, script=[Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})]) as srv:
        c = client_for(srv, backoff=0.01)
        t = time.perf_counter()
        assert c.chat(user("later")).text == "echo: later"
        elapsed = time.perf_counter() - t
    assert srv.requests == 2
    assert 1.0 <= elapsed < 4.0  # waited the server's second, not the 10 ms backoff


def test_retries_exhausted_name_the_last_reason() -> None:
    with ChatServer(echo_backend, script=[Reply(500, {"error": {"message": "boom"}})] * 3) as srv:
        with pytest.raises(LLMError, match=r"after 3 attempt\(s\): HTTP 500: boom") as ei:
            client_for(srv, max_retries=2).chat(user("x"))
        assert srv.requests == 3 and ei.value.url == srv.url + "/chat/completions"


def test_unreachable_port_fails_fast_with_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    c = OpenAIClient(url, "m", api_key=KEY, timeout=1.0, max_retries=2, backoff=0.05, cache=None)
    t = time.perf_counter()
    with pytest.raises(LLMError) as ei:
        c.chat(user("anyone?"))
    assert time.perf_counter() - t < 3.0
    msg = str(ei.value)
    assert f"{url}/chat/completions" in msg and "3 attempt" in msg and "Connection" in msg
    assert KEY not in msg and c.usage["retries"] == 2


def test_timeout_is_retried() -> None:
    slow = Reply(200, {"choices": [{"message": {"content": "too late"}}]}, delay=2.0)
    with ChatServer(echo_backend, script=[slow]) as srv:
        c = client_for(srv, timeout=0.5, max_retries=1)
        assert c.chat(user("quick")).text == "echo: quick"
        assert srv.requests == 2


def test_401_raises_with_server_message_and_no_key() -> None:
    # the server echoes the key back, as some providers do: it must still not reach the user
    err = {"error": {"message": f"Incorrect API key provided: {KEY}. Check your key.", "type": "invalid_request_error"}}
    with ChatServer(echo_backend, script=[Reply(401, err)]) as srv:
        c = client_for(srv, api_key=KEY)
        with pytest.raises(LLMError) as ei:
            c.chat(user("x"))
        assert srv.requests == 1  # not retried
    exc = ei.value
    assert exc.status == 401 and "Incorrect API key provided" in str(exc) and "check the API key" in str(exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert KEY not in text and KEY[:12] not in text and KEY[-8:] not in text


def test_400_is_not_retried_and_quotes_the_server() -> None:
    with ChatServer(echo_backend, script=[Reply(400, {"error": {"message": "max_tokens is too large"}})]) as srv:
        with pytest.raises(LLMError, match="HTTP 400: max_tokens is too large"):
            client_for(srv).chat(user("x"))
        assert srv.requests == 1


def test_malformed_json_is_retried_then_raises() -> None:
    bad = [Reply(200, "this is { not json"), Reply(200, {"choices": []}), Reply(200, {"no": "choices"})]
    with ChatServer(echo_backend, script=bad) as srv:
        with pytest.raises(LLMError, match="malformed reply") as ei:
            client_for(srv, max_retries=2).chat(user("x"))
        assert srv.requests == 3
        assert ei.value.raw == '{"no": "choices"}'
    with ChatServer(echo_backend, script=[Reply(200, "<html>oops</html>")]) as srv:
        assert client_for(srv).chat(user("y")).text == "echo: y"  # retried, then fine
        assert srv.requests == 2


def test_map_keeps_order_and_respects_concurrency() -> None:
    with ChatServer(echo_backend, delay=0.25) as srv:
        c = client_for(srv, concurrency=3)
        batch = [user(f"prompt {i}") for i in range(9)]
        t = time.perf_counter()
        out = c.map(batch, progress=False)
        elapsed = time.perf_counter() - t
        assert [r.text for r in out] == [f"echo: prompt {i}" for i in range(9)]
        assert srv.requests == 9 and srv.max_concurrent == 3
        assert elapsed < 9 * 0.25 * 0.6  # ran in parallel (3 waves of 0.25 s, not 9)
        # the limit also holds across threads calling chat directly
        srv.reset()
        threads = [threading.Thread(target=c.chat, args=(user(f"t{i}"),)) for i in range(6)]
        for t_ in threads:
            t_.start()
        for t_ in threads:
            t_.join()
        assert srv.requests == 6 and srv.max_concurrent == 3
        assert c.map([], progress=False) == []


def test_map_raises_the_first_error_in_order() -> None:
    with ChatServer(echo_backend, script=[Reply(400, {"error": {"message": "nope"}})]) as srv:
        c = client_for(srv, concurrency=1)
        with pytest.raises(LLMError, match="nope"):
            c.map([user("a"), user("b")], progress=False)
        assert srv.requests == 1
    with ChatServer(echo_backend, delay=0.2, script=[Reply(400, {"error": {"message": "nope"}})]) as srv:
        c = client_for(srv, concurrency=2)
        with pytest.raises(LLMError, match="nope"):
            c.map([user(f"p{i}") for i in range(12)], progress=False)
        assert srv.requests <= 4  # the queued requests were dropped, not sent
    with pytest.raises(ValueError, match="batch item 1"):
        c.map([user("a"), [{"role": "user"}]], progress=False)


# -- the key never leaks -------------------------------------------------------------------------------

def test_key_sources_and_precedence(server: ChatServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "llm.json"
    cfg.write_text(json.dumps({"api_key": "from-config", "api_keys": {server.url: "from-config-url"}}))
    monkeypatch.setenv("WORKBENCH_LLM_KEY_HOSTS", f"127.0.0.1:{server.port}")  # env keys go only to named hosts
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    monkeypatch.setenv("MY_KEY", "from-my-env")
    client_for(server, config_path=cfg, api_key="explicit").chat(user("1"))
    client_for(server, config_path=cfg).chat(user("2"))
    client_for(server, config_path=cfg, api_key_env="MY_KEY").chat(user("3"))
    monkeypatch.delenv("OPENAI_API_KEY")
    client_for(server, config_path=cfg).chat(user("4"))
    cfg.write_text(json.dumps({"api_key": "from-config", "base_url": server.url}))  # the global key's host
    client_for(server, config_path=cfg).chat(user("5"))
    got = [h.get("Authorization") for h in server.headers]
    assert got == ["Bearer explicit", "Bearer from-env", "Bearer from-my-env", "Bearer from-config-url",
                   "Bearer from-config"]
    # the default config file location follows XDG_CONFIG_HOME
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "interp-workbench").mkdir(parents=True)
    (tmp_path / "xdg" / "interp-workbench" / "llm.json").write_text(
        json.dumps({"api_keys": {f"127.0.0.1:{server.port}": "xdg-key"}}))
    client_for(server).chat(user("6"))
    assert server.headers[-1]["Authorization"] == "Bearer xdg-key"
    cfg.write_text("{broken")
    with pytest.raises(LLMError, match="cannot read the LLM config file"):
        client_for(server, config_path=cfg).chat(user("7"))


def test_key_absent_from_repr_state_cache_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    echo_key = Reply(500, {"error": {"message": f"internal error for key {KEY}"}})
    with ChatServer(echo_backend, script=[echo_key] * 2) as srv:
        c = OpenAIClient(srv.url, "test-model", api_key=KEY, cache=tmp_path / "c", backoff=0.01, max_retries=1)
        with pytest.raises(LLMError) as ei:
            c.chat(user("first"))
        r = c.chat(user("second"))
    texts = [repr(c), str(c), c.spec, json.dumps(c.to_dict()), repr(c.usage), repr(r), repr(c.__dict__),
             str(ei.value), repr(ei.value.raw), "".join(traceback.format_exception(ei.value))]
    for t in texts:
        assert KEY not in t and KEY[:12] not in t
    for f in (tmp_path / "c").iterdir():  # the SQLite file and its WAL/SHM companions
        assert KEY.encode() not in f.read_bytes()
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(c)
    # what goes into notebooks and widget state is to_dict(): it rebuilds the client, key from env
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    again = llm_client(c.to_dict(), cache=None)
    assert isinstance(again, OpenAIClient) and again.url == c.url and KEY not in repr(again)


def test_key_absent_from_an_executed_notebook(tmp_path: Path) -> None:
    """A notebook that makes a client from the environment, shows it and hits a 401 (with verbose
    tracebacks, which print local variables) saves no trace of the key."""
    import nbformat
    from nbclient import NotebookClient

    err = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    with ChatServer(echo_backend, script=[Reply(401, err)]) as srv:
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell("%xmode Verbose\nfrom workbench.llm import llm_client\n"
                                      f"c = llm_client('openai:test-model@{srv.url}', cache=None, max_retries=0)\nc"),
            nbformat.v4.new_code_cell("c.chat([{'role': 'user', 'content': 'hi'}])"),
            nbformat.v4.new_code_cell("c.chat([{'role': 'user', 'content': 'hi'}]).text"),
            nbformat.v4.new_code_cell("c.to_dict(), c.usage"),
        ]
        env_key = {"OPENAI_API_KEY": KEY, "WORKBENCH_LLM_KEY_HOSTS": f"127.0.0.1:{srv.port}"}
        old = {k: os.environ.get(k) for k in env_key}
        os.environ.update(env_key)
        try:
            NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                           resources={"metadata": {"path": str(tmp_path)}}).execute()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"  # the key was used...
    saved = nbformat.writes(nb)
    assert "Incorrect API key provided" in saved and "echo: hi" in saved
    assert KEY not in saved and KEY[:12] not in saved  # ...and is nowhere in the notebook


# -- keys are scoped to their host (issue 11, item 13) -------------------------------------------------

class _Recorder:
    """A loopback server that records the Authorization header of every request, GET or POST."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_env_key_goes_only_to_the_default_host_or_named_hosts(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    none = tmp_path / "none.json"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("WORKBENCH_LLM_KEY_HOSTS", raising=False)
    with ChatServer(echo_backend) as a, ChatServer(echo_backend) as b:
        client_for(a, config_path=none).chat(user("1"))
        client_for(b, config_path=none, api_key_env="OPENAI_API_KEY").chat(user("2"))
        assert "Authorization" not in a.headers[0] and "Authorization" not in b.headers[0]
        # the default OpenAI host gets it (checked without a request)
        assert "key=set" in repr(OpenAIClient(cache=None, config_path=none))
        assert "key=none" in repr(OpenAIClient("https://api.openai.com.evil.example/v1", cache=None, config_path=none))
        # the user names the host the key belongs to: that host gets it, the other never does
        monkeypatch.setenv("WORKBENCH_LLM_KEY_HOSTS", f"example.org, 127.0.0.1:{a.port}")
        client_for(a, config_path=none).chat(user("3"))
        client_for(b, config_path=none).chat(user("4"))
        assert a.headers[1]["Authorization"] == f"Bearer {KEY}"
        assert "Authorization" not in b.headers[1]
        # an explicit api_key= belongs to the client it is given to
        client_for(b, config_path=none, api_key="explicit").chat(user("5"))
        assert b.headers[2]["Authorization"] == "Bearer explicit"
    assert all(KEY not in json.dumps(h) for h in b.headers)


def test_config_keys_are_per_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = tmp_path / "llm.json"
    with ChatServer(echo_backend) as a, ChatServer(echo_backend) as b:  # same host name, another port
        cfg.write_text(json.dumps({"api_key": "global-for-openai", "api_keys": {f"127.0.0.1:{a.port}": "key-a"}}))
        client_for(a, config_path=cfg).chat(user("1"))
        client_for(b, config_path=cfg).chat(user("2"))
        assert a.headers[0]["Authorization"] == "Bearer key-a"
        assert "Authorization" not in b.headers[0]  # neither key-a nor the global key
        assert "key=set" in repr(OpenAIClient(cache=None, config_path=cfg))  # the global key: OpenAI's host
        # a URL entry needs the same scheme, host and port; the global key follows the file's base_url
        cfg.write_text(json.dumps({"api_key": "global-b", "base_url": b.url,
                                   "api_keys": {a.url.replace("http:", "https:"): "tls-only"}}))
        client_for(a, config_path=cfg).chat(user("3"))
        client_for(b, config_path=cfg).chat(user("4"))
        assert "Authorization" not in a.headers[1]
        assert b.headers[1]["Authorization"] == "Bearer global-b"
        assert "key=none" in repr(OpenAIClient(cache=None, config_path=cfg))


def test_a_redirect_does_not_carry_the_key_to_another_host(tmp_path: Path) -> None:
    rec = _Recorder()
    try:
        target = f"http://127.0.0.1:{rec.port}/v1/chat/completions"
        with ChatServer(echo_backend, script=[Reply(302, "", {"Location": target})]) as srv:
            with pytest.raises(LLMError, match="redirects are not followed"):
                client_for(srv, api_key=KEY).chat(user("x"))
            assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"
    finally:
        rec.close()
    assert rec.seen == []  # the other host saw no request at all, let alone the key


def test_401_says_why_no_key_was_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("WORKBENCH_LLM_KEY_HOSTS", raising=False)
    with ChatServer(echo_backend, script=[Reply(401, {"error": {"message": "no key"}})]) as srv:
        with pytest.raises(LLMError, match="WORKBENCH_LLM_KEY_HOSTS") as ei:
            client_for(srv, config_path=tmp_path / "none.json").chat(user("x"))
    assert f"127.0.0.1:{srv.port}" in str(ei.value) and KEY not in str(ei.value)


def test_plain_http_to_a_remote_host_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("tried to connect")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for url in ("http://example.com/v1", "http://10.0.0.5:8000", "http://127.example.com/v1",
                "http://user:pw@api.openai.com/v1"):
        with pytest.raises(LLMError, match="allow_insecure_http=True") as ei:
            OpenAIClient(url, "m", cache=None)
        assert "pw" not in str(ei.value)
        with pytest.raises(LLMError, match="plain http"):
            llm_client(f"openai:m@{url}", cache=None)
    for url in ("http://localhost:9/v1", "http://127.0.0.2:9", "http://[::1]:9/v1", "https://example.com/v1"):
        OpenAIClient(url, "m", cache=None)  # loopback or TLS: fine
    c = OpenAIClient("http://example.com/v1", "m", cache=None, allow_insecure_http=True)  # the user opts in
    assert c.to_dict()["allow_insecure_http"] is True
    assert llm_client(c.to_dict(), cache=None).url == c.url
    assert "allow_insecure_http" not in OpenAIClient(cache=None).to_dict()
    assert "key=none" in repr(c)  # and the environment key still stays with OpenAI's host


# -- factory and validation ---------------------------------------------------------------------------

def test_llm_client_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = llm_client("openai:gpt-x@http://127.0.0.1:9/v1", cache=None)
    assert isinstance(c, OpenAIClient) and c.model_name == "gpt-x" and c.url == "http://127.0.0.1:9/v1/chat/completions"
    assert llm_client(c.spec, cache=None).url == c.url
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:7/v1")
    assert llm_client("openai:m2", cache=None).url == "http://127.0.0.1:7/v1/chat/completions"
    monkeypatch.delenv("OPENAI_BASE_URL")
    cfg = tmp_path / "llm.json"
    cfg.write_text(json.dumps({"base_url": "http://127.0.0.1:8"}))
    assert llm_client("openai:m3", cache=None, config_path=cfg).url == "http://127.0.0.1:8/v1/chat/completions"
    loc = llm_client(cache=None)
    assert isinstance(loc, LocalChatClient) and loc._model is None  # loads lazily
    assert loc.spec == "local" and llm_client("local:some/name", cache=None).spec == "local:some/name"
    assert llm_client(c) is c
    with pytest.raises(ValueError, match="unknown LLM spec"):
        llm_client("anthropic:claude")
    with pytest.raises(ValueError, match="names no model"):
        llm_client("openai:@http://x")
    with pytest.raises(ValueError, match="http"):
        OpenAIClient("ftp://x", "m", cache=None)
    # the user info in a URL never shows
    hidden = OpenAIClient("http://user:pw-SECRET@127.0.0.1:9/v1?key=SECRET", "m", cache=None)
    assert "SECRET" not in repr(hidden) + hidden.spec + json.dumps(hidden.to_dict())


def test_chat_validates_input(server: ChatServer) -> None:
    c = client_for(server)
    with pytest.raises(TypeError, match="not a string"):
        c.chat("hello")
    with pytest.raises(ValueError, match="role"):
        c.chat([{"content": "x"}])
    with pytest.raises(ValueError, match="unknown role"):
        c.chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens"):
        c.chat(user("x"), max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        c.chat(user("x"), temperature=-1)
    with pytest.raises(ValueError, match="stop"):
        c.chat(user("x"), stop=[""])
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIClient(server.url, "m", concurrency=0)
    assert server.requests == 0


# -- parsing helpers ----------------------------------------------------------------------------------

def test_parse_json_reply_finds_the_object() -> None:
    assert parse_json_reply('Sure! {"explanation": "commas", "score": 3}', ["explanation"]) == {
        "explanation": "commas", "score": 3}
    fenced = 'Here:\n```json\n{"explanation": "a {brace} inside", "score": 0.5,}\n```\nDone.'
    assert parse_json_reply(fenced, {"explanation": str, "score": float})["explanation"] == "a {brace} inside"
    # the first object lacks the key; the second has it
    two = 'Example {"x": 1} then the answer {"explanation": "years", "x": 2}'
    assert parse_json_reply(two, ["explanation"]) == {"explanation": "years", "x": 2}
    assert parse_json_reply('{"a": {"b": 1}}', ["a"]) == {"a": {"b": 1}}
    assert parse_json_reply("\u201cno\u201d {\u201cexplanation\u201d: \u201cok\u201d}", ["explanation"]) == {"explanation": "ok"}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json_reply("I cannot answer that.", ["explanation"])
    with pytest.raises(ValueError, match="missing keys"):
        parse_json_reply('{"other": 1}', ["explanation"])
    with pytest.raises(ValueError, match="wrong types"):
        parse_json_reply('{"score": "high"}', {"score": float})
    with pytest.raises(ValueError, match="wrong types"):
        parse_json_reply('{"score": true}', {"score": float})


class ScriptedClient(ChatClient):
    """A back end that replies from a list (exercises retry_parse's own logic)."""

    kind = "scripted"

    def __init__(self, replies: list[str]):
        super().__init__("scripted", cache=None)
        self.replies = list(replies)
        self.seen: list[list[dict[str, str]]] = []

    def _complete(self, messages, *, max_tokens, temperature, seed, stop) -> ChatResponse:
        self.seen.append(messages)
        return ChatResponse(self.replies.pop(0), 1, 1, False, "scripted")


def test_retry_parse_reasks_then_succeeds() -> None:
    c = ScriptedClient(["no json here", '{"wrong": 1}', '{"explanation": "dates"}'])
    value, resp = retry_parse(c, user("explain"), lambda t: parse_json_reply(t, ["explanation"])["explanation"])
    assert value == "dates" and resp.text == '{"explanation": "dates"}'
    assert len(c.seen) == 3 and c.seen[0] == user("explain")
    second = c.seen[1]
    assert second[1] == {"role": "assistant", "content": "no json here"}
    assert second[2]["role"] == "user" and "no JSON object found" in second[2]["content"]
    assert len(c.seen[2]) == 5


def test_retry_parse_gives_up_with_last_raw_output() -> None:
    c = ScriptedClient(["bad 1", "bad 2", "bad 3 final"])
    with pytest.raises(LLMError, match="after 3 attempt") as ei:
        retry_parse(c, user("explain"), lambda t: parse_json_reply(t, ["explanation"]))
    assert ei.value.raw == "bad 3 final" and "bad 3 final" in str(ei.value)
    with pytest.raises(ValueError):
        retry_parse(c, user("x"), int, attempts=0)


def test_facade_and_error_bases() -> None:
    import workbench.llm as llm
    from workbench.core.errors import WorkbenchError

    assert all(hasattr(llm, name) for name in llm.__all__)
    assert issubclass(LLMError, WorkbenchError) and issubclass(LLMError, RuntimeError)
    # the cache module loads on its own (the cross-process test relies on it): only the standard library at the top
    import ast

    import workbench.llm.cache

    tree = ast.parse(Path(workbench.llm.cache.__file__).read_text())
    assert not [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0]


def test_retry_parse_over_http_is_not_fooled_by_the_cache(tmp_path: Path) -> None:
    replies = iter(["nope", '{"explanation": "x"}'])
    with ChatServer(lambda req: (next(replies), 1, 1, "stop")) as srv:
        c = client_for(srv, tmp_path)
        value, resp = retry_parse(c, user("q"), lambda t: parse_json_reply(t, ["explanation"]))
        assert value == {"explanation": "x"} and srv.requests == 2
        # a rerun replays both turns from the cache
        assert retry_parse(c, user("q"), lambda t: parse_json_reply(t, ["explanation"]))[1].cached
        assert srv.requests == 2


# -- local back end: tiny model (fast) ------------------------------------------------------------

def greedy_reference(hf, ids: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy decoding by hand: full forward passes, argmax, stop at an end token."""
    out = list(ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([out])).logits[0, -1]
            t = int(logits.argmax())
            new.append(t)
            out.append(t)
            if t in eos:
                break
    return new


def test_local_tiny_model_greedy_matches_reference(tiny, tmp_path: Path) -> None:
    m = tiny("llama")
    c = LocalChatClient(m, cache=tmp_path / "c")
    tok = m.tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def function"}]
    ids = c.prompt_ids(msgs)
    # no chat template: the plain layout, tokenized by the tokenizer itself
    assert ids == tok("system: Be brief.\nuser: def function\nassistant:")["input_ids"]
    r = c.chat(msgs, max_tokens=12)
    ref = greedy_reference(m.hf, ids, 12, {tok.eos_token_id})
    assert r.prompt_tokens == len(ids) and r.completion_tokens == len(ref)
    assert r.text == tok.decode([t for t in ref if t != tok.eos_token_id], skip_special_tokens=True)
    assert c.chat(msgs, max_tokens=12).cached and c.usage["requests"] == 1


def test_local_tiny_model_sampling_is_seeded_and_map_is_thread_safe(tiny) -> None:
    m = tiny("gpt2")
    c = LocalChatClient(m, cache=None, concurrency=3)
    state = torch.random.get_rng_state()
    a = c.chat(user("class"), max_tokens=10, temperature=1.5, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert c.chat(user("class"), max_tokens=10, temperature=1.5, seed=5).text == a.text
    texts = {c.chat(user("class"), max_tokens=10, temperature=1.5, seed=s).text for s in range(6)}
    assert len(texts) > 1  # the seed matters
    batch = [user(f"item {i}") for i in range(6)]
    seq = [c.chat(b, max_tokens=6).text for b in batch]
    assert [r.text for r in c.map(batch, max_tokens=6, progress=False)] == seq


# -- embedded model: local back end and a real HTTP server on it ----------------------------------

@pytest.fixture(scope="module")
def smol() -> LocalChatClient:
    c = LocalChatClient(cache=None)
    c.model  # noqa: B018 - load once for the module
    return c


@pytest.mark.embedded
def test_local_embedded_deterministic_with_exact_token_counts(smol: LocalChatClient) -> None:
    tok = smol.tokenizer
    a = smol.chat(MSGS, max_tokens=16)
    b = smol.chat(MSGS, max_tokens=16)
    assert a.text == b.text and "Paris" in a.text
    templ = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=False)
    assert templ.endswith("<|im_start|>assistant\n")
    assert a.prompt_tokens == len(tok(templ, add_special_tokens=False)["input_ids"])
    ref = greedy_reference(smol.model.hf, smol.prompt_ids(MSGS), 16, {tok.convert_tokens_to_ids("<|im_end|>"),
                                                                    tok.eos_token_id})
    assert a.completion_tokens == len(ref)
    assert a.text == tok.decode(ref, skip_special_tokens=True)
    assert a.finish_reason == ("stop" if len(ref) < 16 else "length")
    s = smol.chat(MSGS, max_tokens=16, stop=["Paris"])
    assert "Paris" not in s.text and a.text.startswith(s.text) and s.finish_reason == "stop"


@pytest.mark.embedded
def test_http_round_trip_on_the_embedded_model(smol: LocalChatClient, tmp_path: Path) -> None:
    with ChatServer(local_backend(smol), model="SmolLM2-135M-Instruct") as srv:
        c = OpenAIClient(srv.url, "SmolLM2-135M-Instruct", cache=tmp_path / "c", timeout=60)
        r = c.chat(MSGS, max_tokens=16)
        direct = smol.chat(MSGS, max_tokens=16)
        assert (r.text, r.prompt_tokens, r.completion_tokens) == (
            direct.text, direct.prompt_tokens, direct.completion_tokens)
        assert r.prompt_tokens == len(smol.prompt_ids(MSGS)) and not r.estimated
        again = c.chat(MSGS, max_tokens=16)
        assert again.cached and again.text == r.text and srv.requests == 1
        assert c.usage["requests"] == 1 and c.usage["cache_hits"] == 1
