"""A misbehaving LLM cannot hold the kernel (issue 8, items 5 and 6).

Real kernel and process manager binaries, an rclpy peer, and the scripted OpenAI-compatible server
misbehaving on purpose: a reply that drips for ever, a stream that never starts, 429s with a
plain-text body, a persistent 500.
"""

import time

from rosa_interfaces.msg import KernelEvent, Update
from rosa_interfaces.srv import Chat
from std_msgs.msg import String

from conftest import wait_until
from support.scripted_llm import Drip, Hang, HttpError, Reply, last_message


def start(graph, peer, **kernel_params):
    graph.start("process_manager")
    graph.start("kernel", **kernel_params)
    peer.listen("/rosa/updates", Update, publishers=2).listen("/rosa/events", KernelEvent, publishers=1)
    peer.publisher("/rosa/command", String)


def updates(peer, role=None):
    return [u.text for u in peer.received("/rosa/updates") if role is None or u.role == role]


def test_a_reply_that_drips_for_ever_is_cut_at_the_event_deadline_and_the_next_event_is_queued_out_loud(graph, peer, llm):
    def handler(req):
        text = last_message(req).get("content") or ""
        if "first" in text:
            return Drip(interval=0.3)  # keep-alives every 0.3 s, never an answer
        return Reply("second answered")

    llm.handler = handler
    start(graph, peer, event_deadline_sec=4.0, **{"llm.stall_timeout_sec": 2.0})
    peer.publish("/rosa/command", String, String(data="first"))
    llm.wait_for(lambda rs: len(rs) >= 1, 10)
    t_second = time.monotonic()
    peer.publish("/rosa/command", String, String(data="second"))
    # Said out loud at once: the kernel is busy and the command waits its turn.
    queued = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "system" and m.text.startswith("queued [User typed] second"), timeout=5)
    assert "the kernel is still on event 1" in queued.text
    # The dripping call ends at the event's deadline (not after 3 attempts of llm.timeout_sec).
    failed = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "system" and "could not handle [User typed] first" in m.text, timeout=15)
    assert "deadline" in failed.text or "timed out" in failed.text, failed.text
    peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and m.text == "second answered", timeout=10)
    waited = time.monotonic() - t_second
    # The deadline is 4 s; the second command was answered once it passed (generous bound for a busy machine).
    assert waited < 12, f"the second command waited {waited:.1f} s"
    # The first event dripped in one HTTP request: it was not retried past the deadline.
    firsts = [r for r in llm.snapshot() if "first" in (last_message(r["body"]).get("content") or "")]
    assert len(firsts) == 1, len(firsts)
    assert graph.alive("kernel")


def test_a_stream_that_never_starts_is_a_timeout_not_a_hang(graph, peer, llm):
    llm.handler = lambda req: Hang(60)
    start(graph, peer, **{"llm.first_token_timeout_sec": 1.0})
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="anyone?"), timeout=20)
    assert resp.success is False
    assert "LLM timed out" in resp.reply and "first_token_timeout_sec" in resp.reply, resp.reply
    assert graph.alive("kernel")


def test_a_429_with_a_plain_text_body_is_retried_after_its_retry_after(graph, peer, llm):
    calls = []

    def handler(req):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return HttpError(429, text="Rate limit exceeded. Please slow down.", headers={"Retry-After": "1"})
        return Reply("after the rate limit")

    llm.handler = handler
    start(graph, peer, **{"llm.max_retries": 2, "llm.backoff_sec": 0.0})
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="hello"), timeout=20)
    assert resp.success and resp.reply == "after the rate limit", resp.reply
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.9, "Retry-After: 1 was honoured"


def test_retries_are_counted_once(graph, peer, llm):
    llm.handler = lambda req: HttpError(500, "boom")
    start(graph, peer, **{"llm.max_retries": 2, "llm.backoff_sec": 0.01})
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="hello"), timeout=20)
    assert resp.success is False and "LLM error 500: boom" in resp.reply, resp.reply
    # llm.max_retries = 2: three HTTP requests for the one LLM call, not 3 x 4.
    time.sleep(0.5)
    assert len(llm.snapshot()) == 3, len(llm.snapshot())
    # A plain-text 429 that never clears is also an error the user hears about, not "not understood".
    llm.clear()
    llm.handler = lambda req: HttpError(429, text="Too Many Requests")
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="again"), timeout=20)
    assert resp.success is False and "LLM error 429: Too Many Requests" in resp.reply, resp.reply
    wait_until(lambda: len(llm.snapshot()) == 3, 5, "three requests")
