// The console's entry point: finds out who the caller is (GET
// /api/v0002/whoami), asks for an API key and token when the server wants
// them, and shows the page the location's hash names:
//   #/               overview
//   #/clients        the clients table
//   #/client/{id}    one client
// Credentials live in sessionStorage only; nothing of them goes in a URL.

import { ApiError, credentials, forgetCredentials, getJson, saveCredentials } from "./api.js";
import { h, render } from "./dom.js";
import * as overview from "./overview.js";
import * as clients from "./clients.js";
import * as client from "./client.js";

let me = null;
let current = null; // AbortController of the page on show

async function whoami() {
  try {
    me = await getJson("/api/v0002/whoami");
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return false;
    throw e;
  }
}

function showWho() {
  const who = document.getElementById("who");
  if (!me) {
    who.replaceChildren();
    return;
  }
  const parts = [h("span", { text: me.auth ? `${me.key} (${me.role})` : "open mode (no sign-in)" })];
  if (me.auth) {
    parts.push(
      h("button.link", {
        type: "button",
        onclick: () => {
          forgetCredentials();
          me = null;
          start();
        },
        text: "Sign out",
      }),
    );
  }
  who.replaceChildren(...parts);
}

function signIn(problem) {
  if (current) current.abort();
  showWho();
  const key = h("input", { id: "key", name: "key", autocomplete: "username", required: true, spellcheck: "false" });
  const token = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const error = h("p.error", { id: "signin-error", role: "alert", text: problem || "" });
  const form = h(
    "form.signin",
    {
      "aria-labelledby": "signin-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        saveCredentials(key.value.trim(), token.value);
        try {
          if (await whoami()) {
            route();
          } else {
            forgetCredentials();
            error.textContent = "That API key and token were not accepted.";
            token.focus();
          }
        } catch (e) {
          forgetCredentials();
          error.textContent = e.message;
        }
      },
    },
    h("h1", { id: "signin-title", text: "Sign in" }),
    h("p", { text: "This server asks for an API key and its token. They are kept in this browser tab only." }),
    h("label", { for: "key", text: "API key" }),
    key,
    h("label", { for: "token", text: "Token" }),
    token,
    error,
    h("button", { type: "submit", id: "signin", text: "Sign in" }),
  );
  render(form);
  key.focus();
}

function route() {
  if (!me) return;
  showWho();
  if (current) current.abort();
  current = new AbortController();
  const hash = location.hash.replace(/^#/, "") || "/";
  const ctx = { me, signal: current.signal, onRefused: () => signIn("Your credentials are no longer accepted.") };
  let page = "overview";
  if (hash.startsWith("/client/")) {
    page = "clients";
    client.show(ctx, decodeURIComponent(hash.slice("/client/".length)));
  } else if (hash.startsWith("/clients")) {
    page = "clients";
    clients.show(ctx);
  } else {
    overview.show(ctx);
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  if (route.moved) main.focus({ preventScroll: true });
  route.moved = true;
}

async function start() {
  try {
    if (await whoami()) {
      route();
    } else {
      if (credentials()) forgetCredentials();
      signIn();
    }
  } catch (e) {
    render(h("p.error", { role: "alert", text: `The server cannot be reached: ${e.message}` }));
  }
}

window.addEventListener("hashchange", route);
start();
