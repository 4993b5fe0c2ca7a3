// The queue (queued and running jobs, live progress bars, cancel buttons) and the gallery of
// finished jobs (videos playing in the page, their settings, "run again"). One card per job id,
// made once and updated in place, so a playing video is never restarted by a refresh.
"use strict";

const vidiffJobs = (() => {
  const $ = (id) => document.getElementById(id);
  const ACTIVE = new Set(["queued", "running"]);
  const MAX_STREAMS = 2;  // a browser opens ~6 connections per server: keep most for fetches and videos
  const videos = new Map();   // id → the latest video object
  const cards = new Map();    // id → its card element (in the queue or the gallery)
  const streams = new Map();  // id → EventSource following a running job
  const uploads = new Map();  // id → {field: File} sent with it, so "run again" can send them again
  let streamsWork = true;     // false once the server refused an event stream: polling only
  let pollFailed = false;     // the last list poll failed (its error is shown until one succeeds)
  let galleryLimit = 12;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function describe(job) {
    return [job.pipeline, job.model].filter(Boolean).join(" · ");
  }

  function seconds(value) {
    return value < 90 ? Math.round(value) + " s" : Math.round(value / 60) + " min";
  }

  // ----------------------------------------------------------------------------------- the queue
  function queueCard(video) {
    const card = element("li", "job");
    card.dataset.id = video.id;
    const head = element("div", "job-head");
    head.append(element("strong", null, describe(video.job)), element("span", "status"));
    const prompt = element("p", "prompt", video.job.prompt || "");
    const bar = element("progress");
    bar.max = 1;
    bar.setAttribute("aria-label", "progress of " + describe(video.job));
    const cancel = element("button", "cancel", "Cancel");
    cancel.type = "button";
    cancel.addEventListener("click", () => cancelJob(video.id, cancel));
    card.append(head, prompt, bar, element("span", "progress-text"), cancel);
    return card;
  }

  function updateQueueCard(card, video) {
    const progress = video.progress || { step: 0, total: 0, fraction: 0 };
    card.querySelector(".status").textContent = video.status;
    const bar = card.querySelector("progress");
    const text = card.querySelector(".progress-text");
    if (video.status === "queued") {
      bar.removeAttribute("value");  // indeterminate: waiting for a worker
      text.textContent = "waiting for a worker";
      return;
    }
    bar.value = progress.fraction;
    const parts = [Math.round(progress.fraction * 100) + " %"];
    if (progress.total) parts.unshift("step " + progress.step + "/" + progress.total);
    const eta = video.eta_seconds;
    if (eta !== null && eta !== undefined) parts.push("about " + seconds(eta) + " left");
    text.textContent = parts.join(" · ");
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      accept(await vidiffApi.request("DELETE", "/v1/videos/" + encodeURIComponent(id)));
    } catch (error) {
      button.disabled = false;
      vidiffForm.showError(error);
    }
  }

  // ---------------------------------------------------------------------------------- the gallery
  function galleryCard(video) {
    const card = element("article", "card " + video.status);
    card.dataset.id = video.id;
    if (video.status === "succeeded") {
      const player = element("video");
      Object.assign(player, { controls: true, autoplay: true, muted: true, loop: true, playsInline: true });
      player.src = vidiffApi.withToken(video.content_url);
      card.append(player);
    } else {
      const reason = video.error && video.error.message ? ": " + video.error.message : "";
      card.append(element("p", video.status === "failed" ? "error" : "muted", video.status + reason));
    }
    card.append(settingsList(video));
    const again = element("button", "again", "Run again");
    again.type = "button";
    again.addEventListener("click", () => runAgain(video, again));
    card.append(again);
    if (video.status === "succeeded" && !("seed" in video.job)) showSeedUsed(video, card);
    return card;
  }

  // The job's fields by their schema names (what the API and batch files take), the texts first.
  const FIRST = ["prompt", "negative_prompt", "image", "pipeline", "model", "num_frames", "num_inference_steps",
    "height", "width", "guidance_scale", "min_guidance_scale", "max_guidance_scale", "seed"];

  function settingsList(video) {
    const list = element("dl", "settings");
    const add = (name, value) => list.append(element("dt", null, name), element("dd", null, value));
    const rank = (field) => (FIRST.includes(field) ? FIRST.indexOf(field) : FIRST.length);
    const fields = Object.keys(video.job).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    for (const field of fields) {
      const value = video.job[field];
      add(field, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    // A long text shows its first lines; a tap shows all of it.
    for (const text of list.querySelectorAll("dd")) text.addEventListener("click", () => text.classList.toggle("open"));
    if (video.started && video.finished) {
      add("took", seconds((Date.parse(video.finished) - Date.parse(video.started)) / 1000));
    }
    return list;
  }

  // A job without a seed got a random one: the run's sidecar says which, for a repeat by hand.
  async function showSeedUsed(video, card) {
    try {
      const sidecar = await vidiffApi.request("GET", video.sidecar_url);
      const seed = sidecar && sidecar.seed;
      if (!seed) return;
      const used = [element("dt", null, "seed used"), element("dd", null, seed.kind + " " + seed.value)];
      card.querySelector(".settings").append(...used);
    } catch (error) { /* the settings are shown without it */ }
  }

  // The same job again: JSON when it had no uploads, else multipart with this tab's copy of the files.
  async function runAgain(video, button) {
    const job = video.job;
    const uploaded = Object.keys(job).filter((k) => typeof job[k] === "string" && job[k].startsWith("upload:"));
    const files = uploads.get(video.id) || {};
    if (uploaded.some((field) => !files[field])) {
      vidiffForm.fill(job);
      const message = "choose the image again (the server keeps uploads to itself), then submit";
      vidiffForm.showError({ message, field: "image" });
      return;
    }
    let body = job;
    if (uploaded.length) {
      body = new FormData();
      for (const [field, value] of Object.entries(job)) {
        if (uploaded.includes(field)) body.append(field, files[field], files[field].name);
        else for (const item of Array.isArray(value) ? value : [value]) {
          body.append(field, typeof item === "object" ? JSON.stringify(item) : String(item));
        }
      }
    }
    button.disabled = true;
    try {
      const again = await vidiffApi.request("POST", "/v1/videos", body);
      vidiffForm.showError(null);
      submitted(again, files);
    } catch (error) {
      vidiffForm.showError(error);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------------------ state and view
  function accept(video) {
    const before = videos.get(video.id);
    videos.set(video.id, video);
    const card = cards.get(video.id);
    const wasActive = before ? ACTIVE.has(before.status) : null;
    if (card && wasActive && video.status === "succeeded") updateQueueCard(card, video);  // the bar ends full
    if (card && wasActive !== ACTIVE.has(video.status)) drop(video.id);
    render();
  }

  function submitted(video, files) {
    if (files && Object.keys(files).length) uploads.set(video.id, files);
    accept(video);
    follow();
    // On a phone the queue is below the form: bring the new job's card into view.
    const card = cards.get(video.id);
    if (card) card.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function render() {
    const all = [...videos.values()];
    const active = all.filter((v) => ACTIVE.has(v.status)).sort((a, b) => a.created.localeCompare(b.created));
    const done = all.filter((v) => !ACTIVE.has(v.status))
      .sort((a, b) => (b.finished || b.created).localeCompare(a.finished || a.created));
    place($("queue"), active, queueCard);
    for (const video of active) updateQueueCard(cards.get(video.id), video);
    place($("gallery"), done.slice(0, galleryLimit), galleryCard);
    for (const video of done.slice(galleryLimit)) drop(video.id);
    $("queue-empty").hidden = active.length > 0;
    $("gallery-empty").hidden = done.length > 0;
    $("more").hidden = done.length <= galleryLimit;
  }

  function drop(id) {
    const card = cards.get(id);
    if (card) card.remove();
    cards.delete(id);
  }

  // Puts the cards of `list` into `box` in that order, making missing ones; moves only misplaced ones.
  function place(box, list, make) {
    list.forEach((video, index) => {
      if (!cards.has(video.id)) cards.set(video.id, make(video));
      const card = cards.get(video.id);
      if (box.children[index] !== card) box.insertBefore(card, box.children[index] || null);
    });
  }

  // Live progress: event streams for the running jobs, then the next queued ones (a few at most, so
  // a job is followed from before it starts); the list poll does the rest.
  function follow() {
    if (!streamsWork) return;
    const order = { running: 0, queued: 1 };
    const next = [...videos.values()].filter((v) => ACTIVE.has(v.status))
      .sort((a, b) => order[a.status] - order[b.status] || a.created.localeCompare(b.created));
    for (const video of next) {
      if (streams.has(video.id) || streams.size >= MAX_STREAMS) continue;
      const id = video.id;
      const end = () => { const s = streams.get(id); if (s) s.close(); streams.delete(id); refresh(); };
      streams.set(id, vidiffApi.follow(id, accept, end, () => { streamsWork = false; end(); }));
    }
  }

  async function refresh() {
    try {
      const list = (await vidiffApi.request("GET", "/v1/videos")).videos;
      for (const video of list) {
        const known = videos.get(video.id);
        // An event may be newer than the list: keep the further progress of a still-running job.
        const older = known && known.status === video.status && video.status === "running"
          && (known.progress || {}).step > (video.progress || {}).step;
        if (!older) videos.set(video.id, video);
      }
      const listed = new Set(list.map((v) => v.id));
      for (const id of [...videos.keys()]) if (!listed.has(id)) videos.delete(id);
      for (const [id, card] of cards) {
        if (!listed.has(id) || ACTIVE.has(videos.get(id).status) !== card.matches(".job")) drop(id);  // gone, or moved
      }
      render();
      follow();
      if (pollFailed) vidiffForm.showError(null);  // the server is back
      pollFailed = false;
    } catch (error) {
      pollFailed = true;
      vidiffForm.showError(error);
    }
  }

  // Polls the list: often while jobs are waiting or running (without event streams, this is the
  // progress), rarely when idle (jobs posted by others, e.g. with curl, still show up).
  async function poll() {
    await refresh();
    const busy = [...videos.values()].some((v) => ACTIVE.has(v.status));
    setTimeout(poll, busy ? (streamsWork ? 1500 : 700) : 5000);
  }

  function start() {
    $("more").addEventListener("click", () => { galleryLimit += 12; render(); });
    poll();
  }

  return { start, submitted };
})();
