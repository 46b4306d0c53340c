// The overview: connected clients by type, the last hour's connects and
// disconnects per minute, disconnects by initiator and reason code, and
// the clients that dropped most often. Numbers come from
// GET /api/v0002/clientconnectionstats; the change stream triggers a
// fresh read (at most one a second) so the page follows the fleet live.

import { ApiError, getJson, stream } from "./api.js";
import { badge, h, hex, render } from "./dom.js";
import { barList, lineChart } from "./charts.js";

const TYPES = ["device", "gateway", "application", "unknown"];

function time(iso) {
  return new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function draw(stats, live) {
  const c = stats.connected;
  const cards = h(
    "ul.cards",
    { "aria-label": "Connected clients by type" },
    h("li.card.total", {}, h("span.num", { id: "connected-total", text: c.total }), h("span", { text: "connected" })),
    TYPES.map((t) => h("li.card", {}, h("span.num", { "data-type": t, text: c[t] }), h("span", { text: t }))),
  );
  const minutes = stats.perMinute;
  const sum = (f) => minutes.reduce((a, m) => a + m[f], 0);
  const activity = h(
    "section.panel",
    { "aria-labelledby": "activity-title" },
    h("h2", { id: "activity-title", text: "Last hour, per minute" }),
    h(
      "p.legend",
      {},
      h("span.key.connects", { text: `connects (${sum("connects")})` }),
      h("span.key.disconnects", { text: `disconnects (${sum("disconnects")})` }),
      h("span.key.failed", { text: `failed connects (${sum("failedConnects")})` }),
    ),
    lineChart(
      [
        { name: "connects", cls: "connects", values: minutes.map((m) => m.connects) },
        { name: "disconnects", cls: "disconnects", values: minutes.map((m) => m.disconnects) },
        { name: "failed connects", cls: "failed", values: minutes.map((m) => m.failedConnects) },
      ],
      [time(minutes[0].minute), time(minutes[minutes.length - 1].minute)],
      `Connects ${sum("connects")}, disconnects ${sum("disconnects")} and failed connects ${sum("failedConnects")} per minute over the last hour`,
    ),
    stats.truncated ? h("p.note", { text: `Counted the newest ${stats.entriesRead} log entries only.` }) : null,
  );
  const causes = stats.disconnectsByCause;
  const byCause = h(
    "section.panel",
    { "aria-labelledby": "causes-title" },
    h("h2", { id: "causes-title", text: "Disconnects by initiator and reason (last hour)" }),
    causes.length
      ? barList(
          causes.map((x) => ({
            label: `${x.initiator}: ${x.reasonCode === undefined ? "no reason code" : `${hex(x.reasonCode)} ${x.reason}`}`,
            value: x.count,
            cls: x.initiator,
          })),
          "Disconnects by initiator and reason code: " +
            causes.map((x) => `${x.initiator} ${hex(x.reasonCode)} ${x.count}`).join(", "),
        )
      : h("p.empty", { text: "No disconnects in the last hour." }),
  );
  const top = stats.mostDisconnected;
  const flappers = h(
    "section.panel",
    { "aria-labelledby": "flap-title" },
    h("h2", { id: "flap-title", text: "Dropped most often (last hour)" }),
    top.length
      ? h(
          "div.scroll",
          {},
          h(
            "table.data",
            { id: "flappers" },
            h("caption.sr", { text: "Clients with the most disconnects in the last hour, with their counters" }),
            h("thead", {}, h("tr", {}, ["Client", "Status", "Disconnects (hour)", "By network", "By server", "By client", "Connects"].map((t) => h("th", { scope: "col", text: t })))),
            h(
              "tbody",
              {},
              top.map((x) =>
                h(
                  "tr",
                  {},
                  h("td", {}, h("a", { href: `#/client/${encodeURIComponent(x.id)}`, text: x.id })),
                  h("td", {}, x.connectionStatus ? badge(x.connectionStatus) : "deleted"),
                  h("td.n", { text: x.disconnects }),
                  h("td.n", { text: x.counters ? x.counters.disconnectsByNetwork : "—" }),
                  h("td.n", { text: x.counters ? x.counters.disconnectsByServer : "—" }),
                  h("td.n", { text: x.counters ? x.counters.disconnectsByClient : "—" }),
                  h("td.n", { text: x.counters ? x.counters.connects : "—" }),
                ),
              ),
            ),
          ),
        )
      : h("p.empty", { text: "No client dropped in the last hour." }),
  );
  render(
    h("div.title", {}, h("h1", { text: "Overview" }), live),
    cards,
    h("div.grid", {}, activity, byCause),
    flappers,
  );
}

export async function show(ctx) {
  const live = h("span.live", { id: "live", text: "connecting…" });
  let timer = null;
  let last = 0;
  const refresh = async () => {
    timer = null;
    last = Date.now();
    try {
      const stats = await getJson("/api/v0002/clientconnectionstats", { signal: ctx.signal });
      if (!ctx.signal.aborted) draw(stats, live);
    } catch (e) {
      if (ctx.signal.aborted) return;
      if (e instanceof ApiError && e.status === 401) return ctx.onRefused();
      render(h("h1", { text: "Overview" }), h("p.error", { role: "alert", text: e.message }));
    }
  };
  await refresh();
  stream(
    "/api/v0002/stream/clientconnectionstates",
    {},
    (ev) => {
      if (ev.event !== "change" || ev.data.kind === "activity" || timer) return;
      timer = setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
    },
    ctx.signal,
    (state) => {
      live.textContent = state === "live" ? "live" : state;
      live.className = `live ${state}`;
    },
  );
}
