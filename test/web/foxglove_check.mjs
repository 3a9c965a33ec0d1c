// The Foxglove WebSocket protocol against rosa_web with @foxglove/ws-protocol's own client (over
// `ws`, subprotocol foxglove.websocket.v1): serverInfo, channels with ros2msg schemas parsed by
// @foxglove/rosmsg, CDR frames decoded by @foxglove/rosmsg2-serialization, a service call, and a
// client publish. Prints one JSON line with what it saw; exits non-zero on failure.
import wsProtocol from "@foxglove/ws-protocol";
import rosmsg from "@foxglove/rosmsg";
import serialization from "@foxglove/rosmsg2-serialization";
import WebSocket from "ws";

const { FoxgloveClient } = wsProtocol;
const { parse } = rosmsg;
const { MessageReader, MessageWriter } = serialization;

const url = process.argv[2];
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timed out; saw " + JSON.stringify(seen).slice(0, 2000)), 45000);
const ws = new WebSocket(url, [FoxgloveClient.SUPPORTED_SUBPROTOCOL]);
const client = new FoxgloveClient({ ws });
const seen = { statuses: [] };
let done = 0;
const finish = () => { if (++done === 3) { console.log(JSON.stringify(seen)); client.close(); process.exit(0); } };

client.on("status", (s) => seen.statuses.push(s));
client.on("serverInfo", (info) => { seen.serverInfo = info; seen.protocol = ws.protocol; });
let subscribed = false;
client.on("advertise", (channels) => {
  for (const ch of channels) {
    if (ch.topic !== "/rosa/processes" || subscribed) continue;
    subscribed = true;
    seen.channel = { ...ch, schema: undefined };
    const defs = parse(ch.schema, { ros2: true });
    seen.parsedDefinitions = defs.length;
    const reader = new MessageReader(defs);
    const sub = client.subscribe(ch.id);
    client.on("message", ({ subscriptionId, data }) => {
      if (subscriptionId !== sub || seen.decoded) return;
      const m = reader.readMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      seen.decoded = { max_processes: m.max_processes, processes: m.processes };
      finish();
    });
  }
});
client.on("advertiseServices", (services) => {
  for (const s of services) {
    if (s.name !== "/rosa/list_processes" || seen.service) continue;
    const reqSchema = s.requestSchema ?? s.request?.schema;
    const respSchema = s.responseSchema ?? s.response?.schema;
    const writer = new MessageWriter(parse(reqSchema, { ros2: true }));
    const reader = new MessageReader(parse(respSchema, { ros2: true }));
    client.on("serviceCallResponse", (r) => {
      if (r.callId !== 1) return;
      const m = reader.readMessage(new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength));
      seen.service = { max_processes: m.max_processes };
      finish();
    });
    client.on("serviceCallFailure", (f) => fail("service call failed: " + JSON.stringify(f)));
    client.sendServiceCallRequest({ serviceId: s.id, callId: 1, encoding: "cdr", data: new DataView(writer.writeMessage({ full_system_prompts: false }).buffer) });
  }
});
client.on("open", () => {
  // Client publish: a std_msgs/msg/String channel, then one CDR message.
  const ch = client.advertise({ topic: "/web_test/fox_in", encoding: "cdr", schemaName: "std_msgs/msg/String" });
  const writer = new MessageWriter(parse("string data", { ros2: true }));
  const send = () => client.sendMessage(ch, writer.writeMessage({ data: "from foxglove" }));
  // Repeated a few times: the ROS subscriber matches the new publisher after a moment.
  for (let i = 1; i <= 6; i++) setTimeout(send, 300 * i);
  setTimeout(finish, 300 * 6 + 100);
});
client.on("error", (e) => fail("client error: " + e));
