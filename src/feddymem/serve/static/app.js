// The operator's page: score a picked or dropped image, show the feed and the model serving.
"use strict";

const $ = (id) => document.getElementById(id);
let lastFeedId = 0;
let modelVersion = null;

function headers() {
  const token = sessionStorage.getItem("feddymem-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this service needs its bearer token (enter it above)");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function showResult(r) {
  $("result").hidden = false;
  $("message").hidden = true;
  $("overlay").src = "data:image/png;base64," + r.overlay_png;
  const decision = $("decision");
  decision.textContent = r.decision;
  decision.className = "decision " + r.decision;
  $("r-name").textContent = r.name;
  $("r-score").textContent = r.score.toFixed(4);
  $("r-threshold").textContent = r.threshold.toFixed(4);
  $("r-version").textContent = r.model_version;
  $("r-ms").textContent = r.server_ms.toFixed(1) + " ms";
  // the threshold sits at the middle of the bar; the bar ends at twice the threshold
  const fill = $("bar-fill");
  fill.style.width = Math.min(100, (50 * r.score) / r.threshold) + "%";
  fill.className = "fill " + r.decision;
  document.body.dataset.lastDecision = r.decision;
}

async function scoreFile(file) {
  $("message").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    showResult(await api("/v1/score?heatmap=png", { method: "POST", body: form }));
  } catch (err) {
    $("result").hidden = true;
    $("message").textContent = err.message;
    $("message").hidden = false;
  }
}

function feedItem(e) {
  const li = document.createElement("li");
  li.dataset.id = e.id;
  const img = document.createElement("img");
  img.src = e.thumb;
  img.alt = e.name;
  const text = document.createElement("div");
  const tag = document.createElement("span");
  tag.className = "tag " + e.decision;
  tag.textContent = e.decision;
  const name = document.createElement("div");
  name.textContent = e.name + " ";
  name.appendChild(tag);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${when(e.at)} · ${e.source} · score ${e.score.toFixed(3)} / ${e.threshold.toFixed(3)} · ${e.model_version}`;
  text.append(name, meta);
  li.append(img, text);
  return li;
}

async function poll() {
  try {
    const body = await api("/v1/feed?after=" + lastFeedId);
    const list = $("feed");
    for (const e of body.entries.slice().reverse()) {
      list.prepend(feedItem(e));
      lastFeedId = Math.max(lastFeedId, e.id);
    }
    while (list.children.length > 24) list.lastChild.remove();
    if (body.model.version !== modelVersion) {
      if (modelVersion !== null) $("model-changed").textContent = "changed at " + when(body.model.loaded_at);
      else $("model-changed").textContent = "since " + when(body.model.loaded_at);
      modelVersion = body.model.version;
      $("model-version").textContent = modelVersion;
      loadModel();
    }
    const err = $("model-error");
    err.hidden = !body.last_error;
    if (body.last_error) err.textContent = "new model file refused at " + when(body.last_error.at) + ": " + body.last_error.error;
  } catch (err) {
    $("model-version").textContent = "?";
  }
}

async function loadModel() {
  try {
    const m = await api("/v1/model");
    const src = m.source || {};
    const from = src.source === "federation" ? `federation ${src.run} round ${src.round}` : src.source || "?";
    $("model-detail").textContent = `${m.kind} · ${m.backbone} · ${m.image_hw.join("×")} px · from ${from}`;
  } catch (err) { /* shown by poll */ }
}

function setup() {
  $("file").addEventListener("change", (ev) => ev.target.files[0] && scoreFile(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) scoreFile(ev.dataTransfer.files[0]);
  });
  $("token").addEventListener("change", (ev) => { sessionStorage.setItem("feddymem-token", ev.target.value); poll(); });
  poll();
  setInterval(poll, 1000);
}

setup();
