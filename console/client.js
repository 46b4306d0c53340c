// One client: its state and counters, its connection log (newest first),
// a timeline of its connects and disconnects, and for operators a
// Disconnect button (POST .../disconnect) behind a confirmation. Follows
// the client live through the change stream.

import { ApiError, getJson, post, stream, withQuery } from "./api.js";
import { announce, badge, h, hex, render, when } from "./dom.js";
import { timeline } from "./charts.js";

const RANK = { "read-only": 0, operator: 1, admin: 2 };

function facts(s) {
  const c = s.counters;
  const rows = [
    ["Status", badge(s.connectionStatus)],
    ["Client type", s.clientType],
    ["Last connect", when(s.lastConnectTime)],
    ["Last disconnect", when(s.lastDisconnectTime)],
    ["Last activity", `${when(s.lastActivityTime)} (${s.lastActivityEvent})`],
    ["Last disconnect by", s.lastDisconnectInitiator || "—"],
    ["Reason", s.lastDisconnectInitiator ? `${hex(s.lastDisconnectReasonCode)} ${s.lastDisconnectReason || ""}` : "—"],
    ["Close code", s.lastCloseCode ?? "—"],
    ["Address", `${s.clientAddr}:${s.port}${s.secure ? " (TLS)" : ""}`],
    ["Protocol", s.mqttConnectProtocol ? `MQTT ${s.mqttConnectProtocol}` : "—"],
    ["Keepalive", `${s.keepAliveSeconds} s`],
    ["Expected alive until", when(s.expectedAliveUntil)],
  ];
  const counters = [
    ["Connects", c.connects],
    ["Failed connects", c.failedConnects],
    ["Taken over", c.takeovers],
    ["Disconnects by client", c.disconnectsByClient],
    ["Disconnects by server", c.disconnectsByServer],
    ["Disconnects by network", c.disconnectsByNetwork],
  ];
  const dl = (pairs, id) => h("dl.facts", { id }, pairs.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
  return h(
    "div.grid",
    {},
    h("section.panel", { "aria-labelledby": "state-title" }, h("h2", { id: "state-title", text: "State" }), dl(rows, "state")),
    h("section.panel", { "aria-labelledby": "counters-title" }, h("h2", { id: "counters-title", text: "Counters" }), dl(counters, "counters")),
  );
}

function logTable(entries) {
  if (!entries.length) return h("p.empty", { text: "No log entries." });
  return h(
    "div.scroll",
    {},
    h(
      "table.data",
      { id: "log" },
      h("caption.sr", { text: "Connection log, newest first" }),
      h("thead", {}, h("tr", {}, ["Time", "Event", "Initiator", "Reason code", "Close code", "Message"].map((t) => h("th", { scope: "col", text: t })))),
      h(
        "tbody",
        {},
        entries.map((e) =>
          h(
            "tr",
            { "data-kind": e.kind },
            h("td", {}, h("time", { datetime: e.timestamp, text: when(e.timestamp) })),
            h("td", { text: e.kind + (e.stale ? " (stale)" : "") }),
            h("td", { text: e.initiator || "—" }),
            h("td", { text: e.reasonCode === undefined ? "—" : hex(e.reasonCode) }),
            h("td.n", { text: e.closeCode ?? "—" }),
            h("td.message", { text: e.message }),
          ),
        ),
      ),
    ),
  );
}

function disconnectControl(ctx, id, s) {
  if (RANK[ctx.me.role] < RANK.operator || s.connectionStatus !== "connected") return null;
  const dialog = h(
    "dialog",
    { id: "confirm", "aria-labelledby": "confirm-title" },
    h(
      "form",
      { method: "dialog" },
      h("h2", { id: "confirm-title", text: "Disconnect this client?" }),
      h("p", { text: `${id} will be disconnected by the server (reason code 0x98, administrative action). It may connect again.` }),
      h(
        "div.actions",
        {},
        h("button.secondary", { value: "cancel", id: "confirm-cancel", text: "Cancel" }),
        h("button.danger", { value: "yes", id: "confirm-yes", text: "Disconnect" }),
      ),
    ),
  );
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "yes") return;
    try {
      await post(`/api/v0002/clientconnectionstates/${encodeURIComponent(id)}/disconnect`);
      announce(`Disconnect sent to ${id}.`);
    } catch (e) {
      announce(`Disconnect failed: ${e.message}`);
    }
  });
  const button = h("button.danger", { type: "button", id: "disconnect", text: "Disconnect…", onclick: () => dialog.showModal() });
  return h("div.controls", {}, button, dialog);
}

async function draw(ctx, id, live) {
  let s, log;
  try {
    [s, log] = await Promise.all([
      getJson(`/api/v0002/clientconnectionstates/${encodeURIComponent(id)}`, { signal: ctx.signal }),
      getJson(withQuery("/api/v0002/clientconnectionlogs", { clientId: id, _limit: 200 }), { signal: ctx.signal }),
    ]);
  } catch (e) {
    if (ctx.signal.aborted) return;
    if (e instanceof ApiError && e.status === 401) return ctx.onRefused();
    const text = e instanceof ApiError && e.status === 404 ? `No client ${id} is known.` : e.message;
    render(h("h1", { text: id }), h("p.error", { role: "alert", text }), h("p", {}, h("a", { href: "#/clients", text: "← Clients" })));
    return;
  }
  if (ctx.signal.aborted) return;
  const entries = log.results;
  const now = Date.now();
  const from = entries.length ? Math.min(now - 3600e3, ...entries.map((e) => Date.parse(e.timestamp))) : now - 3600e3;
  const keepFocus = document.activeElement && document.activeElement.id;
  render(
    h("p.back", {}, h("a", { href: "#/clients", text: "← Clients" })),
    h("div.title", {}, h("h1", { id: "client-id", text: id }), live),
    disconnectControl(ctx, id, s),
    facts(s),
    h(
      "section.panel",
      { "aria-labelledby": "timeline-title" },
      h("h2", { id: "timeline-title", text: "Timeline" }),
      h("p.legend", {}, h("span.key.connects", { text: "connected" }), h("span.key.disconnects", { text: "disconnect" }), h("span.key.failed", { text: "failed connect" })),
      timeline(entries, from, now, `Connects and disconnects of ${id} from ${new Date(from).toLocaleString()} to now: ${entries.length} log entries`),
    ),
    h(
      "section.panel",
      { "aria-labelledby": "log-title" },
      h("h2", { id: "log-title", text: `Connection log (${entries.length}${log.bookmark ? "+" : ""}, newest first)` }),
      logTable(entries),
    ),
  );
  if (keepFocus) document.getElementById(keepFocus)?.focus();
}

export async function show(ctx, id) {
  const live = h("span.live", { id: "live", text: "connecting…" });
  await draw(ctx, id, live);
  let timer = null;
  stream(
    "/api/v0002/stream/clientconnectionstates",
    { clientIdPrefix: id },
    (ev) => {
      if (ev.event !== "change" || ev.data.clientId !== id || timer) return;
      timer = setTimeout(() => {
        timer = null;
        if (!document.querySelector("dialog[open]")) draw(ctx, id, live);
      }, 150);
    },
    ctx.signal,
    (state) => {
      live.textContent = state === "live" ? "live" : state;
      live.className = `live ${state}`;
    },
  );
}
