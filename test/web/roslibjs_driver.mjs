// roslibjs 2.x (npm `roslib`, with `ws`) driven line by line by test/test_web.py: each stdin line
// is a JSON command, each stdout line a JSON result {"n": <command number>, ...}. The client is the
// real library as a web app uses it: Ros, Topic, Service, Action, Param.
import * as ROSLIB from "roslib";
import readline from "node:readline";

const url = process.argv[2];
const ros = new ROSLIB.Ros({ url });
const received = new Map();
const goals = new Map();
const out = (o) => process.stdout.write(JSON.stringify(o, (k, v) => (v instanceof Uint8Array ? { bytes: Array.from(v) } : typeof v === "bigint" ? Number(v) : v)) + "\n");
const errors = [];
ros.on("error", (e) => errors.push(String(e && e.message ? e.message : e)));
await new Promise((resolve, reject) => { ros.on("connection", resolve); ros.on("error", reject); });
out({ n: 0, connected: true });

const commands = {
  topics: () => new Promise((res, rej) => ros.getTopics((r) => res(r), rej)),
  services: () => new Promise((res, rej) => ros.getServices((r) => res({ services: r }), rej)),
  nodes: () => new Promise((res, rej) => ros.getNodes((r) => res({ nodes: r }), rej)),
  topic_type: (c) => new Promise((res, rej) => ros.getTopicType(c.topic, (r) => res({ type: r }), rej)),
  message_details: (c) => new Promise((res, rej) => ros.getMessageDetails(c.type, (r) => res(r), rej)),
  subscribe: (c) => {
    const t = new ROSLIB.Topic({ ros, name: c.topic, messageType: c.type, compression: c.compression || "none",
      throttle_rate: c.throttle_rate || 0, queue_length: c.queue_length || 0 });
    received.set(c.key, []);
    t.subscribe((m) => received.get(c.key).push({ t: Date.now(), m }));
    return { subscribed: c.topic };
  },
  // A subscribe op with fragment_size (roslibjs reassembles the fragments it gets).
  subscribe_fragmented: (c) => {
    received.set(c.key, []);
    ros.on(c.topic, (op) => received.get(c.key).push({ t: Date.now(), m: op.msg }));
    ros.callOnConnection({ op: "subscribe", id: c.key, topic: c.topic, type: c.type, fragment_size: c.fragment_size });
    return { subscribed: c.topic };
  },
  received: (c) => ({ messages: received.get(c.key) || [] }),
  publish: (c) => {
    const t = new ROSLIB.Topic({ ros, name: c.topic, messageType: c.type });
    t.publish(c.msg);
    return { published: true };
  },
  call: (c) => new Promise((res) => {
    const s = new ROSLIB.Service({ ros, name: c.name, serviceType: c.type });
    s.callService(c.args || {}, (r) => res({ ok: true, response: r }), (e) => res({ ok: false, reason: String(e) }), c.timeout);
  }),
  param_get: (c) => new Promise((res) => new ROSLIB.Param({ ros, name: c.name }).get((v) => res({ ok: true, value: v }), (e) => res({ ok: false, reason: String(e) }))),
  param_set: (c) => new Promise((res) => new ROSLIB.Param({ ros, name: c.name }).set(c.value, (r) => res({ ok: true, response: r }), (e) => res({ ok: false, reason: String(e) }))),
  goal: (c) => {
    const a = new ROSLIB.Action({ ros, name: c.name, actionType: c.type });
    const g = { feedback: [], result: null, failed: null };
    g.id = a.sendGoal(c.goal, (r) => { g.result = r; }, (f) => g.feedback.push(f), (e) => { g.failed = String(e); });
    g.action = a;
    goals.set(c.key, g);
    return { id: g.id };
  },
  goal_state: (c) => { const g = goals.get(c.key); return { feedback: g.feedback, result: g.result, failed: g.failed }; },
  cancel: (c) => { const g = goals.get(c.key); g.action.cancelGoal(g.id); return { cancelled: true }; },
  errors: () => ({ errors }),
  close: () => { ros.close(); setTimeout(() => process.exit(0), 100); return { closed: true }; },
};

const rl = readline.createInterface({ input: process.stdin });
let n = 0;
for await (const line of rl) {
  n += 1;
  let c;
  try { c = JSON.parse(line); } catch (e) { out({ n, error: "bad command " + line }); continue; }
  try {
    const r = await commands[c.cmd](c);
    out({ n, ...r });
  } catch (e) {
    out({ n, error: String(e && e.message ? e.message : e) });
  }
}
