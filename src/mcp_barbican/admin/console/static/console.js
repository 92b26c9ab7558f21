// The mcp-barbican console: reads the admin API with the session cookie, changes it with the CSRF token.
// Data is only ever written as text (textContent), never parsed as HTML.

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const SVG = "http://www.w3.org/2000/svg";
const CHART_POINTS = 60;
const CHARTS = [
  ["authentication_failures", "Authentication failures"],
  ["ip_blocked", "Blocked requests (address)"],
  ["rate_limit_exceeded", "Rate limited"],
  ["total_requests", "MCP requests"],
];
const history = Object.fromEntries(CHARTS.map(([key]) => [key, []]));

function status(text) {
  document.getElementById("status").textContent = text;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    window.location.assign("/admin/ui/login");
    throw new Error("the session ended");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${(data && data.message) || ""}`);
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function fill(tbody, items, render, empty) {
  tbody.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    render(row, item);
    tbody.appendChild(row);
  }
  if (!items.length) {
    const row = document.createElement("tr");
    cell(row, empty).colSpan = 8;
    tbody.appendChild(row);
  }
}

async function guarded(job) {
  try {
    await job();
  } catch (error) {
    status(error.message);
  }
}

// -- MCPs --------------------------------------------------------------------------------

async function refreshMcps() {
  const data = await api("GET", "/admin/mcps");
  fill(document.getElementById("mcp-rows"), data.mcps, (row, mcp) => {
    const s = mcp.status;
    for (const value of [s.id, s.transport, s.status, s.sessions, s.tool_count]) cell(row, value);
    row.dataset.mcp = s.id;
  }, "No MCP is served.");
  return data.mcps.map((mcp) => mcp.status.id);
}

// -- IP rules and bans -------------------------------------------------------------------

async function refreshRules() {
  const data = await api("GET", "/admin/security/ip-rules");
  fill(document.getElementById("rule-rows"), data.rules, (row, rule) => {
    row.dataset.rule = rule.id;
    for (const value of [rule.cidr, rule.action, rule.reason, rule.created_at, rule.expires_at || "never"]) {
      cell(row, value);
    }
    const lift = button(rule.action === "deny" ? "Lift" : "Remove", "lift", () => guarded(async () => {
      await api("DELETE", `/admin/security/ip-rules/${encodeURIComponent(rule.id)}`);
      status(`Removed the rule for ${rule.cidr}.`);
      await refreshRules();
    }));
    lift.dataset.rule = rule.id;
    row.appendChild(document.createElement("td")).appendChild(lift);
  }, "No ban or dynamic rule.");
}

// -- tokens ------------------------------------------------------------------------------

function showToken(data) {
  document.getElementById("token-plaintext").textContent = data.token;
  document.getElementById("token-shown").hidden = false;
}

async function refreshTokens() {
  const data = await api("GET", "/admin/tokens");
  fill(document.getElementById("token-rows"), data.tokens, (row, token) => {
    row.dataset.token = token.id;
    const state = token.active ? "active" : token.revoked_at ? "revoked" : "expired";
    for (const value of [token.id, token.roles.join(", "), token.description, token.created_at,
      token.expires_at || "never", state]) {
      cell(row, value);
    }
    const actions = row.appendChild(document.createElement("td"));
    if (!token.active) return;
    const id = encodeURIComponent(token.id);
    actions.appendChild(button("Revoke", "revoke", () => guarded(async () => {
      await api("DELETE", `/admin/tokens/${id}`);
      status(`Revoked ${token.id}.`);
      await refreshTokens();
    })));
    actions.appendChild(button("Rotate", "rotate", () => guarded(async () => {
      showToken(await api("POST", `/admin/tokens/${id}/rotate`, {}));
      status(`Rotated ${token.id}: the old token works for another hour.`);
      await refreshTokens();
    })));
  }, "No token issued through the admin API.");
}

function issueForm() {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const fields = new FormData(form);
      const body = { id: fields.get("id"), description: fields.get("description") || "" };
      const roles = String(fields.get("roles") || "").split(",").map((r) => r.trim()).filter(Boolean);
      if (roles.length) body.roles = roles;
      if (fields.get("ttl")) body.expires_in = Number(fields.get("ttl"));
      showToken(await api("POST", "/admin/tokens", body));
      status(`Issued ${body.id}.`);
      form.reset();
      await refreshTokens();
    });
  });
}

// -- pins --------------------------------------------------------------------------------

async function refreshPins(mcpIds) {
  const list = document.getElementById("pin-list");
  const blocks = [];
  for (const id of mcpIds) {
    let data;
    try {
      data = await api("GET", `/admin/mcps/${encodeURIComponent(id)}/pins`);
    } catch {
      continue; // pins are not kept for this MCP
    }
    for (const change of data.pending) {
      const block = document.createElement("article");
      block.className = "pin";
      const title = block.appendChild(document.createElement("h3"));
      title.textContent = `${id}: ${change.tool} (${change.change})`;
      if (change.findings && change.findings.length) {
        const found = change.findings.map((f) => `${f.severity} ${f.rule} (${f.where})`).join("; ");
        block.appendChild(document.createElement("p")).textContent = `Findings: ${found}`;
      }
      const diff = block.appendChild(document.createElement("pre"));
      for (const line of String(change.diff || "").split("\n")) {
        const span = diff.appendChild(document.createElement("span"));
        const header = line.startsWith("+++") || line.startsWith("---");
        span.className = header ? "" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
        span.textContent = `${line}\n`;
      }
      block.appendChild(button("Approve", "approve", () => guarded(async () => {
        await api("POST", `/admin/mcps/${encodeURIComponent(id)}/pins/approve`, { tools: [change.tool] });
        status(`Approved ${change.tool} of ${id}.`);
        await refreshPins(mcpIds);
      })));
      blocks.push(block);
    }
  }
  if (!blocks.length) {
    const none = document.createElement("p");
    none.textContent = "No tool definition changed since it was pinned.";
    blocks.push(none);
  }
  list.replaceChildren(...blocks);
}

// -- charts ------------------------------------------------------------------------------

function drawChart(key, label) {
  const area = document.getElementById("chart-area");
  let figure = document.getElementById(`chart-${key}`);
  if (!figure) {
    figure = area.appendChild(document.createElement("figure"));
    figure.id = `chart-${key}`;
    figure.appendChild(document.createElementNS(SVG, "svg"));
    figure.appendChild(document.createElement("figcaption"));
  }
  const points = history[key];
  const svg = figure.querySelector("svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("class", "chart");
  const max = Math.max(1, ...points);
  const line = document.createElementNS(SVG, "polyline");
  const step = 300 / (CHART_POINTS - 1);
  const offset = CHART_POINTS - points.length;
  const xy = points.map((v, i) => [((offset + i) * step).toFixed(1), (95 - (v / max) * 90).toFixed(1)]);
  line.setAttribute("points", xy.map(([x, y]) => `${x},${y}`).join(" "));
  const dot = document.createElementNS(SVG, "circle");
  const [x, y] = xy.length ? xy[xy.length - 1] : ["300", "95"];
  dot.setAttribute("cx", x);
  dot.setAttribute("cy", y);
  dot.setAttribute("r", "3");
  svg.replaceChildren(line, dot);
  figure.querySelector("figcaption").textContent = `${label}: ${points.length ? points[points.length - 1] : 0}`;
}

async function refreshCharts() {
  const [security, metrics] = await Promise.all([api("GET", "/admin/security/metrics"), api("GET", "/admin/metrics")]);
  const values = { ...security, total_requests: metrics.metrics.total_requests };
  for (const [key, label] of CHARTS) {
    history[key].push(Number(values[key]) || 0);
    if (history[key].length > CHART_POINTS) history[key].shift();
    drawChart(key, label);
  }
}

// -- live events -------------------------------------------------------------------------

const EVENT_ROWS = 200;

function follow() {
  const note = document.getElementById("feed-note");
  if (note.textContent.trim()) return; // no audit sink: nothing to follow
  const source = new EventSource("/admin/events");
  const tbody = document.getElementById("event-rows");
  const show = (message) => {
    const record = JSON.parse(message.data);
    const row = document.createElement("tr");
    row.className = record.success ? "ok" : "refused";
    const detail = record.error || record.resource || "";
    for (const value of [record.id, record.timestamp, record.type, record.action,
      record.success ? "ok" : "refused", record.remote_addr, detail]) {
      cell(row, value);
    }
    tbody.prepend(row);
    while (tbody.rows.length > EVENT_ROWS) tbody.deleteRow(-1);
  };
  source.onmessage = show;
  const types = document.querySelector('meta[name="event-types"]').content.split(" ");
  for (const type of types) {
    source.addEventListener(type, show);
  }
  source.onerror = () => { note.textContent = source.readyState === EventSource.CLOSED ? "The event stream closed." : ""; };
}

// -- start -------------------------------------------------------------------------------

document.getElementById("logout").addEventListener("click", () => guarded(async () => {
  await api("POST", "/admin/ui/logout");
  window.location.assign("/admin/ui/login");
}));
issueForm();
follow();

async function refresh() {
  const ids = await refreshMcps();
  await Promise.all([refreshRules(), refreshTokens(), refreshPins(ids), refreshCharts()]);
}

guarded(refresh).then(() => document.body.classList.add("loaded"));
setInterval(() => guarded(async () => {
  await Promise.all([refreshMcps(), refreshRules(), refreshTokens(), refreshCharts()]);
}), 3000);
