"""Self-test for the test-support servers (ScriptedLLM, McpRecorder)."""

import http.client
import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from .mcp_recorder import McpRecorder
from .scripted_llm import (Calls, Drip, Hang, HttpError, Reply, ScriptedLLM, ToolCall,
                           default_handler, system_prompt, tool_names, tool_results)

# mcp 1.26's own pydantic-settings model emits this on import; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydantic_settings")

HTTP_TIMEOUT = 10  # seconds, for every client call in this file

KERNEL_TOOLS = [{"type": "function", "function": {"name": "launch_process", "parameters": {}}}]
WORKER_TOOLS = [{"type": "function", "function": {"name": "wave", "parameters": {}}}]


# --------------------------------------------------------------------------
# ScriptedLLM
# --------------------------------------------------------------------------

@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def post_chat(url, messages, tools=None, model="test-model"):
    """POST a chat completion; return (status, parsed JSON body)."""
    body = {"model": model, "messages": messages}
    if tools is not None:
        body["tools"] = tools
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def check_completion(body, model="test-model"):
    """Assert the generic shape of an OpenAI chat.completion; return the message."""
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == model
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    usage = body["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert choice["message"]["role"] == "assistant"
    return choice


def test_models(llm):
    with urllib.request.urlopen(llm.url + "/models", timeout=HTTP_TIMEOUT) as resp:
        assert json.load(resp) == {"object": "list", "data": [
            {"id": "scripted", "object": "model", "created": 0, "owned_by": "rosa-test"}]}


def stream_chat(url, messages, tools=None, timeout=HTTP_TIMEOUT):
    """POST a streamed chat completion; return (status, content type, [event texts])."""
    body = {"model": "test-model", "messages": messages, "stream": True}
    if tools is not None:
        body["tools"] = tools
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return resp.status, resp.headers["Content-Type"], [e for e in text.split("\n\n") if e]


def test_streamed_reply_and_tool_calls_are_chunks(llm):
    llm.handler = lambda req: Reply("hello there")
    status, ctype, events = stream_chat(llm.url, [{"role": "user", "content": "hi"}])
    assert status == 200 and ctype == "text/event-stream"
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    llm.handler = lambda req: Calls([ToolCall("wave", {"times": 2})])
    _, _, events = stream_chat(llm.url, [{"role": "user", "content": "hi"}], WORKER_TOOLS)
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    parts = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert parts[0]["function"]["name"] == "wave" and parts[0]["id"].startswith("call_")
    assert json.loads("".join(p["function"]["arguments"] for p in parts)) == {"times": 2}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_plain_text_error_bodies_and_headers(llm):
    llm.handler = lambda req: HttpError(429, text="Rate limit exceeded", headers={"Retry-After": "1"})
    req = urllib.request.Request(llm.url + "/chat/completions", data=b'{"messages": []}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=HTTP_TIMEOUT)
    assert e.value.code == 429 and e.value.headers["Retry-After"] == "1"
    assert e.value.headers["Content-Type"] == "text/plain" and e.value.read() == b"Rate limit exceeded"


def test_drip_streams_without_end(llm):
    llm.handler = lambda req: Drip(interval=0.05, content="", count=5)
    t0 = time.monotonic()
    _, _, events = stream_chat(llm.url, [{"role": "user", "content": "hi"}])
    assert events == [": still working"] * 5, events  # no data, no [DONE]
    assert time.monotonic() - t0 >= 0.25


def test_reply(llm):
    llm.handler = lambda req: Reply("hello")
    status, body = post_chat(llm.url, [{"role": "user", "content": "hi"}])
    assert status == 200
    choice = check_completion(body)
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "hello"
    assert "tool_calls" not in choice["message"]


def test_calls_dict_and_malformed(llm):
    llm.handler = lambda req: Calls([ToolCall("wave", {"times": 2}), ToolCall("move_head", '{"direction": ')])
    status, body = post_chat(llm.url, [{"role": "user", "content": "go"}], tools=WORKER_TOOLS)
    assert status == 200
    choice = check_completion(body)
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    good, bad = choice["message"]["tool_calls"]
    assert good["type"] == "function" and good["id"].startswith("call_")
    assert good["function"]["name"] == "wave"
    assert json.loads(good["function"]["arguments"]) == {"times": 2}
    assert bad["function"] == {"name": "move_head", "arguments": '{"direction": '}  # verbatim
    assert good["id"] != bad["id"]


def test_http_error(llm):
    llm.handler = lambda req: HttpError(503, "overloaded")
    status, body = post_chat(llm.url, [{"role": "user", "content": "hi"}])
    assert status == 503
    assert body == {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}


def test_hang_and_keepalive(llm):
    llm.handler = lambda req: Hang(0.3)
    conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=HTTP_TIMEOUT)
    try:
        for _ in range(2):  # two requests over one keep-alive connection
            t0 = time.monotonic()
            conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "m", "messages": []}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 200 and time.monotonic() - t0 >= 0.3
            assert body["choices"][0]["message"]["content"] == "late"
    finally:
        conn.close()


