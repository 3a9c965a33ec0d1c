"""The core graph end to end: kernel, process manager and workers, driven by an rclpy peer.

Real node binaries, real DDS (loopback), real MCP over HTTP; only the LLM is scripted.
"""

import os
import signal
import time
from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from rosa_interfaces.action import LaunchProcess
from rosa_interfaces.msg import KernelEvent, ProcessTable, Update, WorkerCallback
from rosa_interfaces.srv import Chat, ListProcesses, TerminateProcess
from std_msgs.msg import String

from conftest import LATCHED, wait_until
from support.scripted_llm import Calls, Hang, Reply, ToolCall, default_handler, last_message, tool_results


def start_core(graph, peer, kernel_params=None, **pm_params):
    graph.start("process_manager", **pm_params)
    graph.start("kernel", **(kernel_params or {}))
    peer.listen("/rosa/worker_callback", WorkerCallback, publishers=1)
    peer.listen("/rosa/updates", Update, publishers=2)
    peer.listen("/rosa/events", KernelEvent, publishers=1)
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    peer.action_client(LaunchProcess, "/rosa/launch_process")
    for srv_type, name in ((Chat, "/rosa/chat"), (ListProcesses, "/rosa/list_processes"),
                           (TerminateProcess, "/rosa/terminate_process")):
        peer.client(srv_type, name)
    peer.publisher("/rosa/command", String)  # waits for the kernel's subscription


def slow_worker_handler(seconds=30.0):
    """Kernel launches a worker for every user event; the worker calls slow(seconds)."""
    return default_handler(worker_tool="slow", worker_args={"seconds": seconds})


def start_a_slow_worker(graph, peer, llm, robot):
    """The core graph with a worker busy in a 30 s tool call: its row of the process table."""
    llm.handler = slow_worker_handler()
    start_core(graph, peer)
    peer.publish("/rosa/command", String, String(data="take your time"))
    robot.wait_for_calls(1, timeout=20)
    return wait_until(lambda: next((p for t in peer.received("/rosa/processes") for p in t.processes if p.state == "running"), None), 10, "a running process")


def table_row(peer, worker_id):
    tables = peer.received("/rosa/processes")
    for t in reversed(tables):
        for p in t.processes:
            if p.worker_id == worker_id:
                return p
    return None


def test_command_launches_a_worker_that_calls_the_robot_and_reports_back(graph, peer, llm, robot):
    start_core(graph, peer)
    peer.publish("/rosa/command", String, String(data="wave at me"))

    # The kernel launched a worker, which called the robot's tool over MCP.
    calls = robot.wait_for_calls(1, timeout=20)
    assert calls[0]["tool"] == "wave" and calls[0]["args"] == {"times": 2}

    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final)
    assert cb.done is True
    assert cb.message == "Done: waved 2 times"
    assert cb.worker_id.startswith("w") and len(cb.worker_id) == 9

    # The kernel consumed the callback as an event and told the user.
    upd = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and m.text.startswith("Worker finished"))
    assert cb.worker_id in upd.text and "done=true" in upd.text
    events = peer.wait_for_msg("/rosa/events", lambda m: m.source == "worker_callback")
    all_events = peer.received("/rosa/events")
    assert [e.seq for e in all_events] == list(range(1, len(all_events) + 1))
    assert all_events[0].text == "[User typed] wave at me" and all_events[0].source == "command"
    assert events.text == f"[Worker callback] Done: waved 2 times (worker_id={cb.worker_id}, done=true)"

    # The worker's own report was published as an Update, and the table shows it succeeded.
    peer.wait_for_msg("/rosa/updates", lambda m: m.role == "worker" and m.worker_id == cb.worker_id)
    # Succeeded as soon as it reported; pid 0 once the process has exited and been reaped.
    row = wait_until(lambda: (r := table_row(peer, cb.worker_id)) and r.state == "succeeded" and r.pid == 0 and r, 10, "succeeded row")
    assert row.last_tool == "wave" and row.robots == ["testbot"]

    # The worker got the robot description in its system prompt and the task as its first user
    # message (so that every worker on these robots sends the same prefix).
    worker_req = llm.requests_by("worker")[0]["body"]
    system = worker_req["messages"][0]["content"]
    assert "## Robot `testbot`" in system and "wave at me" not in system
    assert worker_req["messages"][1]["role"] == "user"
    assert worker_req["messages"][1]["content"].startswith("## Your task\nTask: wave at me\n")
    assert worker_req["stream"] is True and worker_req["user"].startswith("worker_w")
    assert {t["function"]["name"] for t in worker_req["tools"]} == {"wave", "move_head", "slow", "fail"}
    # The kernel's prompt lists the reachable robot, and its only tools are the process tools.
    kernel_req = llm.requests_by("kernel")[0]["body"]
    assert kernel_req["user"] == "kernel"
    assert "- testbot: test robot testbot" in kernel_req["messages"][0]["content"]
    assert {t["function"]["name"] for t in kernel_req["tools"]} == {"launch_process", "list_processes", "terminate_process"}
    assert graph.alive("kernel") and graph.alive("process_manager")


