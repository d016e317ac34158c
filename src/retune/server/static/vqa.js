// The question box of VQA runs on the runs page: upload one image, type a yes/no question, show the answer.
// The answer and any error are inserted with textContent, never as HTML.
"use strict";

for (const form of document.querySelectorAll("form.vqa-ask")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const output = form.querySelector("output");
    const file = form.elements.images.files[0];
    const question = form.elements.question.value.trim();
    if (!file || !question) return;
    output.textContent = "asking…";
    output.classList.remove("error");
    const body = new FormData();
    body.append("images", file, file.name);
    const url = `/v1/runs/${encodeURIComponent(form.dataset.run)}/ask?question=${encodeURIComponent(question)}`;
    try {
      const response = await fetch(url, { method: "POST", body, credentials: "same-origin" });
      const payload = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
      if (!response.ok) throw new Error(typeof payload.detail === "string" ? payload.detail : `HTTP ${response.status}`);
      output.textContent = `${payload.answer} (p(yes) = ${payload.p_yes.toFixed(3)})`;
    } catch (error) {
      output.textContent = `error: ${error.message}`;
      output.classList.add("error");
    }
  });
}
