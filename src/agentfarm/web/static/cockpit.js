// The cockpit's own behaviour: confirmations, ticking durations, and the run page's live
// event stream (resume from the last seq after any drop, drop duplicates, follow the tail).
(function () {
  "use strict";

  // Confirm before destructive submits (buttons or forms with data-confirm).
  document.addEventListener("submit", function (ev) {
    const source = (ev.submitter && ev.submitter.dataset.confirm) ? ev.submitter : ev.target;
    const question = source.dataset ? source.dataset.confirm : null;
    if (question && !window.confirm(question)) ev.preventDefault();
  }, true);

  function fmtDuration(seconds) {
    if (seconds < 60) return seconds.toFixed(1) + "s";
    let m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    if (m < 60) return m + "m" + String(s).padStart(2, "0") + "s";
    const h = Math.floor(m / 60); m = m % 60;
    return h + "h" + String(m).padStart(2, "0") + "m";
  }
  setInterval(function () {
    const now = Date.now();
    document.querySelectorAll("[data-since]").forEach(function (el) {
      const since = Date.parse(el.dataset.since);
      if (!isNaN(since)) el.textContent = fmtDuration(Math.max(0, (now - since) / 1000));
    });
  }, 1000);

  // A tool result goes inside its call (one expandable line per tool call).
  function placeResults(root) {
    root.querySelectorAll(".tool-result[data-for-tool]").forEach(function (res) {
      if (res.parentElement && res.parentElement.classList.contains("tool-slot")) return;
      const call = document.getElementById("tool-" + res.dataset.forTool);
      if (!call) return;
      const slot = call.querySelector(".tool-slot");
      if (!slot) return;
      slot.appendChild(res);
      if (res.classList.contains("is-error")) call.classList.add("is-error");
    });
  }

  document.addEventListener("htmx:afterSwap", function (ev) { placeResults(ev.target.parentElement || document); });

  const stream = document.getElementById("stream");
  if (!stream) return;
  const runId = stream.dataset.run;
  const events = document.getElementById("events");
  const toLatest = document.getElementById("to-latest");
  const liveState = document.getElementById("live-state");
  let lastSeq = Number(stream.dataset.lastSeq) || 0;
  let follow = true, ended = false, source = null, retry = null, backoff = 500;

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
  }
  function toBottom() { window.scrollTo(0, document.documentElement.scrollHeight); }
  window.addEventListener("scroll", function () {
    follow = atBottom();
    if (follow) toLatest.hidden = true;
  }, { passive: true });
  toLatest.addEventListener("click", function () { follow = true; toLatest.hidden = true; toBottom(); });

  function append(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html;
    const frag = document.createDocumentFragment();
    let added = 0;
    Array.from(tpl.content.children).forEach(function (el) {
      const seq = Number(el.dataset.seq);
      if (!seq || seq <= lastSeq) return;  // already shown: a replay after a reconnect
      lastSeq = seq;
      frag.appendChild(el);
      added++;
    });
    if (!added) return;
    events.appendChild(frag);
    stream.dataset.lastSeq = String(lastSeq);
    placeResults(events);
    showWaiting();
    if (follow) toBottom(); else toLatest.hidden = false;
  }

  function setState(text) { liveState.textContent = text; stream.dataset.live = text; }

  // While the agent waits for a follow-up (the latest event says so), the toolbar counts down.
  const waitingState = document.getElementById("waiting-state");
  function showWaiting() {
    const last = events.lastElementChild;
    const until = last ? last.querySelector("[data-until]") : null;
    if (!waitingState) return;
    if (!until || ended) { waitingState.hidden = true; return; }
    const left = Math.max(0, Math.round((Date.parse(until.dataset.until) - Date.now()) / 1000));
    waitingState.textContent = "waiting for a follow-up (ends in " + left + " s)";
    waitingState.hidden = false;
  }
  setInterval(showWaiting, 1000);

  function connect() {
    retry = null;
    if (ended || source) return;
    setState("connecting…");
    source = new EventSource("/runs/" + runId + "/live?after=" + lastSeq);
    source.addEventListener("open", function () { backoff = 500; setState("live"); });
    source.addEventListener("events", function (e) { append(e.data); });
    source.addEventListener("head", function (e) {
      const head = document.getElementById("run-head");
      const tpl = document.createElement("template");
      tpl.innerHTML = e.data.trim();
      if (head && tpl.content.firstElementChild) head.replaceWith(tpl.content.firstElementChild);
      const now = document.getElementById("run-head");
      const resume = document.getElementById("resume-form");
      if (now && resume) resume.hidden = now.dataset.status !== "parked";
      if (now && ["succeeded", "failed", "stopped", "lost"].indexOf(now.dataset.status) >= 0) {
        const stop = document.getElementById("stop-form");
        if (stop) stop.remove();
        const talk = document.getElementById("talk-form");
        if (talk) talk.remove();
        if (resume) resume.remove();
        const del = document.getElementById("delete-form");
        if (del) del.hidden = false;
      }
    });
    source.addEventListener("end", function () {
      ended = true;
      source.close();
      source = null;
      setState("ended");
    });
    source.addEventListener("error", function () {
      // Our own reconnect, so that it resumes from the last seq this page has shown.
      if (source) source.close();
      source = null;
      if (ended) return;
      setState("reconnecting…");
      if (!retry) retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 8000);
    });
  }

  function wake() {
    if (ended || source) return;
    if (retry) clearTimeout(retry);
    backoff = 500;
    connect();
  }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) wake(); });
  window.addEventListener("online", wake);
  window.addEventListener("pageshow", wake);

  placeResults(document);
  toBottom();
  connect();
})();

// The run page's reply box: empty it once a message was sent (the message itself appears in
// the live stream); keep the text when it was refused, with the reason beside it.
document.addEventListener("htmx:afterRequest", function (e) {
  const form = document.getElementById("talk-form");
  if (!form || e.detail.elt !== form || !e.detail.successful) return;
  if (e.detail.xhr.responseText.indexOf("alert-error") < 0) form.reset();
});