def test_warm_prefix_gives_the_llm_both_prompt_prefixes_before_the_first_event(graph, peer, llm, robot):
    # ./rosa up sets warm_prefix for the embedded model: while idle, the kernel and the process
    # manager each send the prefix of their next request (system prompt, tools, the first message's
    # start) asking for one token; what comes back is dropped (the scripted model answers with
    # calls: none is run, nothing is launched or said).
    start_core(graph, peer, kernel_params={"warm_prefix": "true"}, warm_prefix="true")
    one_token = lambda rs: [r for r in rs if r["body"].get("max_tokens") == 1]
    warm = llm.wait_for(lambda rs: {r["body"].get("user") for r in one_token(rs)} >= {"kernel", "process_manager"}, 30)
    time.sleep(2.0)
    assert len(llm.snapshot()) == len(one_token(llm.snapshot())), "only warm-ups so far"
    assert robot.snapshot() == [] and peer.received("/rosa/events") == []
    assert all(p.processes == [] for p in peer.received("/rosa/processes")), "a warm-up is not a process"
    warm = {r["body"]["user"]: r["body"] for r in one_token(llm.snapshot())}  # the last of each

    peer.publish("/rosa/command", String, String(data="wave at me"))
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final)
    assert cb.done is True and robot.snapshot()[0]["tool"] == "wave"
    real = {r["body"]["user"].split("_")[0]: r["body"] for r in reversed(llm.snapshot()) if "max_tokens" not in r["body"]}
    # Each real request begins as its warm-up did: the same system prompt and tools, and the first
    # user message starts alike (the kernel's event source, the worker's task heading).
    for warm_body, body, start in ((warm["kernel"], real["kernel"], "[User typed] "), (warm["process_manager"], real["worker"], "## Your task\n")):
        assert warm_body["messages"][0] == body["messages"][0]
        assert warm_body["tools"] == body["tools"]
        assert warm_body["messages"][-1]["role"] == "user" and warm_body["messages"][-1]["content"].startswith(start)
        assert body["messages"][1]["content"].startswith(start)
    assert "testbot" in warm["process_manager"]["messages"][0]["content"]
    assert "wave" in [t["function"]["name"] for t in warm["process_manager"]["tools"]]
    assert "launch_process" in [t["function"]["name"] for t in warm["kernel"]["tools"]]


def test_chat_service_returns_the_kernel_reply(graph, peer, llm):
    llm.handler = lambda req: Reply("Hello from the kernel")
    start_core(graph, peer)
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="hi there"))
    assert resp.success is True and resp.reply == "Hello from the kernel"
    ev = peer.wait_for_msg("/rosa/events", lambda m: m.source == "chat")
    assert ev.text == "[User typed] hi there"
    assert peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel").text == "Hello from the kernel"


def test_kernel_lists_and_terminates_processes_through_its_tools(graph, peer, llm, robot):
    """The kernel's LLM uses list_processes and terminate_process (the process manager's services)."""
    state = {"wid": None}

    def handler(req):
        last = last_message(req)
        if any(t["function"]["name"] == "launch_process" for t in req.get("tools", [])):
            text = last.get("content") or ""
            if last["role"] == "user" and "start" in text:
                return Calls([ToolCall("launch_process", {"system_prompt": "be slow", "robots": ["testbot"]})])
            if last["role"] == "user" and "stop" in text:
                return Calls([ToolCall("list_processes", {})])
            if last["role"] == "tool" and "state=running" in text:
                wid = text.split("worker_id=")[1].split()[0]
                state["wid"] = wid
                return Calls([ToolCall("terminate_process", {"worker_id": wid, "force": False})])
            return Reply("ok: " + text)
        return Calls([ToolCall("slow", {"seconds": 60})]) if not tool_results(req) else Reply("slept")

    llm.handler = handler
    start_core(graph, peer)
    assert peer.call(Chat, "/rosa/chat", Chat.Request(prompt="start")).success
    robot.wait_for_calls(1, timeout=20)
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="stop"), timeout=30)
    assert resp.success and "terminated on request" in resp.reply, resp.reply
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.worker_id == state["wid"])
    assert cb.done is False and cb.final and "terminated" in cb.message


