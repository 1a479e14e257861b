// Predict: a file (chosen, dropped, or from the camera) or a URL, classified by a chosen model.
// Files up to DIRECT_LIMIT go in the request body; larger ones to S3 by presigned POST first,
// then by reference ({"s3_key"}), as the API documents for any client. With an admin token, an
// answer can be corrected ("Wrong? The right label is …": POST /feedback).

import { ApiError, api, el, explain, percent, token, uploadToS3 } from "./api.js";

// MAX_BODY_BYTES is 4,500,000 (Lambda's 6 MB event, base64 included); keep clear of it.
const DIRECT_LIMIT = 4_400_000;

export function initPredict(catalog) {
  const form = document.getElementById("predict-form");
  const select = document.getElementById("predict-model");
  const topK = document.getElementById("predict-top-k");
  const drop = document.getElementById("predict-drop");
  const status = document.getElementById("predict-status");
  const error = document.getElementById("predict-error");
  const result = document.getElementById("predict-result");
  const image = document.getElementById("predict-image");
  const bars = document.getElementById("predict-bars");
  const meta = document.getElementById("predict-meta");
  const feedbackForm = document.getElementById("predict-feedback");
  const feedbackLabel = document.getElementById("predict-feedback-label");
  const feedbackLabels = document.getElementById("predict-feedback-labels");
  const feedbackStatus = document.getElementById("predict-feedback-status");
  let preview = null;
  let answered = null;

  select.replaceChildren(
    ...catalog.models.map((m) => el("option", { value: m.name }, m.default ? `${m.name} (default)` : m.name)),
  );

  const route = () => `models/${encodeURIComponent(select.value)}/predict`;
  const k = () => Math.max(1, Math.min(50, Number.parseInt(topK.value, 10) || 3));

  function start(what) {
    error.textContent = "";
    status.textContent = what;
    return performance.now();
  }

  function showAnswer(answer, source, started, how) {
    if (preview) URL.revokeObjectURL(preview);
    preview = source.startsWith("blob:") ? source : null;
    image.src = source;
    bars.replaceChildren(
      ...answer.predictions.map((p, i) => {
        const id = `predict-bar-${i}`;
        return el(
          "li",
          {},
          el("label", { for: id }, p.label),
          el("meter", { id, min: 0, max: 1, value: p.score }),
          el("output", { for: id }, percent(p.score)),
        );
      }),
    );
    const total = answer.timing_ms?.total;
    const inFunction = typeof total === "number" ? `${total.toFixed(0)} ms in the function, ` : "";
    const wall = (performance.now() - started).toFixed(0);
    meta.textContent =
      `Model ${answer.model.name}, version ${answer.model.version}. ` +
      `${inFunction}${wall} ms in all${how}.` +
      (answer.request_id ? ` Answer ${answer.request_id}.` : "");
    result.hidden = false;
    status.textContent = `Classified as ${answer.predictions[0]?.label ?? "nothing"}.`;
    offerFeedback(answer);
  }

  // Feedback is an admin's write, like uploads: the control exists only with an admin token.
  async function offerFeedback(answer) {
    answered = answer;
    feedbackLabel.value = "";
    feedbackStatus.textContent = "";
    feedbackForm.hidden = !(token() && answer.request_id);
    if (feedbackForm.hidden) return;
    const { name, version } = answer.model;
    try {
      const described = await api(
        `models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`,
      );
      feedbackLabels.replaceChildren(...described.labels.map((l) => el("option", { value: l })));
    } catch {
      feedbackLabels.replaceChildren(); // no suggestions; a class can still be typed
    }
  }

  feedbackForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!answered) return;
    const label = feedbackLabel.value.trim();
    feedbackStatus.textContent = "Sending…";
    try {
      const sent = await api("feedback", {
        method: "POST",
        json: { request_id: answered.request_id, label },
      });
      feedbackStatus.textContent =
        sent.feedback.status === "approved"
          ? `Thank you: “${label}” went to training.`
          : `Thank you: “${label}” waits for an admin's review (Data and retraining).`;
    } catch (err) {
      feedbackStatus.textContent = explain(err);
    }
  });

  function fail(err) {
    status.textContent = "";
    error.textContent = explain(err);
  }

  async function viaS3(file) {
    status.textContent = "Uploading the image to storage…";
    const post = await api("uploads", {
      method: "POST",
      json: { content_type: file.type, size: file.size },
    });
    await uploadToS3(post, file, (share) => {
      status.textContent = `Uploading the image to storage… ${Math.round(share * 100)} %`;
    });
    status.textContent = "Classifying…";
    return api(route(), { method: "POST", json: { s3_key: post.key, top_k: k() } });
  }

  async function classifyFile(file) {
    if (!file) return;
    const started = start("Classifying…");
    try {
      let answer;
      let how = "";
      try {
        if (file.size > DIRECT_LIMIT) throw new ApiError(413, "", "");
        answer = await api(`${route()}?top_k=${k()}`, {
          method: "POST",
          body: file,
          headers: { "content-type": file.type || "application/octet-stream" },
        });
      } catch (err) {
        // Too large for a request body (the API's 413, or API Gateway's): through S3 instead.
        if (!(err instanceof ApiError) || err.status !== 413) throw err;
        answer = await viaS3(file);
        how = ", sent through storage (large file)";
      }
      showAnswer(answer, URL.createObjectURL(file), started, how);
    } catch (err) {
      fail(err);
    }
  }

  for (const id of ["predict-file", "predict-camera"]) {
    const input = document.getElementById(id);
    input.addEventListener("change", () => {
      classifyFile(input.files[0]);
      input.value = "";
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const url = document.getElementById("predict-url").value.trim();
    if (!url) {
      error.textContent = "Paste the address of an image first.";
      return;
    }
    const started = start("Fetching and classifying…");
    try {
      const answer = await api(route(), { method: "POST", json: { url, top_k: k() } });
      showAnswer(answer, url, started, "");
    } catch (err) {
      fail(err);
    }
  });

  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classifyFile(event.dataTransfer.files[0]);
  });

  return { shown() {} };
}
