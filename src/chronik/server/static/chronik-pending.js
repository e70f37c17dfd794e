/*
 * chronik-pending.js: show "pending" until a projection has applied your write.
 *
 * Served by `chronik serve` at /static/chronik-pending.js. No dependencies, no build step;
 * any browser with EventSource, fetch and BigInt (all current ones).
 *
 *   <span id="total">…</span>
 *   <script src="/static/chronik-pending.js"></script>
 *   <script>
 *     // position: what the append returned (AppendResponse.position, a string)
 *     const wait = chronikPending({
 *       projection: "order_totals",              // the projection's name (required)
 *       position: "1234",                        // the position to wait for (required)
 *       element: document.getElementById("total"),
 *       fetch: "/api/totals/dora",               // fetched once applied...
 *       render: (value, element) => { element.textContent = value.spent; },  // ...and shown
 *     });
 *     wait.promise.then((value) => console.log("fresh", value));
 *   </script>
 *
 * chronikPending(options) -> { promise, cancel }
 *
 *   options.projection    the projection's name (required)
 *   options.position      the position to wait for, a string of digits (required)
 *   options.element       an element to mark as pending meanwhile (optional): it gets
 *                         options.pendingText as its text, the class options.pendingClass,
 *                         aria-busy="true" and data-chronik-state="pending"; afterwards
 *                         data-chronik-state is "applied" (or "error") and its text is
 *                         restored unless something was fetched and rendered
 *   options.pendingText   default "pending…" (null: leave the text alone)
 *   options.pendingClass  default "chronik-pending"
 *   options.fetch         a URL to fetch once applied (optional); the response (JSON when its
 *                         content type says so, else text) is passed to render and resolves
 *                         the promise
 *   options.render        (value, element) => void; default: the element's text becomes the
 *                         value (strings as they are, anything else as JSON)
 *   options.onApplied     ({projection, position, via, value}) => void, once applied
 *                         (via: "check", "sse" or "poll")
 *   options.onError       (error) => void; error.kind is "timeout", "unknown-projection",
 *                         "http" or "fetch"
 *   options.timeout       milliseconds before giving up with a "timeout" error (default
 *                         30000; 0: never)
 *   options.transport     "auto" (default: SSE, polling if the stream cannot be opened),
 *                         "sse" or "poll"
 *   options.pollWait      seconds each poll waits on the server (default 5, at most 30)
 *   options.baseUrl       where chronik is served (default "": this origin)
 *
 *   promise   resolves with the fetched value (undefined without options.fetch), rejects
 *             with the error given to onError
 *   cancel()  stops waiting (closes the stream, aborts a poll); the promise stays pending
 *
 * How: one GET /projections/{name}/position?min_position=P first (200: applied already;
 * 404: no such projection). If pending, it listens to GET /live/projections?names=NAME
 * (Server-Sent Events; each "checkpoint" message has the projection's name, whether it is the
 * active version and its position) until the active version's position reaches P; without
 * SSE it polls GET /projections/{name}/position?min_position=P&wait=5 (200 applied, 202
 * pending). Positions are compared as BigInt: they may pass 2^53.
 */