def test_requests_recorded_with_role(llm):
    post_chat(llm.url, [{"role": "system", "content": "You are the kernel."},
                        {"role": "user", "content": "[User typed]  wave twice "}], tools=KERNEL_TOOLS)
    post_chat(llm.url, [{"role": "user", "content": "go"}], tools=WORKER_TOOLS)
    reqs = llm.wait_for(lambda rs: len(rs) == 2, timeout=5)
    assert [r["role"] for r in reqs] == ["kernel", "worker"]
    assert all(isinstance(r["t"], float) and isinstance(r["wall"], float) for r in reqs)
    assert system_prompt(reqs[0]["body"]) == "You are the kernel."
    assert tool_names(reqs[0]["body"]) == ["launch_process"]
    assert len(llm.requests_by("worker")) == 1
    llm.clear()
    assert llm.requests == []
    with pytest.raises(TimeoutError, match="0 request"):
        llm.wait_for(lambda rs: len(rs) > 0, timeout=0.1)


def test_default_handler_script():
    h = default_handler(worker_tool="wave", worker_args={"times": 2}, robots=("testbot",))
    kernel = lambda *msgs: {"tools": KERNEL_TOOLS, "messages": list(msgs)}
    worker = lambda *msgs: {"tools": WORKER_TOOLS, "messages": list(msgs)}

    assert h(kernel({"role": "user", "content": "[User said]  wave twice "})) == Calls(
        [ToolCall("launch_process", {"system_prompt": "Task: wave twice", "robots": ["testbot"]})])
    assert h(kernel({"role": "tool", "tool_call_id": "call_1", "content": "pid 7"})) == Reply("OK: pid 7")
    assert h(kernel({"role": "user", "content": "[Worker callback] all good"})) == Reply("Worker finished: all good")
    assert h(worker({"role": "user", "content": "go"})) == Calls([ToolCall("wave", {"times": 2})])
    w2 = worker({"role": "user", "content": "go"}, {"role": "tool", "content": "waved 2 times"})
    assert tool_results(w2) == ["waved 2 times"]
    assert h(w2) == Reply("Done: waved 2 times")


# --------------------------------------------------------------------------
# McpRecorder
# --------------------------------------------------------------------------

async def _mcp_session_check(url):
    with anyio.fail_after(20):
        async with streamable_http_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = {t.name for t in (await session.list_tools()).tools}
                assert {"wave", "move_head", "slow", "fail"} <= names

                res = await session.call_tool("wave", {"times": 3})
                assert not res.isError
                assert res.content[0].text == "waved 3 times"

                res = await session.call_tool("fail", {"reason": "nope"})
                assert res.isError
                assert "nope" in res.content[0].text


def test_mcp_recorder():
    with McpRecorder("testbot") as bot:
        assert bot.url.startswith("http://127.0.0.1:") and bot.url.endswith("/mcp")
        anyio.run(_mcp_session_check, bot.url)
        calls = bot.wait_for_calls(2, timeout=5)
        assert [(c["tool"], c["args"]) for c in calls] == [("wave", {"times": 3}), ("fail", {"reason": "nope"})]
        assert calls[0]["t"] <= calls[1]["t"]
        with pytest.raises(TimeoutError):
            bot.wait_for_calls(3, timeout=0.1)


def _readline(stream, timeout):
    """Read one line from a pipe, or fail after ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return stream.readline().decode()


def test_mcp_recorder_cli():
    script = os.path.join(os.path.dirname(__file__), "mcp_recorder.py")
    # bufsize=0: unbuffered pipes, so select() sees every line that is not read yet.
    proc = subprocess.Popen([sys.executable, script, "--port", "0"], bufsize=0,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        banner = ""
        while " listening on " not in banner:  # skip any warnings printed before it
            banner = _readline(proc.stderr, 15)
            assert banner, "mcp_recorder.py exited early"
        url = banner.split(" listening on ")[1].strip()
        anyio.run(_mcp_session_check, url)
        assert json.loads(_readline(proc.stdout, 5))["tool"] == "wave"
        assert json.loads(_readline(proc.stdout, 5))["args"] == {"reason": "nope"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
