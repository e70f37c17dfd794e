/*
 * chronik console: the few live parts, in plain JavaScript (no framework, no build).
 *
 * - [data-fragment] regions are rendered again by the server (the same template, escaped
 *   there) when their [data-live-source] Server-Sent Events stream says something changed,
 *   at most once a second, and every [data-poll] seconds anyway (the fallback when the
 *   stream is not there). A fragment holding [data-fast-poll] is polled every second.
 * - [data-pending-projection] elements show "pending…" until that projection has applied
 *   [data-pending-position] (chronik-pending.js, served by chronik serve), then the
 *   position it reached; one wait per projection, kept across refreshes.
 * - the time-travel slider shows the step of the chosen version without a reload.
 * - forms with [data-confirm] ask first.
 */
(function () {
  "use strict";

  function setStatus(text, state) {
    document.querySelectorAll("[data-live-status]").forEach(function (el) {
      el.textContent = text;
      el.className = "live " + (state || "");
    });
  }

  function formatNumber(text) {
    return String(text).replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");
  }

  // -- pending checkpoints ---------------------------------------------------------------
  var waits = new Map(); // projection -> { position, wait }
  var refreshAll = function () {};

  function pendingElements(name) {
    return Array.prototype.filter.call(
      document.querySelectorAll("[data-pending-projection]"),
      function (el) { return el.dataset.pendingProjection === name; }
    );
  }

  function markPending(el) {
    el.textContent = "pending…";
    el.classList.add("chronik-pending");
    el.dataset.chronikState = "pending";
    el.title = "waiting for the projection to apply position " + el.dataset.pendingPosition;
  }

  function armPending(root) {
    if (typeof window.chronikPending !== "function") return;
    var seen = new Set();
    root.querySelectorAll("[data-pending-projection]").forEach(function (el) {
      var name = el.dataset.pendingProjection;
      var position = el.dataset.pendingPosition;
      seen.add(name);
      markPending(el);
      if (waits.has(name)) return; // the wait in progress ends first; a refresh re-arms
      var wait = window.chronikPending({
        projection: name,
        position: position,
        pendingText: null,
        timeout: 0,
        onApplied: function () {
          waits.delete(name);
          pendingElements(name).forEach(function (e) {
            e.textContent = formatNumber(position);
            e.classList.remove("chronik-pending");
            e.dataset.chronikState = "applied";
            e.title = "";
          });
          refreshAll();
        },
        onError: function (error) {
          waits.delete(name);
          pendingElements(name).forEach(function (e) {
            e.dataset.chronikState = "error";
            e.title = error.message;
          });
        },
      });
      wait.promise.catch(function () {});
      waits.set(name, { position: position, wait: wait });
    });
    if (root === document) return;
    waits.forEach(function (entry, name) {
      if (!seen.has(name)) {
        entry.wait.cancel();
        waits.delete(name);
      }
    });
  }

  // -- live fragments --------------------------------------------------------------------
  function liveRegion(region) {
    var url = region.dataset.fragment;
    var every = Number(region.dataset.poll || 5) * 1000;
    var timer = null;
    var poller = null;
    var busy = false;
    var again = false;
    var last = 0;

    function nextPoll() {
      clearTimeout(poller);
      var fast = region.querySelector("[data-fast-poll]") !== null;
      poller = setTimeout(schedule, fast ? 1000 : every);
    }

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error(url + " answered " + response.status);
          return response.text();
        })
        .then(function (html) {
          region.innerHTML = html; // rendered and escaped by the server
          armPending(region);
        })
        .catch(function () { setStatus("server not reachable: retrying", "off"); })
        .then(function () {
          busy = false;
          last = Date.now();
          nextPoll();
          if (again) { again = false; schedule(); }
        });
    }

    function schedule() {
      if (timer !== null) return;
      var delay = Math.max(0, 1000 - (Date.now() - last));
      timer = setTimeout(function () { timer = null; refresh(); }, delay);
    }

    var previous = refreshAll;
    refreshAll = function () { previous(); schedule(); };
    last = Date.now();
    nextPoll();

    var source = region.dataset.liveSource;
    if (!source || typeof EventSource === "undefined") {
      setStatus("updates every " + every / 1000 + " s", "");
      return;
    }
    var stream = new EventSource(source);
    var opened = false;
    stream.addEventListener("open", function () {
      opened = true;
      setStatus("live", "on");
    });
    stream.addEventListener("event", schedule);
    stream.addEventListener("checkpoint", schedule);
    stream.addEventListener("error", function () {
      if (!opened || stream.readyState === EventSource.CLOSED) {
        stream.close(); // no event stream on this server: polling only
        setStatus("updates every " + every / 1000 + " s", "");
      } else {
        setStatus("reconnecting…", "off");
      }
    });
  }

  // -- time travel -----------------------------------------------------------------------
  function timeTravel(form) {
    var slider = form.querySelector("input[type=range]");
    var label = form.querySelector("[data-version-label]");
    function show() {
      var version = slider.value;
      if (label) label.textContent = version;
      var step = document.querySelector('[data-step="' + Number(version) + '"]');
      if (!step) return false;
      document.querySelectorAll("[data-step]").forEach(function (s) { s.hidden = s !== step; });
      history.replaceState(null, "", form.action + "?" + new URLSearchParams(new FormData(form)));
      return true;
    }
    slider.addEventListener("input", show);
    slider.addEventListener("change", function () {
      if (!show()) form.submit(); // outside the steps on this page: ask the server
    });
    document.addEventListener("keydown", function (event) {
      if (event.target.tagName === "INPUT" && event.target !== slider) return;
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      if (event.target === slider) return; // the slider moves itself
      slider.value = Number(slider.value) + (event.key === "ArrowRight" ? 1 : -1);
      slider.dispatchEvent(new Event("change"));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-fragment]").forEach(liveRegion);
    document.querySelectorAll("form[data-time-travel]").forEach(timeTravel);
    document.addEventListener("submit", function (event) {
      var message = event.target.getAttribute("data-confirm");
      if (message && !window.confirm(message)) event.preventDefault();
    });
    armPending(document);
  });
})();