def test_terminate_service_ends_a_worker(graph, peer, llm, robot):
    row = start_a_slow_worker(graph, peer, llm, robot)
    assert row.pid > 0

    resp = peer.call(TerminateProcess, "/rosa/terminate_process", TerminateProcess.Request(worker_id=row.worker_id, force=False))
    assert resp.ok, resp.message
    assert "terminated on request" in resp.message and "SIGTERM" in resp.message
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.worker_id == row.worker_id)
    assert cb.done is False and cb.final is True
    wait_until(lambda: table_row(peer, row.worker_id).state == "terminated", 10, "terminated row")
    with pytest.raises(ProcessLookupError):
        os.kill(row.pid, 0)

    unknown = peer.call(TerminateProcess, "/rosa/terminate_process", TerminateProcess.Request(worker_id="wnope", force=True))
    assert unknown.ok is False and "no running process" in unknown.message


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_waiting_worker_leaves_the_cpu_to_others(graph, peer, llm, robot):
    # A worker's node has publishers only: with nothing in its wait set, its spin thread once
    # spun a whole core while the worker waited (on its LLM: the local model's own cores).
    row = start_a_slow_worker(graph, peer, llm, robot)
    time.sleep(0.5)
    c0, t0 = cpu_seconds(row.pid), time.monotonic()
    time.sleep(3.0)
    share = (cpu_seconds(row.pid) - c0) / (time.monotonic() - t0)
    assert share < 0.1, f"a worker waiting on a tool used {100 * share:.0f} % of a core"
    resp = peer.call(TerminateProcess, "/rosa/terminate_process", TerminateProcess.Request(worker_id=row.worker_id, force=True))
    assert resp.ok, resp.message


def test_cancelling_the_goal_terminates_the_worker(graph, peer, llm, robot):
    llm.handler = slow_worker_handler()
    start_core(graph, peer)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    feedback = []
    handle = peer.wait_future(client.send_goal_async(
        LaunchProcess.Goal(system_prompt="sleep", robots=["testbot"]), feedback_callback=lambda f: feedback.append(f.feedback)))
    assert handle.accepted
    wid = "w" + bytes(handle.goal_id.uuid[:4]).hex()
    robot.wait_for_calls(1, timeout=20)
    wait_until(lambda: any(f.last_tool == "slow" for f in feedback), 10, "feedback naming the tool")
    assert all(f.worker_id == wid for f in feedback)
    assert peer.wait_future(handle.cancel_goal_async()).return_code == 0
    result = peer.wait_future(handle.get_result_async(), timeout=20)
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.worker_id == wid and result.result.success is False
    assert "cancelled" in result.result.message
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.worker_id == wid)
    assert cb.done is False


def test_goals_beyond_the_concurrency_limit_are_rejected(graph, peer, llm, robot):
    llm.handler = slow_worker_handler()
    start_core(graph, peer, max_processes=2)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    goal = LaunchProcess.Goal(system_prompt="sleep", robots=["testbot"])
    first = peer.wait_future(client.send_goal_async(goal))
    second = peer.wait_future(client.send_goal_async(goal))
    third = peer.wait_future(client.send_goal_async(goal))
    assert first.accepted and second.accepted
    assert third.accepted is False
    listing = peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request(include_ended=False))
    assert listing.max_processes == 2 and len(listing.processes) == 2
    # A goal naming an unknown robot is rejected too.
    assert peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt="x", robots=["ghost"]))).accepted is False
    for h in (first, second):
        peer.wait_future(h.cancel_goal_async())
    # Once they are gone there is room again.
    wait_until(lambda: len(peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request()).processes) == 0, 15, "an empty table")
    fourth = peer.wait_future(client.send_goal_async(goal))
    assert fourth.accepted
    peer.wait_future(fourth.cancel_goal_async())


def test_a_worker_that_runs_past_its_timeout_is_stopped(graph, peer, llm, robot):
    llm.handler = slow_worker_handler()
    start_core(graph, peer)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    t0 = time.monotonic()
    handle = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt="sleep", robots=["testbot"], timeout_sec=1.5)))
    result = peer.wait_future(handle.get_result_async(), timeout=20)
    elapsed = time.monotonic() - t0
    assert result.status == GoalStatus.STATUS_ABORTED
    assert "timed out after 2 s" in result.result.message or "timed out after 1 s" in result.result.message, result.result.message
    assert 1.4 < elapsed < 10
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.worker_id == result.result.worker_id)
    assert cb.done is False and "timed out" in cb.message
    assert table_row(peer, result.result.worker_id).state == "timed_out"


def test_unreachable_llm_gives_an_update_and_no_crash(graph, peer):
    # Nothing listens on port 9 of loopback: every LLM call is refused.
    graph.start("process_manager")
    graph.start("kernel", llm_url="http://127.0.0.1:9/v1")
    peer.listen("/rosa/updates", Update, publishers=2)
    peer.publish("/rosa/command", String, String(data="wave"))
    upd = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "system", timeout=20)
    assert "LLM unreachable" in upd.text and "[User typed] wave" in upd.text
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="still there?"), timeout=20)
    assert resp.success is False and "LLM unreachable" in resp.reply
    assert graph.alive("kernel")


