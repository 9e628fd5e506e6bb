/* The picture of a conversation, drawn into every element with data-picture (the URL of its JSON):
   each channel's waveform, who spoke when (one row per speaker), silences and overlaps, chapters of a
   stitch, and a playhead that follows the page's <audio>. Clicking the picture plays from there.
   A speaker without speech (data.voices: a tone or steady noise, no sound) is said in words, and their
   channel is drawn in grey as a signal level, not in their colour as speech. */
(function () {
  "use strict";

  var PALETTE = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
  var NEUTRAL = "#64748b";
  var SILENCE = "rgba(100, 116, 139, 0.14)";
  var OVERLAP = "rgba(220, 38, 38, 0.16)";
  var PLAYHEAD = "#dc2626";
  var LEVEL = "rgba(100, 116, 139, 0.45)";
  var AXIS_H = 16, CHAPTER_H = 16, ROW_H = 12, GAP = 4;
  var TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];

  function clock(seconds) {
    var s = Math.max(0, Math.round(seconds));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
  }

  function findAudio(el) {
    var named = el.dataset.audioEl && document.getElementById(el.dataset.audioEl);
    if (named) return named;
    var near = el.parentElement && el.parentElement.querySelector("audio");
    if (near) return near;
    var any = document.querySelector("audio");
    if (any) return any;
    // a page with a picture but no player: make one for the picture's audio
    var made = document.createElement("audio");
    made.controls = true;
    made.preload = "metadata";
    made.src = el.dataset.audio || "";
    el.parentElement.insertBefore(made, el);
    return made;
  }

  // what each speaker holds: data.voices from the page's server, else speech when there are segments
  function voices(data) {
    return data.speakers.map(function (s, i) {
      var v = data.voices && data.voices[i];
      if (v && v.heard) return v;
      return s.segments.length ? { heard: "speech", text: "speech" } : { heard: "none", text: "no speech detected" };
    });
  }

  // the voice a channel carries alone, or null when it carries several (or none)
  function soleVoice(data, heard, index) {
    var alone = [];
    data.speakers.forEach(function (s, i) { if (s.channel === index) alone.push(i); });
    return alone.length === 1 ? { speaker: alone[0], voice: heard[alone[0]] } : null;
  }

  function colors(data, heard) {
    var speaker = data.speakers.map(function (_, i) { return PALETTE[i % PALETTE.length]; });
    var channel = data.channels.map(function (ch) {
      var sole = soleVoice(data, heard, ch.index);
      if (!sole) return NEUTRAL;
      return sole.voice.heard === "speech" ? speaker[sole.speaker] : LEVEL;
    });
    return { speaker: speaker, channel: channel };
  }

  function Picture(el) {
    this.el = el;
    this.audio = findAudio(el);
    this.data = null;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "picture-canvas";
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute("role", "slider");
    this.canvas.setAttribute("aria-label", "Position in the conversation; click or use the arrow keys to move");
    this.layer = document.createElement("canvas");
    this.legend = document.createElement("ul");
    this.legend.className = "picture-legend";
    this.frame = 0;
    this.width = 0;
  }

  Picture.prototype.load = function () {
    var self = this;
    fetch(this.el.dataset.picture, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) { self.show(data); })
      .catch(function () {
        self.el.dataset.state = "error";
        self.el.innerHTML = "";
        var p = document.createElement("p");
        p.className = "picture-wait";
        p.textContent = "The picture of this conversation cannot be shown right now.";
        self.el.appendChild(p);
      });
  };

  Picture.prototype.show = function (data) {
    var self = this;
    this.data = data;
    this.voices = voices(data);
    this.colors = colors(data, this.voices);
    this.el.innerHTML = "";
    this.el.appendChild(this.canvas);
    this.el.appendChild(this.legend);
    this.fillLegend();
    this.canvas.addEventListener("click", function (e) { self.seekTo(e.clientX); });
    this.canvas.addEventListener("keydown", function (e) { self.key(e); });
    ["timeupdate", "seeked", "pause", "ended", "loadedmetadata"].forEach(function (name) {
      self.audio.addEventListener(name, function () { self.paint(); });
    });
    this.audio.addEventListener("play", function () { self.loop(); });
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.layout(); }).observe(this.el);
    } else {
      window.addEventListener("resize", function () { self.layout(); });
    }
    this.layout();
    this.el.dataset.state = "ready";
    this.el.dataset.duration = String(data.duration_s);
  };

  Picture.prototype.fillLegend = function () {
    var self = this, items = [];
    this.data.speakers.forEach(function (s, i) {
      var spoken = s.segments.reduce(function (sum, seg) { return sum + (seg[1] - seg[0]); }, 0);
      var voice = self.voices[i];
      var said = voice.heard === "speech" ? clock(spoken) + " of speech" : voice.text;
      var swatch = voice.heard === "speech" ? self.colors.speaker[i] : LEVEL;
      items.push([swatch, s.label, said, "speaker heard-" + voice.heard]);
    });
    items.push([SILENCE, "silence", this.data.silences.length + "×", "silence"]);
    items.push([OVERLAP, "overlap", this.data.overlaps.length + "×", "overlap"]);
    this.legend.innerHTML = "";
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.className = "legend-" + item[3];
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = item[0];
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = item[1];
      var extra = document.createElement("span");
      extra.className = "extra";
      extra.textContent = item[2];
      li.appendChild(swatch);
      li.appendChild(name);
      li.appendChild(extra);
      self.legend.appendChild(li);
    });
  };

  Picture.prototype.rows = function () {
    var narrow = this.el.clientWidth < 480;
    var lane = narrow ? 34 : 46;
    var top = AXIS_H + (this.data.chapters.length ? CHAPTER_H : 0);
    var lanes = this.data.channels.map(function (_, i) { return top + i * (lane + GAP); });
    var after = top + this.data.channels.length * (lane + GAP);
    var speakers = this.data.speakers.map(function (_, i) { return after + i * (ROW_H + 2); });
    return { lane: lane, lanes: lanes, speakers: speakers, height: after + this.data.speakers.length * (ROW_H + 2) + 2 };
  };

  Picture.prototype.layout = function () {
    var width = Math.max(120, Math.floor(this.el.clientWidth));
    var rows = this.rows();
    var ratio = window.devicePixelRatio || 1;
    // the observer also reports the height this drawing gave the element: nothing to redraw then
    if (width === this.width && rows.height === this.height && ratio === this.ratio) return;
    this.width = width;
    this.height = rows.height;
    [this.canvas, this.layer].forEach(function (c) {
      c.width = Math.round(width * ratio);
      c.height = Math.round(rows.height * ratio);
    });
    // the width follows the element (CSS 100%): a narrower window shrinks the canvas at once, and the
    // resize observer redraws it at the new width; only the height is the drawing's own
    this.canvas.style.width = "100%";
    this.canvas.style.height = rows.height + "px";
    this.ratio = ratio;
    this.drawLayer(rows);
    this.paint();
  };

  Picture.prototype.x = function (seconds) {
    var d = this.data.duration_s || 1;
    return Math.max(0, Math.min(this.width, (seconds / d) * this.width));
  };

  Picture.prototype.drawLayer = function (rows) {
    var g = this.layer.getContext("2d"), self = this, data = this.data, w = this.width;
    g.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    g.clearRect(0, 0, w, rows.height);
    var bodyTop = AXIS_H, bodyH = rows.height - AXIS_H;
    // silences and overlaps behind everything
    g.fillStyle = SILENCE;
    data.silences.forEach(function (s) { g.fillRect(self.x(s[0]), bodyTop, self.x(s[1]) - self.x(s[0]), bodyH); });
    g.fillStyle = OVERLAP;
    data.overlaps.forEach(function (s) { g.fillRect(self.x(s[0]), bodyTop, Math.max(1, self.x(s[1]) - self.x(s[0])), bodyH); });
    this.drawAxis(g, w);
    if (data.chapters.length) this.drawChapters(g, rows);
    // waveforms: min..max of each pixel column, scaled to the loudest peak
    var loudest = 0.05;
    data.channels.forEach(function (ch) {
      ch.peaks.forEach(function (p) { loudest = Math.max(loudest, -p[0], p[1]); });
    });
    data.channels.forEach(function (ch, k) {
      var top = rows.lanes[k], mid = top + rows.lane / 2, half = rows.lane / 2 - 1, n = ch.peaks.length;
      g.fillStyle = "rgba(148, 163, 184, 0.25)";
      g.fillRect(0, mid, w, 1);
      g.fillStyle = self.colors.channel[k];
      if (!n) return;
      for (var x = 0; x < w; x++) {
        var i0 = Math.floor((x * n) / w), i1 = Math.max(i0 + 1, Math.floor(((x + 1) * n) / w));
        var lo = 0, hi = 0;
        for (var i = i0; i < i1 && i < n; i++) {
          lo = Math.min(lo, ch.peaks[i][0]);
          hi = Math.max(hi, ch.peaks[i][1]);
        }
        var y0 = mid - (hi / loudest) * half, y1 = mid - (lo / loudest) * half;
        g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
      }
      var sole = soleVoice(data, self.voices, ch.index);
      var label = ch.name;
      if (sole && sole.voice.heard !== "speech") label += " · " + sole.voice.text;
      self.label(g, label, 3, top + 10);
    });
    // who spoke when: one row per speaker
    data.speakers.forEach(function (s, i) {
      var y = rows.speakers[i];
      g.fillStyle = "rgba(148, 163, 184, 0.18)";
      g.fillRect(0, y, w, ROW_H);
      g.fillStyle = self.colors.speaker[i];
      s.segments.forEach(function (seg) {
        g.fillRect(self.x(seg[0]), y, Math.max(1, self.x(seg[1]) - self.x(seg[0])), ROW_H);
      });
      if (self.voices[i].heard !== "speech") {
        g.fillStyle = "rgba(71, 85, 105, 0.9)";
        g.font = "10px system-ui, sans-serif";
        g.fillText(s.label + ": " + self.voices[i].text, 3, y + ROW_H - 2);
      }
    });
  };

  // a label over the waveform, on a light backing so that a loud signal does not hide it
  Picture.prototype.label = function (g, text, x, y) {
    g.font = "10px system-ui, sans-serif";
    var width = Math.min(g.measureText(text).width, this.width - x - 2);
    g.fillStyle = "rgba(248, 250, 252, 0.85)";
    g.fillRect(x - 2, y - 9, width + 4, 12);
    g.fillStyle = "rgba(71, 85, 105, 0.95)";
    g.fillText(text, x, y, Math.max(1, this.width - x - 2));
  };

  Picture.prototype.drawAxis = function (g, w) {
    var d = this.data.duration_s || 1, step = TICKS[TICKS.length - 1];
    for (var k = 0; k < TICKS.length; k++) {
      if ((TICKS[k] / d) * w >= 64) { step = TICKS[k]; break; }
    }
    g.fillStyle = "rgba(71, 85, 105, 0.9)";
    g.font = "10px system-ui, sans-serif";
    for (var t = 0; t <= d; t += step) {
      var x = Math.round(this.x(t));
      g.fillRect(x, AXIS_H - 5, 1, 5);
      if (x < w - 24) g.fillText(clock(t), x + 2, 10);
    }
  };

  Picture.prototype.drawChapters = function (g, rows) {
    var self = this;
    g.font = "10px system-ui, sans-serif";
    this.data.chapters.forEach(function (c, i) {
      var a = self.x(c.from_s), b = self.x(c.to_s);
      g.fillStyle = i % 2 ? "rgba(37, 99, 235, 0.12)" : "rgba(37, 99, 235, 0.22)";
      g.fillRect(a, AXIS_H, Math.max(1, b - a), CHAPTER_H - 2);
      g.fillStyle = "rgba(30, 58, 138, 0.9)";
      g.fillRect(a, AXIS_H, 1, rows.height - AXIS_H);
      var label = (c.who || []).join(", ");
      g.save();
      g.beginPath();
      g.rect(a, AXIS_H, Math.max(1, b - a), CHAPTER_H);
      g.clip();
      g.fillText(label, a + 3, AXIS_H + 11);
      g.restore();
    });
  };

  Picture.prototype.paint = function () {
    if (!this.data || !this.width) return;
    var g = this.canvas.getContext("2d");
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, this.canvas.width, this.canvas.height);
    g.drawImage(this.layer, 0, 0);
    g.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    var t = this.audio.currentTime || 0, x = Math.round(this.x(t));
    g.fillStyle = PLAYHEAD;
    g.fillRect(x - 1, 0, 2, this.height);
    this.canvas.setAttribute("aria-valuenow", String(Math.round(t)));
    this.canvas.setAttribute("aria-valuetext", clock(t) + " of " + clock(this.data.duration_s));
  };

  Picture.prototype.loop = function () {
    var self = this;
    cancelAnimationFrame(this.frame);
    var step = function () {
      self.paint();
      if (!self.audio.paused && !self.audio.ended) self.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  };

  Picture.prototype.seek = function (seconds) {
    var d = this.data.duration_s || 0;
    this.audio.currentTime = Math.max(0, Math.min(d, seconds));
    this.paint();
  };

  Picture.prototype.seekTo = function (clientX) {
    var rect = this.canvas.getBoundingClientRect();
    this.seek(((clientX - rect.left) / rect.width) * this.data.duration_s);
    if (this.audio.paused) {
      var started = this.audio.play();
      if (started && started.catch) started.catch(function () {});
    }
  };

  Picture.prototype.key = function (e) {
    var t = this.audio.currentTime || 0;
    if (e.key === "ArrowLeft") this.seek(t - 5);
    else if (e.key === "ArrowRight") this.seek(t + 5);
    else if (e.key === "Home") this.seek(0);
    else if (e.key === " ") {
      if (this.audio.paused) this.audio.play(); else this.audio.pause();
    } else return;
    e.preventDefault();
  };

  function start() {
    document.querySelectorAll("[data-picture]").forEach(function (el) {
      if (el.dataset.state) return;
      el.dataset.state = "loading";
      new Picture(el).load();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
