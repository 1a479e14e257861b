// Models: each model's published versions with their evaluation, which one is live, and (with an
// admin token) promote and roll back. The view re-reads the model every few seconds while shown,
// so a version a retraining job made live appears by itself.

import { api, el, explain, percent, poll, when } from "./api.js";

const REFRESH_MS = 4000;
// A confusion matrix wider than this is no picture (the 1000-class ImageNet model has none).
const MAX_MATRIX_CLASSES = 40;

function provenance(row) {
  if (row.job) return `job ${row.job.id} (${row.job.mode}: ${row.job.reason || "retraining"})`;
  return "published model files";
}

function gateText(gate) {
  if (!gate || typeof gate.passed !== "boolean") return null;
  return gate.reason ? `${gate.passed ? "passed" : "failed"}: ${gate.reason}` : gate.passed ? "passed" : "failed";
}

function dataText(data) {
  const splits = Object.entries(data || {}).map(([split, perClass]) => {
    const count = Object.values(perClass).reduce((a, b) => a + b, 0);
    return `${split} ${count}`;
  });
  return splits.length ? `${splits.join(", ")} images` : "not recorded";
}

/** The confusion matrix as a table whose cells shade with their share of the row. */
function renderMatrix(table, evaluation) {
  const caption = table.querySelector("caption");
  const classes = evaluation.classes || [];
  const matrix = evaluation.confusion_matrix || [];
  const head = el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "true \\ said"),
    ...classes.map((c) => el("th", { scope: "col" }, c))));
  const body = el("tbody", {}, ...matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return el("tr", {}, el("th", { scope: "row" }, classes[i] ?? String(i)), ...row.map((n, j) => {
      const cell = el("td", { title: `${classes[i]} taken for ${classes[j]}: ${n}` }, String(n));
      const share = n / total;
      // Blue on the diagonal (right), red elsewhere (wrong); stronger with the share.
      const hue = i === j ? 212 : 0;
      if (n > 0) cell.style.backgroundColor = `hsl(${hue} 70% ${Math.round(92 - share * 45)}%)`;
      if (share > 0.6) cell.classList.add("strong");
      return cell;
    }));
  }));
  table.replaceChildren(caption, head, body);
}

export function initModels(catalog) {
  const select = document.getElementById("models-model");
  const live = document.getElementById("models-live");
  const error = document.getElementById("models-error");
  const rows = document.querySelector("#models-versions tbody");
  const rollback = document.getElementById("models-rollback");
  const detail = document.getElementById("models-detail");
  const view = document.getElementById("models");
  let shownVersion = null;
  let shownLive = null;
  let stopPolling = null;

  select.replaceChildren(...catalog.models.map((m) => el("option", { value: m.name }, m.name)));
  const name = () => encodeURIComponent(select.value);

  async function showDetail(version) {
    shownVersion = version;
    try {
      const v = await api(`models/${name()}/versions/${encodeURIComponent(version)}`);
      document.getElementById("models-detail-title").textContent =
        `Version ${v.version}${v.live ? " (live)" : ""}`;
      const facts = [
        ["Published", when(v.created_at)],
        ["Accuracy", percent(v.evaluation.accuracy)],
        ["Macro F1", percent(v.evaluation.macro_f1)],
        ["Test images", String(v.evaluation.count ?? "–")],
        ["Trained on", dataText(v.data)],
        ["From", provenance(v)],
        ["Quality gate", gateText(v.gate)],
        ["Quantization", v.quantization],
      ].filter(([, value]) => value);
      document.getElementById("models-facts").replaceChildren(
        ...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]),
      );
      const perClass = Object.entries(v.evaluation.per_class || {});
      const matrix = v.evaluation.confusion_matrix || [];
      document.getElementById("models-classes").hidden = !perClass.length;
      document.getElementById("models-matrix").hidden =
        !matrix.length || matrix.length > MAX_MATRIX_CLASSES;
      document.getElementById("models-no-figures").hidden = perClass.length > 0;
      document.querySelector("#models-classes tbody").replaceChildren(
        ...perClass.map(([label, m]) => el("tr", {}, el("th", { scope: "row" }, label),
          el("td", {}, percent(m.precision)), el("td", {}, percent(m.recall)),
          el("td", {}, percent(m.f1)), el("td", {}, String(m.support)))),
      );
      renderMatrix(document.getElementById("models-matrix"), v.evaluation);
      detail.hidden = false;
    } catch (err) {
      error.textContent = explain(err);
    }
  }

  async function act(path, json) {
    error.textContent = "";
    try {
      await api(path, { method: "POST", json });
      await refresh();
    } catch (err) {
      error.textContent = explain(err);
    }
  }

  async function refresh() {
    const asked = select.value;
    const model = await api(`models/${name()}`);
    if (select.value !== asked) return; // another model was chosen meanwhile
    const since = model.updated_at ? `, since ${when(model.updated_at)}` : "";
    live.textContent = `Version ${model.live_version} is live${since}.`;
    rollback.disabled = !model.previous_version;
    const versions = model.versions.length
      ? model.versions
      : [{ version: model.live_version, live: true, created_at: model.created_at, evaluation: model.metrics }];
    rows.replaceChildren(
      ...versions.slice().reverse().map((row) => {
        const details = el("button", { type: "button", "aria-label": `Details of version ${row.version}` }, "Details");
        details.addEventListener("click", () => showDetail(row.version));
        const buttons = el("div", { class: "buttons" }, details);
        const actions = el("td", {}, buttons);
        if (!row.live && model.versions.length) {
          const promote = el("button", { type: "button", "aria-label": `Make version ${row.version} live` }, "Make live");
          promote.addEventListener("click", () =>
            act(`models/${name()}/promote`, { version: row.version }));
          buttons.append(promote);
        }
        return el("tr", {},
          el("th", { scope: "row" }, row.version),
          el("td", {}, when(row.created_at)),
          el("td", {}, percent(row.evaluation?.accuracy)),
          el("td", {}, percent(row.evaluation?.macro_f1)),
          el("td", {}, provenance(row)),
          el("td", {}, row.live ? "live" : ""),
          actions);
      }),
    );
    // A new live version (a job, a promote, a rollback) is shown at once; otherwise the version
    // the user chose stays.
    if (
      shownVersion === null ||
      model.live_version !== shownLive ||
      !versions.some((v) => v.version === shownVersion)
    ) {
      shownLive = model.live_version;
      await showDetail(model.live_version);
    }
  }

  rollback.addEventListener("click", () =>
    act(`models/${name()}/rollback`, undefined));
  select.addEventListener("change", () => {
    shownVersion = null;
    shownLive = null;
    refresh().catch((err) => (error.textContent = explain(err)));
  });

  return {
    shown() {
      if (stopPolling || !select.value) return;
      stopPolling = poll(
        () => refresh().catch((err) => (error.textContent = explain(err))),
        REFRESH_MS,
        () => !view.hidden,
      );
    },
  };
}
