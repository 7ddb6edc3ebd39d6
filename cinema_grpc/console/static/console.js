// Cinema console: CSRF header for htmx requests, timeline placement, the live seat map (SSE).
(function () {
  "use strict";
  var token = document.querySelector('meta[name="csrf-token"]');
  document.addEventListener("htmx:configRequest", function (event) {
    if (token) { event.detail.headers["X-CSRF-Token"] = token.content; }
  });

  function placeBlocks() {
    document.querySelectorAll(".timeline .block[data-top]").forEach(function (block) {
      block.style.top = block.dataset.top + "%";
      block.style.height = block.dataset.height + "%";
    });
  }

  var MARKS = { "free": "", "held": "H", "sold": "S", "out-of-service": "\u2715" };

  function updateSeat(seat) {
    var button = document.getElementById("seat-" + seat.id);
    if (!button || button.dataset.state === seat.state) { return; }
    button.className = button.className.replace(/\bstate-[a-z-]+/, "state-" + seat.state);
    button.setAttribute("aria-label", seat.label);
    button.dataset.state = seat.state;
    var mark = button.querySelector(".mark");
    if (mark) { mark.textContent = MARKS[seat.state] || ""; }
    var panel = document.getElementById("panel-" + seat.id);
    if (panel && window.htmx) {
      window.htmx.ajax("GET", button.getAttribute("hx-get"), { target: "#seat-panel", swap: "innerHTML" });
    }
  }

  function watchSeats() {
    var map = document.getElementById("seat-map");
    var status = document.getElementById("live-status");
    if (!map || !window.EventSource) { return; }
    var source = new EventSource(map.dataset.events);
    source.addEventListener("open", function () {
      status.textContent = "Live updates: on";
      status.dataset.state = "live";
    });
    source.addEventListener("seats", function (event) {
      var data = JSON.parse(event.data);
      data.seats.forEach(updateSeat);
      map.dataset.version = data.version;
      status.textContent = "Live updates: on (version " + data.version + ")";
      status.dataset.state = "live";
    });
    source.addEventListener("ended", function (event) {
      var data = JSON.parse(event.data);
      status.textContent = "Live updates paused: " + data.message + " Reconnecting\u2026";
      status.dataset.state = "reconnecting";
      if (data.reason === "TOKEN_EXPIRED" || data.reason === "TOKEN_REVOKED") { source.close(); }
    });
    source.addEventListener("error", function () {
      status.textContent = "Live updates: reconnecting\u2026";
      status.dataset.state = "reconnecting";
    });
  }

  // After a refused form, the first error gets focus, so keyboard and screen-reader users land on it.
  function focusFirstError() {
    var first = document.querySelector("#overlap, main .form-errors, main .field-error");
    if (!first) { return; }
    first.setAttribute("tabindex", "-1");
    first.focus();
    first.scrollIntoView({ block: "center" });
  }

  document.addEventListener("DOMContentLoaded", function () {
    placeBlocks();
    focusFirstError();
    watchSeats();
  });
})();
