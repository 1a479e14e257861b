// What every view shares: the API (the same public routes as any client), the admin token,
// plain-sentence errors, uploads to S3 by presigned POST, and a few DOM helpers.

const TOKEN_KEY = "imgclf.adminToken";

/** The pasted admin token ("" when none); kept for this tab only. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer that is not a success: its HTTP status, the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API at a path relative to the page (so the page works wherever it is served).
 * Sends the token when there is one; throws ApiError for anything but a 2xx.
 */
export async function api(path, { method = "GET", json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (token()) init.headers.authorization = `Bearer ${token()}`;
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    // The API answers {"error": {"code", "message"}}; API Gateway itself {"message"}.
    const error = (data && data.error) || { code: "", message: "" };
    throw new ApiError(response.status, error.code || "", error.message || "");
  }
  return data;
}

const SENTENCES = {
  network: "The service could not be reached. Check the connection and try again.",
  unauthorized: "This needs an admin token: paste one under “Sign in as admin” at the top.",
  forbidden: "This token does not carry the admin scope, so it cannot do this.",
  invalid_image: "This file is not an image that can be read: it may be damaged, or not an image at all.",
  unsupported_media_type: "This kind of file is not supported: use a JPEG, PNG, WebP, GIF or BMP image.",
  image_too_small: "This image is too small to classify.",
  image_too_large: "This image has too many pixels to classify.",
  payload_too_large: "This file is too large.",
  url_not_allowed: "That URL is refused: it points to a private or local address.",
  invalid_url: "That is not an address the service can fetch: use an http:// or https:// URL.",
  upstream_error: "The image could not be downloaded from that URL.",
  upstream_timeout: "The site took too long to send the image.",
  too_many_redirects: "That URL redirects too many times.",
  model_not_found: "There is no model by that name.",
  version_not_found: "That model version does not exist.",
  model_unavailable: "The model is not available right now. Try again in a moment.",
  no_previous_version: "There is no earlier version to roll back to.",
  upload_not_found: "The uploaded image is no longer there (uploads expire). Try again.",
  storage_refused: "The storage service refused the upload.",
  capture_not_found: "This answer was not kept (captures are off, or it was not sampled), so it cannot be corrected.",
  invalid_label: "That is not one of this model's classes.",
  feedback_exists: "This answer has been corrected already.",
  feedback_not_found: "This feedback is no longer waiting for review.",
  capture_image_gone: "The image of this answer is no longer stored: reject this feedback.",
  model_not_trainable: "This model is not trained from uploads here, so feedback cannot train it: reject it.",
};

/** Turns a message from the API into a sentence: capital first letter, full stop. */
export function asSentence(text) {
  const trimmed = String(text || "").trim();
  if (!trimmed) return "";
  const first = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

/** A plain sentence for a failure: never a stack trace or raw JSON. */
export function explain(error) {
  if (!(error instanceof ApiError)) return "Something went wrong. Try again.";
  if (error.status === 401) return SENTENCES.unauthorized;
  if (error.status === 403) return SENTENCES.forbidden;
  if (SENTENCES[error.code]) return SENTENCES[error.code];
  if (error.status === 413) return SENTENCES.payload_too_large;
  if (error.message) return asSentence(error.message);
  if (error.status >= 500) return "The service failed to answer. Try again in a moment.";
  return "The request was refused.";
}

/**
 * Sends a file to S3 with a presigned POST ({url, fields} from the API), reporting progress
 * (0..1). The fields go first and the file last, as S3 requires.
 */
export function uploadToS3(post, file, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(post.fields)) form.append(name, value);
    form.append("file", file);
    const request = new XMLHttpRequest();
    request.open("POST", post.url);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) resolve();
      else reject(new ApiError(request.status, "storage_refused", ""));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "network", "")));
    request.send(form);
  });
}

/** The SHA-256 of a file, in hex (what the data bucket names stored images by). */
export async function sha256(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Creates an element with attributes and children (strings become text, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function percent(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)} %` : "–";
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** Runs ``task`` now and then every ``ms`` while ``active()`` holds; returns a stop function. */
export function poll(task, ms, active) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (active()) {
      try {
        await task();
      } catch {
        // The next tick tries again; the view shows what failed.
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
