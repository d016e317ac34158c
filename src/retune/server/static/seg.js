// Segmentation page: upload one image, draw each structure's mask over it (toggle and opacity per structure).
"use strict";

(function () {
  const form = document.getElementById("seg-form");
  if (!form) return;
  const canvas = document.getElementById("seg-canvas");
  const status = document.getElementById("seg-status");
  const controls = Array.from(document.querySelectorAll(".seg-structure"));
  let picture = null;
  let layers = [];  // one tinted canvas per structure, in run order

  controls.forEach((fieldset) => {
    const swatch = fieldset.querySelector(".seg-swatch");
    swatch.style.color = swatch.dataset.colour;
    fieldset.addEventListener("input", draw);
  });

  function loadImage(source) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = reject;
      image.src = source;
    });
  }

  function tinted(maskImage, colour) {
    const layer = document.createElement("canvas");
    layer.width = maskImage.width;
    layer.height = maskImage.height;
    const context = layer.getContext("2d");
    context.drawImage(maskImage, 0, 0);
    const pixels = context.getImageData(0, 0, layer.width, layer.height);
    const [r, g, b] = [1, 3, 5].map((start) => parseInt(colour.slice(start, start + 2), 16));
    for (let i = 0; i < pixels.data.length; i += 4) {
      const alpha = pixels.data[i];
      pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b; pixels.data[i + 3] = alpha;
    }
    context.putImageData(pixels, 0, 0);
    return layer;
  }

  function draw() {
    if (!picture) return;
    const context = canvas.getContext("2d");
    context.globalAlpha = 1;
    context.drawImage(picture, 0, 0, canvas.width, canvas.height);
    layers.forEach((layer, index) => {
      const fieldset = controls[index];
      if (!fieldset || !fieldset.querySelector(".seg-toggle").checked) return;
      context.globalAlpha = Number(fieldset.querySelector(".seg-opacity").value) / 100;
      context.drawImage(layer, 0, 0, canvas.width, canvas.height);
    });
    context.globalAlpha = 1;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("seg-file").files[0];
    if (!file) return;
    status.textContent = "segmenting…";
    const body = new FormData();
    body.append("images", file);
    const response = await fetch(`/v1/runs/${form.dataset.run}/segment`, { method: "POST", body });
    const payload = await response.json();
    if (!response.ok) { status.textContent = payload.detail; return; }
    const result = payload.images[0];
    const masks = await Promise.all(result.masks.map((m) => loadImage(`data:image/png;base64,${m.png_base64}`)));
    layers = masks.map((mask, index) => tinted(mask, result.masks[index].colour));
    // the masks are at the original size; a DICOM upload is shown as its first mask's outline size
    picture = await loadImage(URL.createObjectURL(file)).catch(() => masks[0]);
    canvas.width = result.width;
    canvas.height = result.height;
    status.textContent = result.masks.map((m) => `${m.structure}: ${m.pixels} px`).join(" · ");
    draw();
  });
})();
