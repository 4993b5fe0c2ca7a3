// Starts the page: the form (form.js), the queue and gallery (jobs.js), and the server's health line.
"use strict";

(() => {
  async function showHealth() {
    const line = document.getElementById("health");
    try {
      const health = await vidiffApi.request("GET", "/v1/health");
      const workers = (health.workers || []).map((w) => w.device + (w.busy ? " busy" : " idle"));
      line.textContent = "vidiff " + health.version + (workers.length ? " · " + workers.join(", ") : "");
      line.classList.remove("error");
    } catch (error) {
      line.textContent = error.message;
      line.classList.add("error");
    }
  }

  function start() {
    vidiffForm.start(vidiffJobs.submitted);
    vidiffJobs.start();
    showHealth();
    setInterval(showHealth, 10000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
