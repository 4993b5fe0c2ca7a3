// The "New video" form: built from GET /v1/pipelines (each pipeline's models, inputs and defaults),
// sent as multipart POST /v1/videos; API errors are shown under it, next to the field they name.
"use strict";

const vidiffForm = (() => {
  const $ = (id) => document.getElementById(id);
  // The main options, in order: [job field, label, HTML input step]. A field is shown when the
  // pipeline's defaults name it (SVD has min/max guidance, the others one guidance scale).
  const OPTIONS = [
    ["num_frames", "Frames", "1"],
    ["num_inference_steps", "Steps", "1"],
    ["height", "Height (px)", "8"],
    ["width", "Width (px)", "8"],
    ["guidance_scale", "Guidance", "any"],
    ["min_guidance_scale", "Min guidance", "any"],
    ["max_guidance_scale", "Max guidance", "any"],
    ["seed", "Seed", "1"],
  ];
  let pipelines = [];
  let onSubmitted = () => {};

  function current() {
    return pipelines.find((p) => p.name === $("pipeline").value);
  }

  // Whether the pipeline takes an image: required (SVD, I2VGen-XL) or optional (Wan's --image).
  function imageUse(pipeline) {
    if (pipeline.takes_image) return "required";
    const fields = pipeline.fields || Object.keys(pipeline.defaults || {});
    return fields.includes("image") ? "optional" : null;
  }

  function choosePipeline() {
    const pipeline = current();
    if (!pipeline) return;
    const models = $("model");
    models.replaceChildren();
    // The server's own models (its --model table) first: a default Hub id may not be downloadable there.
    for (const name of pipeline.models || []) models.append(new Option(name, name));
    if (pipeline.default_model && !(pipeline.models || []).includes(pipeline.default_model)) {
      models.append(new Option(pipeline.default_model + " (default)", pipeline.default_model));
    }
    const defaults = pipeline.defaults || {};
    $("prompt-field").hidden = !pipeline.takes_prompt;
    $("negative-prompt-field").hidden = !("negative_prompt" in defaults);
    const use = imageUse(pipeline);
    $("image-field").hidden = !use;
    $("image-hint").textContent = use === "optional"
      ? "Optional: drop a first-frame image here, or tap to choose one"
      : "Drop an image here, or tap to choose one";
    buildOptions(defaults);
  }

  function buildOptions(defaults) {
    const box = $("options");
    box.replaceChildren();
    for (const [field, text, step] of OPTIONS) {
      if (field !== "seed" && !(field in defaults)) continue;
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "number";
      input.name = input.id = field;
      input.step = step;
      input.inputMode = step === "any" ? "decimal" : "numeric";
      const value = defaults[field];
      if (value !== null && value !== undefined) input.value = value;
      if (field === "seed") input.placeholder = "random";
      label.append(text, input);
      box.append(label);
    }
  }

  function showImage(file) {
    const preview = $("image-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
    $("image-hint").textContent = file ? file.name + " (tap to change)" : "Drop an image here, or tap to choose one";
  }

  function setupDrop() {
    const zone = $("image-field");
    const input = $("image");
    input.addEventListener("change", () => showImage(input.files[0]));
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (!file) return;
      const carrier = new DataTransfer();  // the only way to put a dropped file into a file input
      carrier.items.add(file);
      input.files = carrier.files;
      showImage(file);
    });
  }

  function showError(error) {
    const box = $("form-error");
    document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
    box.hidden = !error;
    if (!error) return;
    box.textContent = error.field ? error.field + ": " + error.message : error.message;
    const input = error.field && document.getElementsByName(error.field)[0];
    if (input) { input.classList.add("invalid"); input.focus(); }
  }

  // The job as multipart fields: only what is shown and filled in (the server fills in the rest).
  function collect() {
    const pipeline = current();
    const data = new FormData();
    data.append("pipeline", pipeline.name);
    data.append("model", $("model").value);
    const texts = [];
    if (pipeline.takes_prompt) texts.push("prompt");
    if (!$("negative-prompt-field").hidden) texts.push("negative_prompt");
    for (const field of texts) if ($(field).value.trim()) data.append(field, $(field).value);
    for (const input of $("options").querySelectorAll("input")) {
      if (input.value !== "") data.append(input.name, input.value);
    }
    const image = $("image").files[0];
    if (imageUse(pipeline) && image) data.append("image", image, image.name);
    return { data, image: imageUse(pipeline) ? image : undefined };
  }

  async function submit(event) {
    event.preventDefault();
    if (!current()) return;
    const { data, image } = collect();
    $("submit").disabled = true;
    try {
      const video = await vidiffApi.request("POST", "/v1/videos", data);
      showError(null);
      onSubmitted(video, image ? { image } : {});
    } catch (error) {
      showError(error);
    } finally {
      $("submit").disabled = false;
    }
  }

  // Puts a job's settings back into the form (when "run again" cannot resend it as it was).
  function fill(job) {
    if (!pipelines.some((p) => p.name === job.pipeline)) return;
    $("pipeline").value = job.pipeline;
    choosePipeline();
    if (job.model && ![...$("model").options].some((o) => o.value === job.model)) {
      $("model").append(new Option(job.model, job.model));
    }
    if (job.model) $("model").value = job.model;
    for (const field of ["prompt", "negative_prompt"]) if (typeof job[field] === "string") $(field).value = job[field];
    for (const input of $("options").querySelectorAll("input")) {
      input.value = job[input.name] === undefined || job[input.name] === null ? "" : job[input.name];
    }
    $("new-video").scrollIntoView({ behavior: "smooth" });
  }

  async function start(submitted) {
    onSubmitted = submitted;
    setupDrop();
    $("job-form").addEventListener("submit", submit);
    $("pipeline").addEventListener("change", choosePipeline);
    try {
      pipelines = (await vidiffApi.request("GET", "/v1/pipelines")).pipelines;
    } catch (error) {
      showError(error);
      return;
    }
    for (const p of pipelines) $("pipeline").append(new Option(p.name, p.name));
    // Start on a pipeline the server has its own model for: that one runs without a download.
    const ready = pipelines.find((p) => (p.models || []).length);
    if (ready) $("pipeline").value = ready.name;
    choosePipeline();
  }

  return { start, fill, showError };
})();