(function (root) {
  "use strict";

  function reached(position, target) {
    return BigInt(position) >= BigInt(target);
  }

  function error(kind, message) {
    const e = new Error("chronik-pending: " + message);
    e.kind = kind;
    return e;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function chronikPending(options) {
    const o = Object.assign(
      {
        pendingText: "pending…",
        pendingClass: "chronik-pending",
        timeout: 30000,
        transport: "auto",
        pollWait: 5,
        baseUrl: "",
      },
      options,
    );
    if (!o.projection) throw new TypeError("chronikPending: options.projection is required");
    const target = String(o.position);
    if (!/^[0-9]{1,19}$/.test(target)) {
      throw new TypeError("chronikPending: options.position must be a string of digits");
    }
    const name = String(o.projection);
    const el = o.element || null;
    const abort = new AbortController();
    let done = false;
    let source = null;
    let timer = null;
    let resolvePromise;
    let rejectPromise;
    const promise = new Promise((resolve, reject) => {
      resolvePromise = resolve;
      rejectPromise = reject;
    });

    const savedText = el ? el.textContent : null;
    if (el) {
      el.classList.add(o.pendingClass);
      el.setAttribute("aria-busy", "true");
      el.dataset.chronikState = "pending";
      if (o.pendingText != null) el.textContent = o.pendingText;
    }

    function stop() {
      done = true;
      if (source) source.close();
      source = null;
      if (timer) clearTimeout(timer);
      abort.abort();
      if (el) {
        el.classList.remove(o.pendingClass);
        el.removeAttribute("aria-busy");
      }
    }

    function fail(e) {
      if (done) return;
      stop();
      if (el) {
        el.dataset.chronikState = "error";
        if (o.pendingText != null) el.textContent = savedText;
      }
      if (o.onError) o.onError(e);
      rejectPromise(e);
    }

    async function applied(via) {
      if (done) return;
      stop();
      let value;
      try {
        if (o.fetch) {
          const response = await fetch(o.fetch, { headers: { Accept: "application/json" } });
          if (!response.ok) throw error("fetch", o.fetch + " answered " + response.status);
          const type = response.headers.get("content-type") || "";
          value = type.includes("json") ? await response.json() : await response.text();
          if (o.render) o.render(value, el);
          else if (el) el.textContent = typeof value === "string" ? value : JSON.stringify(value);
        } else if (el && o.pendingText != null) {
          el.textContent = savedText;
        }
      } catch (e) {
        const failure = e.kind ? e : error("fetch", String(e));
        if (el) el.dataset.chronikState = "error";
        if (o.onError) o.onError(failure);
        rejectPromise(failure);
        return;
      }
      if (el) el.dataset.chronikState = "applied";
      if (o.onApplied) o.onApplied({ projection: name, position: target, via, value });
      resolvePromise(value);
    }

    // "applied", "pending", or "retry" (the server is away); throws what will not get better
    async function ask(wait) {
      const url =
        o.baseUrl + "/projections/" + encodeURIComponent(name) + "/position?min_position=" +
        target + "&wait=" + wait;
      let response;
      try {
        response = await fetch(url, { signal: abort.signal, headers: { Accept: "application/json" } });
      } catch (e) {
        return "retry";
      }
      if (response.status === 200) return "applied";
      if (response.status === 202) return "pending";
      if (response.status === 404) throw error("unknown-projection", "no projection " + name);
      if (response.status >= 500 || response.status === 429 || response.status === 408) {
        return "retry";
      }
      throw error("http", url + " answered " + response.status);
    }

    async function poll() {
      let delay = 250;
      while (!done) {
        const answer = await ask(o.pollWait);
        if (done) return;
        if (answer === "applied") return applied("poll");
        if (answer === "retry") {
          await sleep(delay);
          delay = Math.min(delay * 2, 5000);
        } else {
          delay = 250;
        }
      }
    }

    function listen() {
      let opened = false;
      source = new EventSource(o.baseUrl + "/live/projections?names=" + encodeURIComponent(name));
      source.addEventListener("open", () => {
        opened = true;
      });
      source.addEventListener("checkpoint", (event) => {
        const c = JSON.parse(event.data);
        if (c.projection === name && c.active && reached(c.position, target)) applied("sse");
      });
      source.addEventListener("error", () => {
        // a stream that never opened (no SSE on the way): poll; a dropped one reconnects
        if (done || !source) return;
        if (opened && source.readyState !== EventSource.CLOSED) return;
        source.close();
        source = null;
        if (o.transport === "sse") fail(error("http", "the event stream could not be opened"));
        else poll().catch(fail);
      });
    }

    async function start() {
      try {
        let answer = await ask(0);
        while (answer === "retry" && !done) {
          await sleep(500);
          answer = await ask(0);
        }
        if (done) return;
        if (answer === "applied") return applied("check");
        if (o.transport !== "poll" && typeof EventSource !== "undefined") listen();
        else await poll();
      } catch (e) {
        fail(e);
      }
    }

    if (o.timeout > 0) {
      timer = setTimeout(() => fail(error("timeout", name + " has not applied " + target)), o.timeout);
    }
    start();
    return { promise, cancel: stop };
  }

  chronikPending.reached = reached;
  root.chronikPending = chronikPending;
})(typeof window !== "undefined" ? window : globalThis);
