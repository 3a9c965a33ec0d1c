// The browser UI in headless Chromium (Debian's /usr/bin/chromium driven by puppeteer-core; no
// browser download). Driven by test/test_web.py: prints one JSON line per step reached, reads
// "publish" from stdin before the test publishes an Update. Screenshots go to argv[3].
import puppeteer from "puppeteer-core";
import readline from "node:readline";
import path from "node:path";
import fs from "node:fs";
import os from "node:os";

const base = process.argv[2];
const shots = process.argv[3];
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((res) => lines.once("line", res));
// The profile directory: the test's own (it stops a browser left behind by it), else a new one.
const userDataDir = process.env.ROSA_UI_PROFILE || fs.mkdtempSync(path.join(os.tmpdir(), "rosa-ui-"));
const browser = await puppeteer.launch({
  executablePath: "/usr/bin/chromium", headless: true, userDataDir,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const consoleErrors = [];
const externalRequests = [];
let restarting = false;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  page.on("console", (m) => { if (m.type() === "error" && !restarting) consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("ws://" + base.slice(7)) && !r.url().startsWith("data:")) externalRequests.push(r.url()); });
  await page.goto(base + "/", { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("conn").textContent === "connected", { timeout: 15000 });
  // Note when a message with "onerror" first shows in the conversation.
  await page.evaluate(() => {
    new MutationObserver(() => {
      for (const e of document.querySelectorAll("#chatlog .msg")) if (!window.seenAt && e.textContent.includes("onerror")) window.seenAt = Date.now();
    }).observe(document.getElementById("chatlog"), { childList: true, subtree: true });
  });
  await page.screenshot({ path: path.join(shots, "ui-1-loaded.png") });
  say({ step: "loaded" });

  await nextLine();  // "publish"
  await page.waitForFunction(() => window.seenAt, { timeout: 10000 });
  const upd = await page.evaluate(() => {
    const e = [...document.querySelectorAll("#chatlog .msg")].find((x) => x.textContent.includes("onerror"));
    return { ms_since: window.seenAt, pwned: window.pwned === 1, text: e.lastChild.textContent, imgs: document.querySelectorAll("#chatlog img").length };
  });
  say({ step: "update_seen", ...upd, pwned: upd.pwned || upd.imgs > 0 });

  await page.type("#text", "please wait a while");
  await page.click("#say button");
  await page.waitForFunction(() => document.querySelector("#chatlog .msg.role-kernel"), { timeout: 30000 });
  const reply = await page.evaluate(() => document.querySelector("#chatlog .msg.role-kernel").lastChild.textContent);
  await page.screenshot({ path: path.join(shots, "ui-2-chat.png") });
  say({ step: "kernel_replied", reply });

  await page.waitForFunction(() => [...document.querySelectorAll("#proctable tr")].some((tr) => tr.children[1].textContent === "running" && tr.querySelector("button")), { timeout: 30000 });
  const wid = await page.evaluate(() => [...document.querySelectorAll("#proctable tr")].find((tr) => tr.children[1].textContent === "running").dataset.worker);
  await page.click(`#proctable tr[data-worker="${wid}"]`);
  await page.screenshot({ path: path.join(shots, "ui-3-processes.png") });
  await page.click(`#proctable tr[data-worker="${wid}"] button`);
  await page.waitForFunction((w) => { const tr = document.querySelector(`#proctable tr[data-worker="${w}"]`); return !tr || tr.children[1].textContent !== "running"; }, { timeout: 30000 }, wid);
  const state = await page.evaluate((w) => { const tr = document.querySelector(`#proctable tr[data-worker="${w}"]`); return tr ? tr.children[1].textContent : "gone"; }, wid);
  await page.screenshot({ path: path.join(shots, "ui-4-terminated.png") });
  say({ step: "terminated", worker: wid, state });

  restarting = true;
  say({ step: "ready_for_restart" });
  await page.waitForFunction(() => document.getElementById("conn").className === "down", { timeout: 20000 });
  await page.screenshot({ path: path.join(shots, "ui-5-disconnected.png") });
  await page.waitForFunction(() => document.getElementById("conn").textContent === "connected", { timeout: 30000 });
  await page.screenshot({ path: path.join(shots, "ui-6-reconnected.png") });
  say({ step: "reconnected", reloaded: await page.evaluate(() => window.seenAt === undefined) });
  say({ step: "done", consoleErrors, externalRequests });
} catch (e) {
  say({ step: "error", error: String(e), consoleErrors, externalRequests });
} finally {
  await browser.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
