// The vidiff server's HTTP API as the page uses it: requests with the token, errors as ApiError,
// and progress as server-sent events (EventSource), with a flag the page reads to fall back to polling.
"use strict";

const vidiffApi = (() => {
  const token = sessionStorage.getItem("vidiff-token");

  class ApiError extends Error {
    // message: the server's one-line message; field: the job field it is about (or null).
    constructor(message, field, status) {
      super(message);
      this.field = field || null;
      this.status = status;
    }
  }

  // A URL that cannot carry a header (EventSource, <video src>) gets the token as ?token=.
  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  // body: undefined, a FormData (sent as multipart) or an object (sent as JSON). Returns the JSON reply.
  async function request(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let reply;
    try {
      reply = await fetch(path, { method, headers, body: payload });
    } catch (error) {
      throw new ApiError("cannot reach the vidiff server (" + error.message + ")", null, 0);
    }
    const text = await reply.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (error) { data = null; }
    if (!reply.ok) {
      const problem = data && data.error ? data.error : {};
      const fallback = reply.status === 401 ? "this server needs a token: open the page as /?token=YOUR_TOKEN"
        : "the server answered " + reply.status + " " + reply.statusText;
      throw new ApiError(problem.message || fallback, problem.field, reply.status);
    }
    return data;
  }

  // Follows one video's events: onUpdate(video) on each `progress`, onEnd() once after `done`.
  // onBroken() when the server refuses the stream (no SSE there): the caller polls instead.
  function follow(id, onUpdate, onEnd, onBroken) {
    const source = new EventSource(withToken("/v1/videos/" + encodeURIComponent(id) + "/events"));
    const read = (event) => {
      try { onUpdate(JSON.parse(event.data)); } catch (error) { /* a malformed event: the next poll fixes it */ }
    };
    source.addEventListener("progress", read);
    source.addEventListener("done", (event) => {
      if (event.data) read(event);
      source.close();  // else EventSource reconnects when the server ends the stream
      onEnd();
    });
    source.onerror = () => {
      // CONNECTING: a dropped connection that EventSource retries by itself; CLOSED: refused for good.
      if (source.readyState === EventSource.CLOSED) onBroken();
    };
    return source;
  }

  return { ApiError, request, withToken, follow, hasToken: Boolean(token) };
})();
