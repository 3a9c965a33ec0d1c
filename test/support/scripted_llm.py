"""A scripted, OpenAI-compatible chat-completions server for integration tests.

Tests point rosa at ``ScriptedLLM().start().url`` instead of a real LLM. Every
``POST /v1/chat/completions`` is recorded and answered by a *handler*, a plain
function ``handler(req: dict) -> Reply | Calls | HttpError | Hang | Drip`` where
``req`` is the parsed JSON request body. Requests with ``"stream": true`` (what
rosa sends) are answered with server-sent ``chat.completion.chunk`` events, as
OpenAI does; the others with one ``chat.completion``.

    with ScriptedLLM(default_handler()) as llm:
        ...  # run rosa against llm.url
        llm.wait_for(lambda rs: any(r["role"] == "worker" for r in rs), 10)

Stdlib only; serves on 127.0.0.1 from a daemon thread.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = [
    "ScriptedLLM", "Reply", "ToolCall", "Calls", "HttpError", "Hang", "Drip",
    "last_message", "notes", "tool_names", "tool_results", "system_prompt",
    "default_handler",
]

MODEL_ID = "scripted"


# --------------------------------------------------------------------------
# What a handler can return
# --------------------------------------------------------------------------

@dataclass
class Reply:
    """A plain assistant message (finish_reason "stop")."""
    content: str


@dataclass
class ToolCall:
    """One tool call. A dict ``arguments`` is JSON-encoded; a str is sent
    verbatim (so tests can send malformed JSON)."""
    name: str
    arguments: dict | str = field(default_factory=dict)


@dataclass
class Calls:
    """An assistant message carrying tool calls (finish_reason "tool_calls")."""
    calls: list[ToolCall]
    content: str | None = None


@dataclass
class HttpError:
    """Answer with this HTTP status and an OpenAI-style error body, or with ``text`` as a
    plain-text body (what proxies and some providers send, e.g. for a 429); ``headers`` are
    added (e.g. ``{"Retry-After": "1"}``)."""
    status: int
    message: str = "scripted error"
    text: str | None = None
    headers: dict = field(default_factory=dict)


@dataclass
class Hang:
    """Sleep ``seconds`` before answering ``Reply("late")`` (for timeout tests)."""
    seconds: float


@dataclass
class Drip:
    """A stream that starts and never ends: every ``interval`` seconds one more piece of
    ``content`` (a content delta), or a keep-alive comment when ``content`` is "", for ever (or
    ``count`` times, then the stream just stops without finishing). A dead-slow provider, to check
    that one call cannot hold the kernel."""
    interval: float = 1.0
    content: str = ""
    count: int | None = None


Handler = Callable[[dict], Any]


# --------------------------------------------------------------------------
# Helpers for writing handlers
# --------------------------------------------------------------------------

def _text(content: Any) -> str:
    """Message content as text (content may be a str, None, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def last_message(req: dict) -> dict:
    """The last message of the conversation ({} if there is none). System notes that follow it
    are skipped: rosa adds one after tool results (the kernel's nudge for a plain-text reply) and
    when it asks for a final report; see ``notes`` for them."""
    msgs = [m for m in req.get("messages") or []]
    while len(msgs) > 1 and msgs[-1].get("role") == "system":
        msgs.pop()
    return msgs[-1] if msgs else {}


def notes(req: dict) -> list[str]:
    """The system notes after the conversation's last message (see ``last_message``)."""
    out = []
    for m in reversed(req.get("messages") or []):
        if m.get("role") != "system" or m is (req.get("messages") or [None])[0]:
            break
        out.insert(0, _text(m.get("content")))
    return out


def tool_names(req: dict) -> list[str]:
    """Names of the function tools offered in the request."""
    return [((t or {}).get("function") or {}).get("name", "")
            for t in req.get("tools") or []]


def tool_results(req: dict) -> list[str]:
    """Contents of all role=="tool" messages, in order."""
    return [_text(m.get("content")) for m in req.get("messages") or []
            if m.get("role") == "tool"]


def system_prompt(req: dict) -> str:
    """Content of the first system message, or ""."""
    for m in req.get("messages") or []:
        if m.get("role") == "system":
            return _text(m.get("content"))
    return ""


def worker_task(req: dict) -> str:
    """A worker's task: its first user message is "## Your task\n<task>\n\n<start message>" (the
    system prompt is the same for every task on the same robots, so its prefix stays cached)."""
    for m in req.get("messages") or []:
        if m.get("role") == "user":
            text = _text(m.get("content"))
            return text.removeprefix("## Your task\n").rsplit("\n\n", 1)[0] if text.startswith("## Your task\n") else ""
    return ""


def _role_of(req: dict) -> str:
    return "kernel" if "launch_process" in tool_names(req) else "worker"


def default_handler(worker_tool: str = "wave",
                    worker_args: dict | None = None,
                    robots: tuple[str, ...] | list[str] = ("testbot",)) -> Handler:
    """A handler scripting a typical run.

    Kernel (offers ``launch_process``):
      "[User typed] X" / "[User said] X" -> launch_process(system_prompt="Task: X", robots)
      "[Worker callback] X"             -> Reply("Worker finished: X")
      last message is a tool result R   -> Reply("OK: R")
    Worker:
      no tool result yet -> call ``worker_tool(**worker_args)``
      otherwise          -> Reply("Done: <last tool result>")
    (X is the text after the bracket prefix, stripped.)
    """
    worker_args = {"times": 2} if worker_args is None else dict(worker_args)
    robots = list(robots)

    def handler(req: dict) -> Any:
        last = last_message(req)
        role, text = last.get("role"), _text(last.get("content"))
        if _role_of(req) == "kernel":
            if role == "user":
                for prefix in ("[User typed]", "[User said]"):
                    if text.startswith(prefix):
                        task = text[len(prefix):].strip()
                        return Calls([ToolCall("launch_process", {
                            "system_prompt": f"Task: {task}", "robots": robots})])
                if text.startswith("[Worker callback]"):
                    return Reply("Worker finished: " + text[len("[Worker callback]"):].strip())
            if role == "tool":
                return Reply("OK: " + text)
            return Reply("(scripted kernel: nothing to do)")
        results = tool_results(req)
        if not results:
            return Calls([ToolCall(worker_tool, dict(worker_args))])
        return Reply("Done: " + results[-1])

    return handler


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class ScriptedLLM:
    """OpenAI-compatible server answering chat completions via ``handler``.

    ``handler`` may be replaced at any time (``llm.handler = ...``).
    ``requests`` holds one record per chat request:
    ``{"t": monotonic, "wall": time.time(), "role": "kernel"|"worker", "body": req}``.
    """

    def __init__(self, handler: Handler | None = None):
        self.handler: Handler = handler or default_handler()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)       # chatcmpl-<n>
        self._call_ids = itertools.count(1)  # call_<n>
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "ScriptedLLM":
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_request_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="ScriptedLLM", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes up any Hang
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "ScriptedLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "ScriptedLLM not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- recorded requests -------------------------------------------------

    def _record(self, req: dict) -> None:
        rec = {"t": time.monotonic(), "wall": time.time(), "role": _role_of(req), "body": req}
        with self._lock:
            self.requests.append(rec)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.requests)

    def requests_by(self, role: str) -> list[dict]:
        return [r for r in self.snapshot() if r["role"] == role]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
        """Poll until ``predicate(requests)`` is true; return that snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.snapshot()
            if predicate(reqs):
                return reqs
            if time.monotonic() >= deadline:
                summary = "\n".join(
                    f"  [{i}] {r['role']}: last={_text(last_message(r['body']).get('content'))[:120]!r}"
                    for i, r in enumerate(reqs)) or "  (none)"
                raise TimeoutError(f"ScriptedLLM.wait_for: condition not met after {timeout}s; "
                                   f"{len(reqs)} request(s) recorded:\n{summary}")
            time.sleep(0.02)

    # -- building responses --------------------------------------------------

    def _completion(self, req: dict, result: Any) -> dict:
        n = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(result, Reply):
            message["content"], finish = result.content, "stop"
        elif isinstance(result, Calls):
            message["content"], finish = result.content, "tool_calls"
            message["tool_calls"] = [{
                "id": f"call_{next(self._call_ids)}",
                "type": "function",
                "function": {"name": c.name,
                             "arguments": c.arguments if isinstance(c.arguments, str)
                             else json.dumps(c.arguments)},
            } for c in result.calls]
        else:
            raise TypeError(f"handler returned {result!r}; expected Reply, Calls, HttpError or Hang")
        # Rough token counts (~4 chars per token) - only need to be plausible ints.
        prompt = max(1, len(json.dumps(req.get("messages", []))) // 4)
        completion = max(1, len(json.dumps(message)) // 4)
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", MODEL_ID),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }


def _error_body(message: str, type_: str = "server_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _make_request_handler(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add 40 ms.
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"  # keep-alive; every response has Content-Length

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
            text = isinstance(body, str)
            data = (body if text else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)

        def _sse_start(self) -> None:
            # No Content-Length: the stream ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        def _sse(self, obj: dict | str) -> None:
            line = obj if isinstance(obj, str) else "data: " + json.dumps(obj) + "\n\n"
            self.wfile.write(line.encode())
            self.wfile.flush()

        def _stream(self, req: dict, result: Any) -> None:
            """A finished answer as chat.completion.chunk events."""
            full = llm._completion(req, result)
            msg = full["choices"][0]["message"]
            base = {k: full[k] for k in ("id", "created", "model")}
            base["object"] = "chat.completion.chunk"

            def chunk(delta: dict, finish: str | None = None) -> dict:
                return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])

            self._sse_start()
            self._sse(chunk({"role": "assistant", "content": ""}))
            content = msg.get("content") or ""
            for part in (content[: len(content) // 2], content[len(content) // 2:]):
                if part:
                    self._sse(chunk({"content": part}))
            for i, c in enumerate(msg.get("tool_calls") or []):
                args = c["function"]["arguments"]
                self._sse(chunk({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                                 "function": {"name": c["function"]["name"], "arguments": args[: len(args) // 2]}}]}))
                self._sse(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[len(args) // 2:]}}]}))
            last = chunk({}, full["choices"][0]["finish_reason"])
            last["usage"] = full["usage"]
            self._sse(last)
            self._sse("data: [DONE]\n\n")

        def _drip(self, d: "Drip") -> None:
            self._sse_start()
            n = 0
            try:
                while d.count is None or n < d.count:
                    if llm._stopping.wait(d.interval):
                        return
                    if d.content:
                        self._sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": d.content}, "finish_reason": None}]})
                    else:
                        self._sse(": still working\n\n")
                    n += 1
            except OSError:
                return  # the client hung up

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{
                    "id": MODEL_ID, "object": "model", "created": 0, "owned_by": "rosa-test"}]})
            else:
                self._send(404, _error_body(f"no route GET {self.path}", "invalid_request_error"))

        def do_POST(self) -> None:
            # Always drain the body so the keep-alive connection stays in sync.
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
                return self._send(404, _error_body(f"no route POST {self.path}", "invalid_request_error"))
            try:
                req = json.loads(raw)
                assert isinstance(req, dict)
            except Exception:
                return self._send(400, _error_body("body is not a JSON object", "invalid_request_error"))
            llm._record(req)
            try:
                result = llm.handler(req)
                if isinstance(result, Hang):
                    if llm._stopping.wait(result.seconds):
                        self.close_connection = True
                        return  # server stopping: drop the request
                    result = Reply("late")
                if isinstance(result, HttpError):
                    body = result.text if result.text is not None else _error_body(result.message)
                    return self._send(result.status, body, result.headers)
                if isinstance(result, Drip):
                    return self._drip(result)
                if req.get("stream"):
                    return self._stream(req, result)
                self._send(200, llm._completion(req, result))
            except OSError:
                self.close_connection = True  # the client hung up
            except Exception as e:  # a broken handler should fail loudly, not hang the client
                traceback.print_exc()
                self._send(500, _error_body(f"ScriptedLLM handler error: {e!r}"))

    return RequestHandler
