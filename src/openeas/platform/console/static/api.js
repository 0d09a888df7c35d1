// Signed calls to the control plane's API, as eascmd makes them (openeas/platform/auth.py):
// Authorization: OEAS-HMAC-SHA256 <id>:hex(HMAC-SHA256(secret,
//   METHOD\nPATH?QUERY\nDATE\nNONCE\nhex(SHA256(BODY)))).
// The secret stays in this tab's sessionStorage and never travels; every request gets a
// fresh nonce, so a captured request cannot be replayed.

const KEY_ID = "openeas.console.keyId";
const SECRET = "openeas.console.secret";
const encoder = new TextEncoder();

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

function nonce() {
  return hex(crypto.getRandomValues(new Uint8Array(16)));
}

export function cryptoAvailable() {
  // WebCrypto's subtle API exists only in a secure context (https, or http://localhost).
  return Boolean(globalThis.crypto && crypto.subtle);
}

async function signature(secret, text) {
  const key = await crypto.subtle.importKey(
    "raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  return hex(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
}

export async function signedHeaders(key, method, target, body) {
  const date = String(Math.floor(Date.now() / 1000));
  const once = nonce();
  const digest = hex(await crypto.subtle.digest("SHA-256", body));
  const text = `${method.toUpperCase()}\n${target}\n${date}\n${once}\n${digest}`;
  return {
    "X-OpenEAS-Date": date,
    "X-OpenEAS-Nonce": once,
    Authorization: `OEAS-HMAC-SHA256 ${key.id}:${await signature(key.secret, text)}`,
  };
}

export function storedKey() {
  const id = sessionStorage.getItem(KEY_ID);
  const secret = sessionStorage.getItem(SECRET);
  return id && secret ? { id, secret } : null;
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_ID, key.id);
  sessionStorage.setItem(SECRET, key.secret);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_ID);
  sessionStorage.removeItem(SECRET);
}

async function errorOf(response) {
  let doc = null;
  try {
    doc = await response.json();
  } catch {
    // not JSON: the status line says it
  }
  const message = doc && typeof doc.message === "string" ? doc.message : response.statusText;
  const code = doc && typeof doc.code === "string" ? doc.code : `HTTP${response.status}`;
  return new ApiError(response.status, code, `${response.status} ${code}: ${message}`);
}

// One API call (path under /api/v1, e.g. "/services"); the parsed JSON answer, or an
// ApiError carrying the API's own message.
export async function call(key, method, path, doc) {
  const target = `/api/v1${path}`;
  const body = doc === undefined ? new Uint8Array() : encoder.encode(JSON.stringify(doc));
  const headers = await signedHeaders(key, method, target, body);
  if (doc !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(target, {
    method,
    headers,
    body: doc === undefined ? undefined : body,
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
