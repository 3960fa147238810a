// Vigil console: the only script. Regions with data-refresh="URL" reload their inner HTML every
// data-every seconds (server-rendered fragments; no framework); forms with data-confirm ask first.
(function () {
  "use strict";
  function refresh(region) {
    var url = region.getAttribute("data-refresh");
    var every = parseFloat(region.getAttribute("data-every") || "5") * 1000;
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
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
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
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
