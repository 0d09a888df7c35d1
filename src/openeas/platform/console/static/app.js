// The console's entry point: sign-in, routing (#/services, #/services/NAME, #/groups)
// and the refresh loop that redraws the current page every few seconds.

import { call, cryptoAvailable, forgetKey, storedKey, storeKey } from "./api.js";
import { afterActions, showError, showNotice } from "./feedback.js";
import { GroupsView } from "./groups.js";
import { ServiceView, ServicesView } from "./services.js";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);

const state = { key: null, view: null, timer: null };

function viewFor(hash) {
  const api = (method, path, doc) => call(state.key, method, path, doc);
  const [, page, name] = hash.replace(/^#/, "").split("/");
  if (page === "services" && name) return new ServiceView(api, decodeURIComponent(name));
  if (page === "groups") return new GroupsView(api);
  return new ServicesView(api);
}

async function refresh() {
  const view = state.view;
  if (!view) return;
  if (view.busy) {
    // One refresh at a time (a slow API is not piled up on); one more after it, so an
    // action's effect is not left to the next tick.
    view.again = true;
    return;
  }
  view.busy = true;
  view.again = false;
  try {
    await view.refresh();
    if (view === state.view) showError(null);
  } catch (error) {
    if (view !== state.view) return;
    // A key the API no longer accepts (rotated, or a stale tab): back to the sign-in,
    // with the API's error and without the data shown so far.
    if (error.status === 401) signOut();
    showError(error);
  } finally {
    view.busy = false;
    if (view.again && view === state.view) refresh();
  }
}

function route() {
  if (!state.key) return;
  state.view?.close?.();
  state.view = viewFor(location.hash);
  showNotice(null);
  $("view").replaceChildren(state.view.root);
  refresh();
}

function signedIn(key) {
  state.key = key;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").textContent = `access key ${key.id}`;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  route();
}

function signOut() {
  forgetKey();
  clearInterval(state.timer);
  state.key = null;
  state.view = null;
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("sign-in").hidden = false;
  showNotice(null);
  showError(null);
}

async function signIn(event) {
  event.preventDefault();
  const key = { id: $("key-id").value.trim(), secret: $("key-secret").value.trim() };
  try {
    await call(key, "GET", "/services"); // a wrong key answers the API's error here
  } catch (error) {
    showError(error);
    return;
  }
  $("key-secret").value = "";
  storeKey(key);
  showError(null);
  signedIn(key);
}

function start() {
  afterActions(refresh);
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  if (!cryptoAvailable()) {
    showError(
      "This browser offers no WebCrypto here: open the console over https or on localhost " +
        "(an SSH tunnel to the API port), see docs/console.md.",
    );
    return;
  }
  const key = storedKey();
  if (key) signedIn(key);
  else $("sign-in").hidden = false;
}

start();
