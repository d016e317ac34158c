// The prediction page: upload one image, show findings as bars and an explanation map over the image.
// Everything from the server or the user (file names, finding names) is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { maps: null, grid: 0, region: "image", finding: null, file: null, request: 0 };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function post(path, file) {
  const body = new FormData();
  body.append("images", file, file.name);
  const response = await fetch(path, { method: "POST", body, credentials: "same-origin" });
  const payload = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(payload.detail || `HTTP ${response.status}`);
  return payload;
}

function renderFindings(findings) {
  const list = $("findings");
  list.replaceChildren();
  for (const item of findings) {
    const row = document.createElement("li");
    row.dataset.finding = item.finding;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.finding;
    name.title = item.finding;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * item.probability).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = item.probability.toFixed(3);
    if (item.decision === true || item.decision === false) {
      // the run's validation-chosen threshold decided it: the stylesheet says so beside the number
      row.dataset.decision = item.decision ? "positive" : "negative";
    }
    if (item.positive_similarity !== null && item.positive_similarity !== undefined) {
      row.title = `similarity to positive prompt ${item.positive_similarity.toFixed(3)}, to negative prompt ${item.negative_similarity.toFixed(3)}`;
    }
    row.append(name, track, value);
    row.addEventListener("click", () => selectFinding(item.finding));
    list.append(row);
  }
  $("findings-hint").hidden = true;
}

function selectFinding(finding) {
  state.finding = finding;
  for (const row of $("findings").children) row.classList.toggle("selected", row.dataset.finding === finding);
  drawMap();
}

function drawMap() {
  const canvas = $("overlay");
  const context = canvas.getContext("2d");
  const image = $("preview");
  const width = image.naturalWidth || 1;
  const height = image.naturalHeight || 1;
  canvas.width = width;
  canvas.height = height;
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.maps || !state.finding || !(state.finding in state.maps)) return;
  const values = state.maps[state.finding];
  const grid = state.grid;
  const scale = Math.max(1e-6, ...values.flat().map(Math.abs));
  const cells = document.createElement("canvas");
  cells.width = grid;
  cells.height = grid;
  const pixels = cells.getContext("2d").createImageData(grid, grid);
  values.flat().forEach((value, index) => {
    const strength = Math.min(1, Math.abs(value) / scale);
    const rgb = value >= 0 ? [225, 45, 35] : [40, 110, 220];
    pixels.data.set([...rgb, Math.round(255 * strength)], 4 * index);
  });
  cells.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  // Occlusion maps cover the whole image; patch maps cover the model's input, the centre square.
  const side = Math.min(width, height);
  const [x, y, w, h] = state.region === "image" ? [0, 0, width, height] : [(width - side) / 2, (height - side) / 2, side, side];
  context.drawImage(cells, x, y, w, h);
  canvas.style.opacity = String($("opacity").value / 100);
  // The image is letterboxed (object-fit: contain); size the canvas box to the drawn picture.
  const box = image.getBoundingClientRect();
  const ratio = Math.min(box.width / canvas.width, box.height / canvas.height);
  canvas.style.width = `${canvas.width * ratio}px`;
  canvas.style.height = `${canvas.height * ratio}px`;
  canvas.style.left = `${(box.width - canvas.width * ratio) / 2}px`;
  canvas.style.top = `${(box.height - canvas.height * ratio) / 2}px`;
  $("map-finding").textContent = state.finding;
  $("explanation").hidden = false;
}

function chosenMethod() {
  return document.querySelector("input[name=method]:checked").value;
}

function showRunOptions() {
  for (const note of document.querySelectorAll(".note[data-run]")) note.hidden = note.dataset.run !== $("run").value;
  const offered = $("run").selectedOptions[0].dataset.explanations.split(" ");
  $("patch-choice").hidden = !offered.includes("patch");
  if (!offered.includes(chosenMethod())) document.querySelector("input[name=method][value=occlusion]").checked = true;
  for (const text of document.querySelectorAll(".method-text")) text.hidden = text.dataset.method !== chosenMethod();
}

async function explainWith(file, request, findings) {
  const run = encodeURIComponent($("run").value);
  const method = chosenMethod();
  setStatus("Computing the explanation map…");
  const explanation = await post(`/v1/runs/${run}/explain?method=${method}`, file);
  if (request !== state.request) return;
  state.maps = explanation.maps;
  state.grid = explanation.grid;
  state.region = explanation.region;
  selectFinding(state.finding || findings[0].finding);
  setStatus(`${findings.length} findings scored; map: ${explanation.explanation} (${explanation.grid}×${explanation.grid}).`);
}

async function analyse(file) {
  const request = ++state.request;
  const run = encodeURIComponent($("run").value);
  state.file = file;
  state.findings = null;
  state.finding = null;
  state.maps = null;
  $("explanation").hidden = true;
  $("findings").replaceChildren();
  $("filename").textContent = file.name;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.onerror = () => { preview.removeAttribute("src"); };  // DICOM: the browser cannot show it, scores still come
  $("stage").hidden = false;
  $("drop").classList.add("compact");
  $("drop").querySelector(".drop-title").textContent = "Drop another image, or choose a file";
  setStatus("Scoring…");
  try {
    const prediction = await post(`/v1/runs/${run}/predict`, file);
    if (request !== state.request) return;
    const findings = prediction.predictions[0].findings;
    renderFindings(findings);
    state.findings = findings;
    await explainWith(file, request, findings);
  } catch (error) {
    if (request === state.request) setStatus(error.message, true);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) analyse($("file").files[0]); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", drawMap);
  $("preview").addEventListener("load", drawMap);
  window.addEventListener("resize", drawMap);
  $("run").addEventListener("change", () => { showRunOptions(); if (state.file) analyse(state.file); });
  for (const radio of document.querySelectorAll("input[name=method]")) {
    radio.addEventListener("change", async () => {
      showRunOptions();
      if (!state.file || !state.findings) return;
      const request = ++state.request;
      try { await explainWith(state.file, request, state.findings); } catch (error) { setStatus(error.message, true); }
    });
  }
  showRunOptions();
});
