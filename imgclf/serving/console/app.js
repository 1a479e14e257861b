// The console's frame: which view shows (the URL's #fragment), the admin token, the model list
// every view picks from. Each view lives in its own module.

import { api, explain, setToken, token } from "./api.js";
import { initData } from "./data.js";
import { initModels } from "./models.js";
import { initPredict } from "./predict.js";

const VIEWS = ["predict", "models", "data"];
const views = {};

function currentView() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "predict";
}

function show() {
  const name = currentView();
  for (const view of VIEWS) document.getElementById(view).hidden = view !== name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.hash === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  views[name]?.shown();
}

function initToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const state = document.getElementById("token-state");
  const describe = () => {
    state.textContent = token() ? "An admin token is set for this tab." : "No admin token is set.";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    describe();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    setToken("");
    describe();
  });
  describe();
}

async function loadModels() {
  try {
    return await api("models");
  } catch (error) {
    document.getElementById("predict-error").textContent = explain(error);
    return { default: "", models: [] };
  }
}

async function main() {
  initToken();
  const catalog = await loadModels();
  views.predict = initPredict(catalog);
  views.models = initModels(catalog);
  views.data = initData(catalog);
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "true";
}

main();
