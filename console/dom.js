// A tiny element builder and formatting helpers shared by the pages.

/** h("tag.class", {attr: value, onclick: fn}, ...children) */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A time as the browser's local date and time, or "—". */
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

/** "0x8D" for 141. */
export function hex(code) {
  return code === undefined || code === null ? "—" : "0x" + code.toString(16).toUpperCase().padStart(2, "0");
}

/** A status badge: text plus colour, never colour alone. */
export function badge(status) {
  return h(`span.badge.${status}`, { text: status });
}

export function announce(text) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.add("shown");
  clearTimeout(announce.timer);
  announce.timer = setTimeout(() => el.classList.remove("shown"), 4000);
}

/** Replaces the main area's content; moves focus there for keyboard and screen-reader users. */
export function render(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}
