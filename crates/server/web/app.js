// seedbed's playground. It uses the public API only, as any client would: GET /v1/models,
// POST /api/v3/images/generations (Prefer: respond-async, "preview": true), the job's event
// stream, POST /v1/jobs/{id}/cancel and GET /v1/jobs. Plain JavaScript, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "seedbed.apiKey";

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  models: [],
  job: null, // the running job's id
  stream: null, // AbortController of its event stream
  reference: null, // data: URI of the reference image
};

/** The API answered with an error body: `{error: {code, message, param}}`. */
class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || "";
    this.param = body.param || "";
  }
}

/** A request to the API with the key, if any. A 401 asks for a key and throws. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  let body = options.body;
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body, signal: options.signal });
  if (response.ok) return response;
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch (_) {
    error = { message: response.statusText };
  }
  if (response.status === 401) {
    askForKey(state.key ? "The server did not accept the API key; enter a valid one." : "");
  }
  throw new ApiError(response.status, error);
}

// ---- API key ------------------------------------------------------------------------------

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-message").textContent = message;
  $("api-key").focus();
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    $("key-message").textContent = "Enter the API key (it starts with sk-).";
    return;
  }
  state.key = key;
  try {
    // Listing models is public; the job list is what a key opens.
    await api("/v1/jobs?limit=1");
  } catch (error) {
    state.key = "";
    $("key-message").textContent = error.status === 401
      ? "The server did not accept this API key: check it, or ask for a new one."
      : `The key could not be checked: ${error.message}`;
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  $("key-panel").hidden = true;
  $("change-key").hidden = false;
  loadModels().catch(reportError);
  loadHistory();
}

// ---- models and sizes ---------------------------------------------------------------------

async function loadModels() {
  const list = await (await api("/v1/models")).json();
  state.models = list.data;
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((model) => new Option(
    `${model.id} (${model.format === "upstream" ? "upstream" : model.family})`, model.id)));
  if (state.models.some((model) => model.id === previous)) select.value = previous;
  modelChanged();
}

function currentModel() {
  return state.models.find((model) => model.id === $("model").value);
}

/** The size presets of the model (1K is its native square), then "Custom". */
function modelChanged() {
  const model = currentModel();
  const select = $("size");
  const previous = select.value;
  const options = [];
  if (model && model.format !== "upstream") {
    for (const [preset, times] of [["1K", 1], ["2K", 2], ["4K", 4]]) {
      const side = model.native_size * times;
      options.push(new Option(`${preset} (${side}x${side})`, preset));
    }
    $("steps").placeholder = model.default_steps;
    $("guidance").placeholder = model.default_guidance_scale;
  } else {
    options.push(new Option("1K", "1K"), new Option("2K", "2K"), new Option("4K", "4K"));
    $("steps").placeholder = "";
    $("guidance").placeholder = "";
  }
  options.push(new Option("Custom (width x height)", "custom"));
  select.replaceChildren(...options);
  if ([...select.options].some((option) => option.value === previous)) select.value = previous;
  sizeChanged();
}

function sizeChanged() {
  const custom = $("size").value === "custom";
  $("custom-size").hidden = !custom;
  const model = currentModel();
  if (custom && model && !$("width").value) {
    $("width").value = model.native_size;
    $("height").value = model.native_size;
  }
}

// ---- the reference image ------------------------------------------------------------------

function takeFile(file) {
  showError("image", "");
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError("image", `${file.name} is not a picture.`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.reference = reader.result;
    $("image-thumb").src = reader.result;
    $("image-thumb").hidden = false;
    $("image-clear").hidden = false;
    $("strength-field").hidden = false;
  };
  reader.readAsDataURL(file);
}

function clearImage() {
  state.reference = null;
  $("image").value = "";
  $("image-thumb").hidden = true;
  $("image-thumb").removeAttribute("src");
  $("image-clear").hidden = true;
  $("strength-field").hidden = true;
}

// ---- errors next to their fields ----------------------------------------------------------

/** API `param` to the form field it concerns. */
const FIELDS = {
  prompt: "prompt",
  negative_prompt: "negative_prompt",
  model: "model",
  size: "size",
  seed: "seed",
  steps: "steps",
  guidance_scale: "guidance",
  "sequential_image_generation_options.max_images": "images",
  sequential_image_generation: "images",
  image: "image",
  strength: "image",
};

function showError(field, message) {
  const box = $(`${field}-error`) || $("form-error");
  box.textContent = message;
  const input = $(field);
  if (input && box.id !== "form-error") {
    input.setAttribute("aria-invalid", message ? "true" : "false");
    input.setAttribute("aria-describedby", box.id);
  }
}

