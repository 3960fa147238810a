// Vigil console: the only script. Regions with data-refresh="URL" reload their inner HTML every
// data-every seconds (server-rendered fragments; no framework), every half second while the
// region holds a [data-pending] placeholder (health still computing, charts loading: the first
// fetch then goes at once); forms with data-confirm ask first.
(function () {
  "use strict";
  function refresh(region) {
    var url = region.getAttribute("data-refresh");
    var base = parseFloat(region.getAttribute("data-every") || "5") * 1000;
    function every() {
      return region.querySelector("[data-pending]") ? Math.min(base, 500) : base;
    }
    function tick() {
      if (document.hidden) { setTimeout(tick, every()); return; }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) {
          region.innerHTML = html;
          region.setAttribute("data-refreshed", new Date().toISOString());
        })
        .catch(function () { region.setAttribute("data-stale", "true"); })
        .then(function () { setTimeout(tick, every()); });
    }
    // A placeholder loads at once (the experiment's charts); a filled region waits its period.
    setTimeout(tick, region.querySelector("[data-pending]") ? 0 : every());
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  });
})();
