// coin-hive-stratum (npm) as a WebSocket-to-Stratum proxy on HOST:PORT for the pool POOL_HOST:POOL_PORT, started
// through its API so the 1% donation connection (config/defaults.js) is switched off: nothing leaves the lab.
// Usage: node coinhive_proxy.js HOST PORT POOL_HOST POOL_PORT
const createProxy = require("coin-hive-stratum");
const [host, port, poolHost, poolPort] = process.argv.slice(2);
const proxy = createProxy({ host: poolHost, port: +poolPort, donations: [], log: false });
proxy.listen({ host: host, port: +port });
