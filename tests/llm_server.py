"""A real OpenAI-compatible chat server on loopback, for tests (and by hand: ``python tests/llm_server.py``).

`ChatServer` answers ``POST /v1/chat/completions`` in the OpenAI response format (with ``usage``)
from a back end: `local_backend` serves a `workbench.llm.LocalChatClient` (the embedded
SmolLM2 by default), `echo_backend` answers instantly with a deterministic text. It counts
requests and the maximum number handled at once, records bodies and headers, and can be
scripted to fail first (``script=[Reply(503), ...]``) to exercise a client's retry logic.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A back end: request JSON -> (reply text, prompt tokens, completion tokens, finish reason).
Backend = Callable[[dict[str, Any]], tuple[str, int, int, str]]


@dataclass
class Reply:
    """A scripted reply: status, body (str, or a dict sent as JSON) and headers; ``delay`` seconds first."""

    status: int = 200
    body: Any = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def echo_backend(request: dict[str, Any]) -> tuple[str, int, int, str]:
    """Reply ``echo: <last user message>``; token counts are whitespace word counts."""
    msgs = request.get("messages") or []
    last = msgs[-1]["content"] if msgs else ""
    text = f"echo: {last}"
    prompt = sum(len(m.get("content", "").split()) for m in msgs)
    return text, prompt, len(text.split()), "stop"


def local_backend(client: Any = None) -> Backend:
    """A back end that runs a `LocalChatClient` (the embedded model by default), cache off."""
    from workbench.llm import LocalChatClient

    client = client or LocalChatClient(cache=None)

    def run(request: dict[str, Any]) -> tuple[str, int, int, str]:
        r = client.chat(request["messages"], max_tokens=int(request.get("max_tokens") or 256),
                        temperature=float(request.get("temperature") or 0.0), seed=request.get("seed", 0),
                        stop=request.get("stop"))
        return r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason or "stop"

    run.client = client  # type: ignore[attr-defined]
    return run


class ChatServer:
    """A threaded HTTP server on 127.0.0.1 (free port) speaking the chat-completions protocol.

    ``script`` replies are used first, one per request, then the ``backend`` answers.
    ``delay`` holds each backend reply (to measure concurrency). ``usage=False`` leaves ``usage``
    out of replies. Counters: ``requests``, ``max_concurrent``; records: ``bodies``, ``headers``.
    """

    def __init__(self, backend: Backend = echo_backend, *, script: Sequence[Reply] = (), delay: float = 0.0,
                 usage: bool = True, model: str = "test-model", port: int = 0):
        self.backend = backend
        self.script = list(script)
        self.delay = delay
        self.usage = usage
        self.model = model
        self.requests = 0
        self.max_concurrent = 0
        self._active = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._backend_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The ``/v1`` root, as an OpenAI client's base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.max_concurrent = 0
            self.bodies.clear()
            self.headers.clear()

    def _answer(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted
        if self.delay:
            time.sleep(self.delay)
        with self._backend_lock:  # an in-process model runs one request at a time
            text, pt, ct, finish = self.backend(request)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
        }
        if self.usage:
            body["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        return Reply(200, body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, reply: Reply) -> None:
                body = reply.body if isinstance(reply.body, (str, bytes)) else json.dumps(reply.body)
                data = body.encode("utf-8") if isinstance(body, str) else body
                self.send_response(reply.status)
                ctype = "application/json" if not isinstance(reply.body, str) or reply.body[:1] in "{[" else "text/plain"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    self._send(Reply(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]}))
                else:
                    self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                    return
                with server._lock:
                    server.requests += 1
                    server._active += 1
                    server.max_concurrent = max(server.max_concurrent, server._active)
                    server.headers.append(dict(self.headers.items()))
                done = False

                def finish() -> None:  # before replying: the client may send its next request at once
                    nonlocal done
                    if not done:
                        done = True
                        with server._lock:
                            server._active -= 1

                try:
                    try:
                        request = json.loads(raw)
                        if not isinstance(request.get("messages"), list):
                            raise ValueError("'messages' must be a list")
                    except ValueError as exc:
                        finish()
                        self._send(Reply(400, {"error": {"message": f"bad request: {exc}"}}))
                        return
                    with server._lock:
                        server.bodies.append(request)
                    reply = server._answer(request)
                    if reply.delay:
                        time.sleep(reply.delay)
                    finish()
                    try:
                        self._send(reply)
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                        pass
                finally:
                    finish()

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve the embedded SmolLM2 as an OpenAI-compatible chat endpoint.")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--echo", action="store_true", help="answer with an echo instead of the model")
    args = ap.parse_args()
    srv = ChatServer(echo_backend if args.echo else local_backend(), port=args.port,
                     model="SmolLM2-135M-Instruct")
    print(f"serving on {srv.url} (Ctrl-C stops)")
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