function clearErrors() {
  for (const box of document.querySelectorAll("#generate .error")) box.textContent = "";
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

/** An API error, in plain words, next to the field it names (or under the button). */
function reportError(error) {
  // A nested param (`image[1]`) concerns the field of its first name.
  const param = error.param || "";
  const target = FIELDS[param] || FIELDS[param.split(/[.[]/)[0]];
  if (target) {
    showError(target, error.message);
    $(target).focus();
  } else if (error.status === 401) {
    showError("form", "An API key is needed: enter it above.");
  } else {
    showError("form", error.message || String(error));
  }
}

// ---- generating ---------------------------------------------------------------------------

/** The request body the form describes; `null` (with the error shown) if a field is off. */
function requestBody() {
  const prompt = $("prompt").value.trim();
  if (!prompt) {
    showError("prompt", "Write a prompt: what the picture should show.");
    $("prompt").focus();
    return null;
  }
  const body = { model: $("model").value, prompt, response_format: "url", preview: true };
  const negative = $("negative_prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  if ($("size").value === "custom") {
    body.size = `${$("width").value}x${$("height").value}`;
  } else {
    body.size = $("size").value;
  }
  if (!$("random-seed").checked && $("seed").value !== "") body.seed = Number($("seed").value);
  if ($("steps").value !== "") body.steps = Number($("steps").value);
  if ($("guidance").value !== "") body.guidance_scale = Number($("guidance").value);
  const images = Number($("images").value || 1);
  if (images > 1) {
    body.sequential_image_generation = "auto";
    body.sequential_image_generation_options = { max_images: images };
  }
  if (state.reference) {
    body.image = state.reference;
    if ($("strength").value !== "") body.strength = Number($("strength").value);
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  const body = requestBody();
  if (!body) return;
  $("submit").disabled = true;
  try {
    const response = await api("/api/v3/images/generations", {
      method: "POST",
      headers: { Prefer: "respond-async" },
      json: body,
    });
    const job = await response.json();
    follow(job, body.prompt);
  } catch (error) {
    $("submit").disabled = false;
    reportError(error);
  }
}

/** Show a job from its queue place to its images, reading its event stream. */
async function follow(job, prompt) {
  state.job = job.id;
  $("run").hidden = false;
  $("results").replaceChildren();
  $("preview").hidden = true;
  $("progress").value = 0;
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  setStatus(job.queue_position === null ? "Starting" : queued(job.queue_position));
  const controller = new AbortController();
  state.stream = controller;
  let ended = false;
  try {
    const response = await api(`/v1/jobs/${job.id}/events`, { signal: controller.signal });
    for await (const [name, data] of sseEvents(response)) {
      ended = onEvent(name, data, prompt) || ended;
      if (ended) break;
    }
  } catch (error) {
    if (error.name !== "AbortError") setStatus(`Lost the job's events: ${error.message}`);
  } finally {
    controller.abort();
    if (state.job === job.id) finished();
  }
}

function queued(position) {
  return position === 0 ? "Queued: next to run" : `Queued: ${position} ${position === 1 ? "job" : "jobs"} ahead`;
}

/** One event of the job's stream; true once the job has ended. */
function onEvent(name, data, prompt) {
  switch (name) {
    case "queued":
      setStatus(queued(data.position));
      return false;
    case "started":
      setStatus(data.attempt > 1 ? `Running (attempt ${data.attempt})` : "Running");
      return false;
    case "progress": {
      const bar = $("progress");
      bar.max = data.images * data.steps;
      bar.value = data.image * data.steps + data.step;
      setStatus(`Image ${data.image + 1} of ${data.images}: step ${data.step} of ${data.steps}`);
      if (data.preview) {
        $("preview").src = `data:image/jpeg;base64,${data.preview.b64_json}`;
        $("preview").hidden = false;
      }
      return false;
    }
    case "image":
      $("results").append(figure(data.url, prompt, data.seed, `${data.width}x${data.height}`));
      return false;
    case "image_failed":
      $("results").append(Object.assign(document.createElement("p"), {
        className: "error", textContent: `Image ${data.index + 1} failed: ${data.message}`,
      }));
      return false;
    case "completed": {
      const count = data.usage.generated_images;
      setStatus(`Done: ${count} ${count === 1 ? "image" : "images"}`);
      $("preview").hidden = true;
      return true;
    }
    case "failed":
      setStatus("Failed");
      reportError({ param: data.param || "", message: data.message, status: data.status });
      return true;
    case "cancelled":
      setStatus("Cancelled");
      return true;
    default:
      return false;
  }
}

function finished() {
  state.job = null;
  state.stream = null;
  $("submit").disabled = false;
  $("cancel").hidden = true;
  loadHistory();
}

async function cancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  setStatus("Cancelling");
  try {
    await api(`/v1/jobs/${state.job}/cancel`, { method: "POST" });
  } catch (error) {
    reportError(error);
    $("cancel").disabled = false;
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

/** `[event, data]` pairs of a server-sent-event response, as they arrive. */
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield [name, JSON.parse(data.join("\n"))];
    }
  }
}

/** A finished image: the picture (alt text = its prompt), its seed and a download link. */
function figure(url, prompt, seed, size) {
  const figure = document.createElement("figure");
  const img = Object.assign(document.createElement("img"), { src: url, alt: prompt || "generated image", loading: "lazy" });
  const caption = document.createElement("figcaption");
  const parts = [];
  if (seed !== undefined && seed !== null) parts.push(`Seed ${seed}`);
  if (size) parts.push(size);
  caption.append(parts.join(" · "), " ");
  caption.append(Object.assign(document.createElement("a"), { href: url, download: "", textContent: "Download" }));
  figure.append(img, caption);
  return figure;
}

// ---- history ------------------------------------------------------------------------------

async function loadHistory() {
  let list;
  try {
    list = await (await api("/v1/jobs?limit=20")).json();
  } catch (error) {
    $("history-message").textContent = error.status === 401 ? "" : `History unavailable: ${error.message}`;
    return;
  }
  $("history-message").textContent = list.data.length ? "" : "No jobs yet.";
  $("history").replaceChildren(...list.data.map(historyItem));
}

function historyItem(job) {
  const item = document.createElement("li");
  const title = document.createElement("p");
  title.className = "title";
  title.textContent = job.prompt || "(no prompt)";
  const settings = job.settings;
  const facts = [job.model, job.status];
  if (settings) {
    facts.push(settings.size, `seed ${settings.seed}`, `${settings.steps} steps`, `guidance ${settings.guidance_scale}`);
  }
  facts.push(new Date(job.created_at * 1000).toLocaleString());
  const meta = Object.assign(document.createElement("p"), { className: "meta", textContent: facts.join(" · ") });
  item.append(title, meta);
  if (job.error) item.append(Object.assign(document.createElement("p"), { className: "error", textContent: job.error.message }));
  const gallery = document.createElement("div");
  gallery.className = "gallery";
  (job.result ? job.result.data : []).forEach((image, index) => {
    if (image.url) gallery.append(figure(image.url, job.prompt, settings ? settings.seed + index : null, image.size));
  });
  item.append(gallery);
  const again = Object.assign(document.createElement("button"), { type: "button", textContent: "Run again" });
  again.addEventListener("click", () => runAgain(job));
  item.append(again);
  return item;
}

/** The form filled with a past job's settings (same seed), then submitted. */
function runAgain(job) {
  if (state.models.some((model) => model.id === job.model)) {
    $("model").value = job.model;
    modelChanged();
  }
  $("prompt").value = job.prompt || "";
  const settings = job.settings;
  if (settings) {
    $("negative_prompt").value = settings.negative_prompt || "";
    $("size").value = "custom";
    sizeChanged();
    const [width, height] = settings.size.split("x");
    $("width").value = width;
    $("height").value = height;
    $("random-seed").checked = false;
    $("seed").disabled = false;
    $("seed").value = settings.seed;
    $("steps").value = settings.steps;
    $("guidance").value = settings.guidance_scale;
    $("images").value = settings.images;
  }
  window.scrollTo({ top: 0, behavior: "smooth" });
  $("generate").requestSubmit();
}

// ---- start --------------------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", useKey);
  $("change-key").addEventListener("click", () => askForKey(""));
  $("model").addEventListener("change", modelChanged);
  $("size").addEventListener("change", sizeChanged);
  $("random-seed").addEventListener("change", () => {
    $("seed").disabled = $("random-seed").checked;
    if ($("random-seed").checked) $("seed").value = "";
  });
  $("image").addEventListener("change", () => takeFile($("image").files[0]));
  $("image-clear").addEventListener("click", clearImage);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeFile(event.dataTransfer.files[0]);
  });
  $("generate").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("history-refresh").addEventListener("click", loadHistory);
  $("change-key").hidden = !state.key;
  loadModels()
    .then(loadHistory)
    .catch((error) => {
      if (error.status !== 401) showError("form", `The models could not be listed: ${error.message}`);
    });
}

document.addEventListener("DOMContentLoaded", start);
