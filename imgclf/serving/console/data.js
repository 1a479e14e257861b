// Data and retraining: labelled images go to S3 by presigned POST (incoming/<model>/<label>/,
// admins only), each with its own progress bar; then the ingest outcome of each file, the
// retraining job's progress (its record's status and stage) and the new version going live.
// With an admin token, the feedback waiting for review, each approved (to training) or rejected.

import {
  ApiError, api, asSentence, el, explain, poll, sha256, token, uploadToS3, when,
} from "./api.js";

const POLL_MS = 2000;
// At most this many files are sent at once.
const PARALLEL = 3;
const STAGES = ["snapshot", "train", "convert", "evaluate", "publish", "promote"];
const STAGE_WORDS = {
  snapshot: "copying the training data",
  train: "training",
  convert: "converting to TFLite",
  evaluate: "evaluating on the test split",
  publish: "publishing the new version",
  promote: "making it live",
};

function jobState(job) {
  if (job.status === "queued") return "queued";
  if (job.status === "running") return `running: ${STAGE_WORDS[job.stage] || job.stage || "starting"}`;
  if (job.status === "failed") return `failed: ${asSentence(job.error) || "no reason recorded."}`;
  if (job.promoted) return `live: version ${job.version}`;
  return `published version ${job.version ?? "–"}, not made live: ${asSentence(job.note)}`;
}

