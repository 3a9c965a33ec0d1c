// A roslibjs 2.x benchmark client: subscribes to the topics given (std_msgs/msg/String whose data
// starts with the publish time "<ns since the epoch> ..."), counts messages and publish→receive
// latency, and prints one JSON line of results when stdin closes or on SIGTERM.
//   node web_client.mjs ws://127.0.0.1:9090 /topic1 [/topic2 ...]
import * as ROSLIB from "roslib";
import fs from "node:fs";

const [url, ...topics] = process.argv.slice(2);
const ros = new ROSLIB.Ros({ url });
const stats = { received: 0, first: null, last: null, lat: [], perTopic: {} };
const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
let done = false;
function report() {
  if (done) return;
  done = true;
  // Synchronous: process.exit would cut an asynchronous write to a pipe at 64 kB.
  fs.writeSync(1, JSON.stringify({ received: stats.received, first_ms: stats.first, last_ms: stats.last, perTopic: stats.perTopic, lat_ms: stats.lat }) + "\n");
  process.exit(0);
}
process.on("SIGTERM", report);
process.stdin.on("end", report);
process.stdin.resume();
ros.on("connection", () => {
  for (const name of topics) {
    stats.perTopic[name] = 0;
    new ROSLIB.Topic({ ros, name, messageType: "std_msgs/msg/String", queue_length: 0 }).subscribe((m) => {
      const t = performance.timeOrigin + performance.now();
      stats.received++;
      stats.perTopic[name]++;
      if (stats.first === null) stats.first = t;
      stats.last = t;
      const sp = m.data.indexOf(" ");
      const sent = BigInt(m.data.slice(0, sp > 0 ? sp : undefined));
      stats.lat.push(Number(nowNs() - sent) / 1e6);
    });
  }
  console.error("subscribed");
});
ros.on("error", (e) => { console.error("error " + e); });
