// A scripted CoinHive-style browser miner (coinhive.min.js cannot run offline): speaks the WebSocket protocol of
// cazala/coin-hive-stratum src/proxy.js with the `ws` client (masked text frames, one JSON object each):
// auth -> authed, job -> submit -> hash_accepted. Hashing is simulated by a pause of 1.2-2.8 s per share.
// Usage: node coinhive_browser.js WS_URL SITE_KEY DURATION_S
const WebSocket = require("ws");
const [url, siteKey, duration] = process.argv.slice(2);
const ws = new WebSocket(url);
let job = null;
let shares = 0;
function hex(n) {
  let s = "";
  for (let i = 0; i < n; i++) s += Math.floor(Math.random() * 256).toString(16).padStart(2, "0");
  return s;
}
function mine() {
  if (ws.readyState !== WebSocket.OPEN) return;
  if (job) {
    shares += 1;
    ws.send(JSON.stringify({ type: "submit", params: { job_id: job.job_id, nonce: hex(4), result: hex(32) } }));
  }
  setTimeout(mine, 1200 + Math.random() * 1600);
}
ws.on("open", () => {
  // coinhive.min.js auth message: site_key, type, user, goal
  ws.send(JSON.stringify({ type: "auth", params: { site_key: siteKey, type: "anonymous", user: null, goal: 0 } }));
});
ws.on("message", (data) => {
  const msg = JSON.parse(data);
  if (msg.type === "job") {
    job = msg.params;
  } else if (msg.type === "authed") {
    setTimeout(mine, 1500);
  }
});
ws.on("error", (err) => {
  console.error("miner:", err.message);
  process.exit(1);
});
setTimeout(() => {
  ws.close();
  setTimeout(() => process.exit(shares > 0 ? 0 : 2), 500);
}, +duration * 1000);
