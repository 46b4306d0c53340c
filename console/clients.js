// The clients table: the REST listing's filters, sorting on the time
// columns, paging with the bookmark, and rows kept up to date from the
// change stream in place (a row changes when its client does; the page,
// sort and scroll position stay as they are).

import { ApiError, getJson, stream, withQuery } from "./api.js";
import { badge, h, hex, render, when } from "./dom.js";

const WINDOWS = [
  ["", "any time"],
  ["now-15m", "last 15 minutes"],
  ["now-1h", "last hour"],
  ["now-24h", "last 24 hours"],
  ["now-7d", "last 7 days"],
];
const TIME_COLUMNS = [
  ["lastConnectTime", "Last connect"],
  ["lastDisconnectTime", "Last disconnect"],
  ["lastActivityTime", "Last activity"],
];
const STREAM_FILTERS = ["connectionStatus", "clientType", "deviceType", "appId", "clientIdPrefix"];

// Kept while the console is open, so that coming back from a client's page
// finds the same filters, sort and page.
const state = {
  filters: {},
  sort: "",
  bookmarks: [], // bookmarks of the pages before this one ("" for the first)
  bookmark: "",
  limit: 25,
};

function select(name, label, options, value) {
  return [
    h("label", { for: `f-${name}`, text: label }),
    h(
      "select",
      { id: `f-${name}`, name },
      options.map(([v, t]) => h("option", { value: v, selected: v === (value || ""), text: t })),
    ),
  ];
}

function text(name, label, value, placeholder) {
  return [
    h("label", { for: `f-${name}`, text: label }),
    h("input", { id: `f-${name}`, name, value: value || "", placeholder, spellcheck: "false", autocomplete: "off" }),
  ];
}

function filterForm(onApply) {
  const f = state.filters;
  const form = h(
    "form.filters",
    {
      "aria-label": "Filters",
      onsubmit: (ev) => {
        ev.preventDefault();
        const data = new FormData(form);
        state.filters = {};
        for (const [k, v] of data.entries()) if (v.trim()) state.filters[k] = v.trim();
        state.bookmarks = [];
        state.bookmark = "";
        onApply();
      },
    },
    h("div.field", {}, select("connectionStatus", "Status", [["", "any"], ["connected", "connected"], ["disconnected", "disconnected"]], f.connectionStatus)),
    h("div.field", {}, select("clientType", "Client type", [["", "any"], ["device", "device"], ["gateway", "gateway"], ["application", "application"], ["unknown", "unknown"]], f.clientType)),
    h("div.field", {}, text("deviceType", "Device type", f.deviceType)),
    h("div.field", {}, text("appId", "App id", f.appId)),
    h("div.field", {}, text("clientIdPrefix", "Client id prefix", f.clientIdPrefix, "d:org:type:")),
    h("div.field", {}, select("connectedAfter", "Connected in", WINDOWS, f.connectedAfter)),
    h("div.field", {}, select("disconnectedAfter", "Disconnected in", WINDOWS, f.disconnectedAfter)),
    h("div.field", {}, select("activeAfter", "Active in", WINDOWS, f.activeAfter)),
    h(
      "div.actions",
      {},
      h("button", { type: "submit", id: "apply", text: "Apply filters" }),
      h("button.secondary", {
        type: "button",
        text: "Clear",
        onclick: () => {
          state.filters = {};
          state.bookmarks = [];
          state.bookmark = "";
          onApply();
        },
      }),
    ),
  );
  return form;
}

function cause(s) {
  if (!s.lastDisconnectInitiator) return "—";
  const code = s.lastDisconnectReasonCode === undefined ? "" : ` ${hex(s.lastDisconnectReasonCode)}`;
  return `${s.lastDisconnectInitiator}${code}`;
}

function cells(s) {
  return [
    h("td", {}, h("a", { href: `#/client/${encodeURIComponent(s.id)}`, text: s.id })),
    h("td", { text: s.clientType }),
    h("td.status", {}, badge(s.connectionStatus)),
    h("td", {}, h("time", { datetime: s.lastConnectTime, text: when(s.lastConnectTime) })),
    h("td", {}, s.lastDisconnectTime ? h("time", { datetime: s.lastDisconnectTime, text: when(s.lastDisconnectTime) }) : "—"),
    h("td", {}, h("time", { datetime: s.lastActivityTime, text: when(s.lastActivityTime) }), ` ${s.lastActivityEvent}`),
    h("td", { text: cause(s), title: s.lastDisconnectReason || "" }),
    h("td.n", { text: s.lastCloseCode ?? "—" }),
  ];
}

function row(s) {
  return h("tr", { "data-id": s.id, "data-status": s.connectionStatus }, cells(s));
}

function sortHeader(field, label, reload) {
  const dir = state.sort === field ? "ascending" : state.sort === `-${field}` ? "descending" : "none";
  const next = dir === "descending" ? field : `-${field}`;
  const arrow = dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : "";
  return h(
    "th",
    { scope: "col", "aria-sort": dir },
    h("button.sort", {
      type: "button",
      "data-sort": field,
      "aria-label": `${label}: sort ${next.startsWith("-") ? "newest first" : "oldest first"}`,
      onclick: () => {
        state.sort = next;
        state.bookmarks = [];
        state.bookmark = "";
        reload();
      },
      text: label + arrow,
    }),
  );
}