def test_worker_killed_with_sigkill_still_calls_back(graph, peer, llm, robot):
    llm.handler = slow_worker_handler()
    start_core(graph, peer)
    peer.publish("/rosa/command", String, String(data="sleep"))
    robot.wait_for_calls(1, timeout=20)
    row = wait_until(lambda: next((p for t in peer.received("/rosa/processes") for p in t.processes if p.state == "running" and p.pid > 0), None), 10, "a running process")
    os.kill(row.pid, signal.SIGKILL)
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.worker_id == row.worker_id, timeout=15)
    assert cb.done is False and cb.final is True
    assert "crashed" in cb.message and "SIGKILL" in cb.message
    # The kernel hears about it like any callback.
    peer.wait_for_msg("/rosa/events", lambda m: m.source == "worker_callback" and row.worker_id in m.text and "done=false" in m.text)
    assert table_row(peer, row.worker_id).state == "failed"


def test_malformed_tool_arguments_go_back_to_the_model(graph, peer, llm, robot):
    def handler(req):
        if any(t["function"]["name"] == "launch_process" for t in req.get("tools", [])):
            return default_handler()(req)
        results = tool_results(req)
        if not results:
            return Calls([ToolCall("wave", '{"times": 2,,')])  # not JSON
        if len(results) == 1:
            return Calls([ToolCall("teleport", {"where": "moon"})])  # no such tool
        if len(results) == 2:
            return Calls([ToolCall("wave", {"times": "many"})])  # wrong type: the MCP server refuses it
        if len(results) == 3:
            return Calls([ToolCall("wave", {"times": 1})])
        return Reply("recovered: " + results[-1])

    llm.handler = handler
    start_core(graph, peer)
    peer.publish("/rosa/command", String, String(data="wave"))
    cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final, timeout=20)
    assert cb.done is True and cb.message == "recovered: waved 1 times"
    results = tool_results(llm.requests_by("worker")[-1]["body"])
    assert "not valid JSON" in results[0]
    assert "unknown tool `teleport`" in results[1] and "wave" in results[1]
    assert results[2].startswith("ERROR:")
    # Only the well-formed call reached the robot (the server's own validation refused "many").
    assert [c["args"] for c in robot.snapshot()] == [{"times": 1}]


def test_a_burst_of_commands_is_queued_and_overflow_is_refused_out_loud(graph, peer, llm):
    release = {"go": False}

    def handler(req):
        # Hold the kernel on its first event until the burst is in.
        while not release["go"]:
            time.sleep(0.01)
        return Reply("ack " + (last_message(req).get("content") or ""))

    llm.handler = handler
    graph.start("process_manager")
    graph.start("kernel", queue_size=3)
    peer.listen("/rosa/updates", Update, publishers=2).listen("/rosa/events", KernelEvent, publishers=1)
    pub = peer.publisher("/rosa/command", String)
    for i in range(8):
        pub.publish(String(data=f"cmd {i}"))
    refused = wait_until(lambda: [u for u in peer.received("/rosa/updates") if u.role == "system" and "refused" in u.text], 10, "refusals")
    release["go"] = True
    # The 3 queued (plus 1 if the kernel had already taken one when the burst came) are consumed in
    # order and answered; every other command was refused, and each refusal was said out loud.
    def settled():
        replies = [u for u in peer.received("/rosa/updates") if u.role == "kernel"]
        refused = [u for u in peer.received("/rosa/updates") if u.role == "system" and "refused" in u.text]
        return len(replies) + len(refused) == 8
    wait_until(settled, 15, "every command answered or refused")
    time.sleep(0.3)
    consumed = [e.text for e in peer.received("/rosa/events")]
    refused = [u.text for u in peer.received("/rosa/updates") if u.role == "system" and "refused" in u.text]
    assert len(consumed) + len(refused) == 8, (consumed, refused)
    assert consumed == sorted(consumed, key=lambda t: int(t.split()[-1]))
    assert len(consumed) in (3, 4) and all("queue is full (3 events waiting)" in r for r in refused)


def test_the_kernel_hears_why_a_launch_was_rejected(graph, peer, llm, robot):
    llm.handler = slow_worker_handler()
    start_core(graph, peer, max_processes=1)
    peer.publish("/rosa/command", String, String(data="first"))
    robot.wait_for_calls(1, timeout=20)
    peer.publish("/rosa/command", String, String(data="second"))
    upd = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and "rejected" in m.text)
    assert "rejected by the process manager: 1 of at most 1 processes are running" in upd.text, upd.text
