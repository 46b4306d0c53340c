// Small inline SVG charts drawn from numbers; no library. Each chart has
// a text alternative (role="img" with a label) and colours that are not
// the only carrier of meaning (a legend, and the numbers in text nearby).

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

function frame(width, height, label) {
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label,
    class: "chart",
  });
  svg.append(s("title", {}, label));
  return svg;
}

/**
 * Lines over time: `series` is [{name, values, cls}], all the same length;
 * `labels` the x labels of the first and last point.
 */
export function lineChart(series, labels, label) {
  const W = 600, H = 160, L = 34, B = 20, T = 8, R = 8;
  const n = Math.max(...series.map((x) => x.values.length), 2);
  const max = Math.max(1, ...series.flatMap((x) => x.values));
  const x = (i) => L + (i * (W - L - R)) / (n - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = frame(W, H, label);
  svg.append(
    s("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }),
    s("line", { x1: L, y1: T, x2: L, y2: y(0), class: "axis" }),
    s("text", { x: L - 4, y: T + 8, class: "tick", "text-anchor": "end" }, String(max)),
    s("text", { x: L - 4, y: y(0), class: "tick", "text-anchor": "end" }, "0"),
    s("text", { x: L, y: H - 4, class: "tick" }, labels[0]),
    s("text", { x: W - R, y: H - 4, class: "tick", "text-anchor": "end" }, labels[1]),
  );
  for (const line of series) {
    const points = line.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { points, class: `series ${line.cls}` }));
  }
  return svg;
}

/** Horizontal bars: `items` is [{label, value, cls}]. */
export function barList(items, label) {
  const W = 600, row = 26, L = 250, R = 50;
  const H = Math.max(row, items.length * row);
  const max = Math.max(1, ...items.map((i) => i.value));
  const svg = frame(W, H, label);
  items.forEach((item, i) => {
    const y = i * row;
    const w = Math.max(2, ((W - L - R) * item.value) / max);
    svg.append(
      s("text", { x: L - 6, y: y + 17, class: "bar-label", "text-anchor": "end" }, item.label),
      s("rect", { x: L, y: y + 4, width: w.toFixed(1), height: row - 8, class: `bar ${item.cls || ""}` }),
      s("text", { x: L + w + 6, y: y + 17, class: "bar-value" }, String(item.value)),
    );
  });
  return svg;
}

/**
 * A client's timeline: connected spans (green), disconnects (red ticks)
 * and failed connects (orange ticks) between `from` and `to` (ms).
 * `entries` are log entries, any order.
 */
export function timeline(entries, from, to, label) {
  const W = 600, H = 56, L = 6, R = 6;
  const span = Math.max(1, to - from);
  const x = (t) => L + ((t - from) * (W - L - R)) / span;
  const svg = frame(W, H, label);
  svg.append(s("line", { x1: L, y1: 30, x2: W - R, y2: 30, class: "axis" }));
  const sorted = [...entries].sort((a, b) => a.timestamp.localeCompare(b.timestamp));
  let open = null;
  for (const e of sorted) {
    const t = Date.parse(e.timestamp);
    if (e.kind === "connected") {
      open = t;
    } else if (e.kind === "disconnected") {
      if (open !== null) {
        svg.append(s("rect", { x: x(open), y: 22, width: Math.max(1, x(t) - x(open)), height: 16, class: "span" }));
        open = null;
      }
    }
  }
  if (open !== null) {
    svg.append(s("rect", { x: x(open), y: 22, width: Math.max(1, x(to) - x(open)), height: 16, class: "span" }));
  }
  for (const e of sorted) {
    const t = x(Date.parse(e.timestamp));
    if (e.kind === "disconnected") svg.append(s("line", { x1: t, y1: 14, x2: t, y2: 46, class: "tick-disconnect" }));
    if (e.kind === "connectFailed") svg.append(s("line", { x1: t, y1: 14, x2: t, y2: 46, class: "tick-failed" }));
    if (e.kind === "connected") svg.append(s("line", { x1: t, y1: 18, x2: t, y2: 42, class: "tick-connect" }));
  }
  svg.append(
    s("text", { x: L, y: 10, class: "tick" }, new Date(from).toLocaleString()),
    s("text", { x: W - R, y: 10, class: "tick", "text-anchor": "end" }, new Date(to).toLocaleString()),
  );
  return svg;
}
