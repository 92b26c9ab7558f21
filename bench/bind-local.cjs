// Preload (`node --require bench/bind-local.cjs ...`) that keeps every TCP listener on loopback.
// server-everything and supergateway call `app.listen(port)`, which binds every interface and
// has no host option; this forces 127.0.0.1 whenever a listen() call names no host.
"use strict";
const net = require("node:net");

const LOOPBACK = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === "object" && !Array.isArray(first)) {
    // listen({port, host?, ...}, cb?): a handle or a path is left alone.
    if (first.path === undefined && first.handle === undefined && first._handle === undefined && first.fd === undefined) {
      args[0] = { ...first, host: LOOPBACK };
    }
  } else if (isPort(first) || first === undefined) {
    // listen(port?, host?, backlog?, cb?): replace or insert the host.
    if (typeof args[1] === "string") {
      args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK);
    }
    if (args[0] === undefined) args[0] = 0;
  }
  return originalListen.apply(this, args);
};