export async function show(ctx) {
  const reload = () => load(ctx);
  const form = filterForm(reload);
  const tableArea = h("div.table-area", { id: "clients-area", "aria-live": "off" });
  const live = h("span.live", { id: "live", text: "connecting…" });
  const pending = h("p.pending", { id: "pending", hidden: true });
  render(h("div.title", {}, h("h1", { text: "Clients" }), live), form, pending, tableArea);
  ctx.area = tableArea;
  ctx.live = live;
  ctx.pending = pending;
  await load(ctx);
}

async function load(ctx) {
  if (ctx.stream) ctx.stream.abort();
  const controller = new AbortController();
  ctx.signal.addEventListener("abort", () => controller.abort());
  ctx.stream = controller;
  const area = ctx.area;
  const reload = () => load(ctx);
  let page;
  try {
    page = await getJson(
      withQuery("/api/v0002/clientconnectionstates", {
        ...state.filters,
        _sort: state.sort,
        _limit: state.limit,
        _bookmark: state.bookmark,
      }),
      { signal: controller.signal },
    );
  } catch (e) {
    if (controller.signal.aborted) return;
    if (e instanceof ApiError && e.status === 401) return ctx.onRefused();
    area.replaceChildren(h("p.error", { role: "alert", text: e.message }));
    return;
  }
  const rows = new Map();
  const tbody = h("tbody", {}, page.results.map((s) => {
    const tr = row(s);
    rows.set(s.id, tr);
    return tr;
  }));
  const table = h(
    "table.data",
    { id: "clients" },
    h("caption.sr", { text: "Clients; sort with the buttons in the time column headers" }),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col", text: "Client id" }),
        h("th", { scope: "col", text: "Type" }),
        h("th", { scope: "col", text: "Status" }),
        TIME_COLUMNS.map(([f, l]) => sortHeader(f, l, reload)),
        h("th", { scope: "col", text: "Last disconnect by" }),
        h("th", { scope: "col", text: "Close code" }),
      ),
    ),
    tbody,
  );
  const pageNo = state.bookmarks.length + 1;
  const pager = h(
    "nav.pager",
    { "aria-label": "Pages" },
    h("button.secondary", {
      type: "button",
      id: "prev",
      disabled: state.bookmarks.length === 0,
      text: "← Previous",
      onclick: () => {
        state.bookmark = state.bookmarks.pop() || "";
        reload();
      },
    }),
    h("span", { text: `Page ${pageNo}${page.results.length ? "" : " (empty)"}` }),
    h("button.secondary", {
      type: "button",
      id: "next",
      disabled: !page.bookmark,
      text: "Next →",
      onclick: () => {
        state.bookmarks.push(state.bookmark);
        state.bookmark = page.bookmark;
        reload();
      },
    }),
  );
  area.replaceChildren(
    page.results.length ? h("div.scroll", {}, table) : h("p.empty", { id: "no-clients", text: "No client matches these filters." }),
    pager,
  );
  if (!page.results.length) area.firstChild.after(h("div.scroll.hidden-table", {}, table));

  // Live: the change stream with the same filters (the stream has no time
  // filters; the time columns update in place).
  let missed = 0;
  const params = {};
  for (const k of STREAM_FILTERS) if (state.filters[k]) params[k] = state.filters[k];
  ctx.pending.hidden = true;
  stream(
    "/api/v0002/stream/clientconnectionstates",
    params,
    (ev) => {
      if (ev.event !== "change") return;
      const id = ev.data.clientId;
      const tr = rows.get(id);
      if (tr && ev.data.state) {
        tr.replaceChildren(...cells(ev.data.state));
        tr.dataset.status = ev.data.state.connectionStatus;
        tr.classList.remove("changed");
        void tr.offsetWidth; // restart the highlight
        tr.classList.add("changed");
      } else if (tr && ev.data.kind === "deleted") {
        tr.classList.add("deleted");
      } else if (!tr && ev.data.state && ev.data.kind !== "activity") {
        if (pageNo === 1 && !state.sort && tbody.isConnected && tbody.children.length < state.limit && !Object.keys(state.filters).some((k) => k.endsWith("After"))) {
          // A new client on the first page's room: show it at once.
          const fresh = row(ev.data.state);
          fresh.classList.add("changed");
          rows.set(id, fresh);
          tbody.append(fresh);
          const hidden = area.querySelector(".hidden-table");
          if (hidden) {
            area.querySelector("#no-clients")?.remove();
            hidden.classList.remove("hidden-table");
          }
        } else {
          missed += 1;
          ctx.pending.hidden = false;
          ctx.pending.replaceChildren(
            `${missed} change${missed === 1 ? "" : "s"} to clients not on this page. `,
            h("button.link", { type: "button", text: "Reload the page", onclick: reload }),
          );
        }
      }
    },
    controller.signal,
    (s) => {
      ctx.live.textContent = s === "live" ? "live" : s;
      ctx.live.className = `live ${s}`;
      if (s === "refused") ctx.onRefused();
    },
  );
}