export function initData(catalog) {
  const form = document.getElementById("data-form");
  const model = document.getElementById("data-model");
  const label = document.getElementById("data-label");
  const files = document.getElementById("data-files");
  const error = document.getElementById("data-error");
  const table = document.getElementById("data-uploads");
  const rows = table.querySelector("tbody");
  const pending = document.getElementById("data-pending");
  const jobs = document.getElementById("data-jobs");
  const view = document.getElementById("data");
  // Uploads waiting for their ingest outcome: key -> the row's outcome cell.
  const waiting = new Map();
  let stopPolling = null;

  document.getElementById("data-models").replaceChildren(
    ...catalog.models.map((m) => el("option", { value: m.name })),
  );
  model.value = catalog.default || "";

  async function loadLabels() {
    const options = document.getElementById("data-labels");
    options.replaceChildren();
    const chosen = catalog.models.find((m) => m.name === model.value);
    if (!chosen?.live_version) return;
    try {
      const version = await api(
        `models/${encodeURIComponent(chosen.name)}/versions/${encodeURIComponent(chosen.live_version)}`,
      );
      options.replaceChildren(...version.labels.map((l) => el("option", { value: l })));
    } catch {
      // No suggestions; any label can still be typed.
    }
  }

  async function refreshJobs() {
    if (!model.validity.valid) return;
    const answer = await api(`jobs?model=${encodeURIComponent(model.value)}&limit=3`);
    pending.textContent = `${answer.pending_images} of ${answer.retrain_threshold} new images of ${model.value} pending: a retraining job starts at ${answer.retrain_threshold}.`;
    jobs.replaceChildren(
      ...answer.jobs.map((job) => {
        const done = job.status === "succeeded" ? STAGES.length : Math.max(0, STAGES.indexOf(job.stage));
        const id = `job-${job.id}`;
        return el("li", {},
          el("label", { for: id }, `Job ${job.id}, started ${when(job.created_at)}: `),
          el("progress", { id, max: STAGES.length, value: job.status === "failed" ? 0 : done }),
          el("span", { class: "state" }, jobState(job)));
      }),
    );
  }

  const feedbackState = document.getElementById("feedback-state");
  const feedbackError = document.getElementById("feedback-error");
  const feedbackTable = document.getElementById("feedback-pending");
  const feedbackRows = feedbackTable.querySelector("tbody");
  let feedbackShown = "";

  async function review(id, action) {
    feedbackError.textContent = "";
    try {
      await api(`feedback/${encodeURIComponent(id)}/${action}`, { method: "POST" });
      feedbackShown = "";
      await refreshFeedback();
    } catch (err) {
      feedbackError.textContent = explain(err);
    }
  }

  async function refreshFeedback() {
    // Reading feedback is for admins (it shows what people sent): nothing is asked without a token.
    if (!token()) {
      feedbackTable.hidden = true;
      feedbackState.textContent = "Sign in as admin to review the feedback given on answers.";
      return;
    }
    const answer = await api("feedback?status=pending");
    const items = answer.feedback;
    const shown = JSON.stringify(items.map((f) => f.request_id));
    feedbackState.textContent = items.length
      ? `${items.length} corrected label${items.length === 1 ? "" : "s"} waiting for review.`
      : "No feedback is waiting for review.";
    feedbackTable.hidden = !items.length;
    if (shown === feedbackShown) return; // keep focus and buttons while nothing changed
    feedbackShown = shown;
    feedbackRows.replaceChildren(
      ...items.map((f) =>
        el("tr", {},
          el("th", { scope: "row" }, `${f.model} v${f.version}, ${f.request_id}`),
          el("td", {}, `${f.predicted} (${(f.score * 100).toFixed(0)} %)`),
          el("td", {}, f.label),
          el("td", {}, `${when(f.time)}${f.by ? ` by ${f.by}` : ""}`),
          el("td", {}, el("div", { class: "buttons" },
            el("button", { type: "button", onclick: () => review(f.request_id, "approve") },
              `Approve ${f.label}`),
            el("button", { type: "button", onclick: () => review(f.request_id, "reject") },
              "Reject")))),
      ),
    );
  }

  async function refreshOutcomes() {
    if (!waiting.size) return;
    const query = [...waiting.keys()].map((k) => `key=${encodeURIComponent(k)}`).join("&");
    const answer = await api(`uploads/status?${query}`);
    for (const upload of answer.uploads) {
      const cell = waiting.get(upload.key);
      if (!cell || upload.status === "pending") continue;
      waiting.delete(upload.key);
      cell.textContent = {
        stored: "accepted",
        rejected: `rejected: ${asSentence(upload.reason)}`,
        missing: "missing: the file never arrived in storage.",
      }[upload.status] || upload.status;
    }
  }

  function addRow(file) {
    const progress = el("progress", { max: 1, value: 0, "aria-label": `Sending ${file.name}` });
    const outcome = el("td", {}, "waiting");
    rows.append(el("tr", {}, el("th", { scope: "row" }, file.name), el("td", {}, progress), outcome));
    return { file, progress, outcome };
  }

  async function send(entry, item) {
    if (item.error) {
      entry.outcome.textContent = `rejected: ${explain(new ApiError(item.status, item.error.code, item.error.message))}`;
      return;
    }
    if (item.duplicate) {
      entry.progress.value = 1;
      entry.outcome.textContent = "duplicate: this label already has this image.";
      return;
    }
    entry.outcome.textContent = "sending";
    try {
      await uploadToS3(item, entry.file, (share) => (entry.progress.value = share));
      entry.progress.value = 1;
      entry.outcome.textContent = "waiting for ingestion";
      waiting.set(item.key, entry.outcome);
    } catch (err) {
      entry.outcome.textContent = `not sent: ${explain(err)}`;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const chosen = [...files.files];
    if (!chosen.length) return;
    rows.replaceChildren();
    table.hidden = false;
    const entries = chosen.map(addRow);
    try {
      const hashes = await Promise.all(chosen.map(sha256));
      const answer = await api(`models/${encodeURIComponent(model.value)}/uploads`, {
        method: "POST",
        json: {
          label: label.value,
          files: chosen.map((file, i) => ({
            name: file.name, content_type: file.type, size: file.size, sha256: hashes[i],
          })),
        },
      });
      const queue = entries.map((entry, i) => [entry, answer.uploads[i]]);
      const worker = async () => {
        while (queue.length) await send(...queue.shift());
      };
      await Promise.all(Array.from({ length: PARALLEL }, worker));
      files.value = "";
    } catch (err) {
      error.textContent = explain(err);
      for (const entry of entries) entry.outcome.textContent = "not sent";
    }
  });

  model.addEventListener("change", () => {
    loadLabels();
    refreshJobs().catch((err) => (error.textContent = explain(err)));
  });

  return {
    shown() {
      loadLabels();
      if (stopPolling) return;
      stopPolling = poll(
        async () => {
          await refreshOutcomes();
          await refreshJobs();
          await refreshFeedback().catch((err) => (feedbackError.textContent = explain(err)));
        },
        POLL_MS,
        () => !view.hidden,
      );
    },
  };
}
