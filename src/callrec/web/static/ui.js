/* Small helpers of the UI's pages: times in the reader's zone, the search form's zone, copying a
   link, confirming a revoke, chapters that seek the player, the public page's clean address. */
(function () {
  "use strict";

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      el.title = el.textContent;
      el.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
    });
  }

  function searchZone() {
    // the search form's times are the reader's local times: tell the server how far from UTC they are
    document.querySelectorAll("input[data-tz]").forEach(function (el) {
      var form = el.form;
      var fill = function () { el.value = String(-new Date().getTimezoneOffset()); };
      fill();
      if (form) form.addEventListener("submit", fill);
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.dataset.copy);
        if (!field) return;
        var done = function () {
          button.textContent = "Copied";
          button.classList.add("copied");
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () { field.select(); });
        } else {
          field.select();
          if (document.execCommand("copy")) done();
        }
      });
    });
  }

  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.dataset.confirm)) e.preventDefault();
      });
    });
  }

  function chapters() {
    document.querySelectorAll("[data-seek]").forEach(function (a) {
      a.addEventListener("click", function (e) {
        var player = document.getElementById("player");
        if (!player) return;
        e.preventDefault();
        player.currentTime = parseFloat(a.dataset.seek);
        var started = player.play();
        if (started && started.catch) started.catch(function () {});
      });
    });
  }

  function waitingFlag() {
    // the public page's own reload while a recording is prepared carries ?waiting=1 (not counted as a
    // use); take it off the address, so a copied address opens (and counts) as the link itself
    if (!document.body.classList.contains("public-link") || !window.history.replaceState) return;
    var query = new URLSearchParams(window.location.search);
    if (!query.has("waiting")) return;
    query.delete("waiting");
    var rest = query.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : "") + window.location.hash);
  }

  function start() {
    waitingFlag();
    localTimes();
    searchZone();
    copyButtons();
    confirms();
    chapters();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
