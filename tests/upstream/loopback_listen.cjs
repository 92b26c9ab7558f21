// Preloaded (`node --require`) into test servers: whatever port and host a server asks
// for, it listens on 127.0.0.1 only, and reports the port it got on stderr.
"use strict";
const net = require("node:net");

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  const first = args[0];
  const port = first !== null && typeof first === "object" ? Number(first.port) || 0 : Number(first) || 0;
  this.once("listening", () => {
    process.stderr.write(`MCP_BARBICAN_TEST_PORT=${this.address().port}\n`);
  });
  return listen.call(this, { port, host: "127.0.0.1" }, callback);
};
