/* The interactive invariant-set explorer of the book's page "explorer" (issue 17).
 *
 * Runs only on a page with <div id="equidiff-explorer"> (Jupyter Book adds every _static/*.js to every
 * page; elsewhere this file does nothing). Its data, window.EQUIDIFF_EXPLORER, comes from
 * _static/explorer_data.js, written by equidiff.report.explorer.export_explorer at build time: the
 * shipped circles MLP's weights (float32 values, exact), its layer sizes, the plane's extent and chapter
 * 1's queries and EquiDiff samples. No library, nothing loaded from the network.
 *
 * What it does:
 *   - evaluates the MLP (Linear, SiLU, Linear, SiLU, Linear, then sigmoid) and its gradient here;
 *   - draws the objective over the plane [-E, E]^2 on a canvas, with axes and a colour bar;
 *   - on a click at x*, shows L(x*) and draws the exact invariant set IS(x*) = {x : L(x) = L(x*)}:
 *     marching squares on a fine grid with linear interpolation along the cell edges, then every
 *     point refined by Newton steps along the gradient until |L(x) - L(x*)| < tolerance / 100
 *     (points that do not get there are dropped and counted), so every drawn point is within the
 *     stated tolerance (data.tolerance);
 *   - shades the band {x : |L(x) - L(x*)| < eps} (eps from the slider);
 *   - objective: the output probability, one hidden unit, or two hidden units together, whose
 *     invariant set is the intersection of two level curves (thesis Appendix .2.2): a handful of points,
 *     each found by 2D Newton steps on (L_a(x) - L_a(x*), L_b(x) - L_b(x*)) from every grid cell both
 *     curves cross.
 *
 * For tests: window.equidiffExplorer.clickAt(x, y) (plane coordinates), .state(), .toPixel(x, y)
 * (CSS pixels from the canvas' top-left corner); the value is also in the element #explorer-value.
 */
(function () {
  "use strict";

  var GRID = 321; // grid nodes per axis for the level curves and the band (320 cells)
  var NEWTON_STEPS = 16; // at most, per point
  // canvas layout, CSS pixels
  var CW = 620, CH = 516, PL = 58, PT = 18, PS = 440; // plot square: left, top, size
  var CBX = PL + PS + 26, CBW = 16; // colour bar
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                 [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37]];
  var COLORS = {curve: "#e8112d", curveB: "#5fd3ff", halo: "rgba(255,255,255,0.85)", star: "#000000",
                samples: ["#ff9f1c", "#ff5ad7", "#a6ff4d", "#ffe14d", "#4dd2ff"], // one per chapter 1 query
                query: "#ffffff", circle: "rgba(255,255,255,0.8)", manifold: "rgba(210,210,210,0.7)", point: "#ffffff"};

  // ------------------------------------------------------------------ the MLP

  function silu(a) { return a / (1 + Math.exp(-a)); }
  function siluPrime(a) { var s = 1 / (1 + Math.exp(-a)); return s * (1 + a * (1 - s)); }
  function sigmoid(v) { return 1 / (1 + Math.exp(-v)); }

  function Model(spec) {
    if (spec.activation !== "silu" || spec.output !== "sigmoid") {
      throw new Error("explorer: model.activation must be 'silu' and model.output 'sigmoid', got " +
                      spec.activation + ", " + spec.output);
    }
    this.sizes = spec.layers.slice(); // [2, hidden, hidden, 1]
    this.L = spec.weights.length;
    this.W = []; this.b = []; this.a = []; this.h = []; this.J = []; this.JA = [];
    for (var l = 0; l < this.L; l++) {
      var nout = this.sizes[l + 1], nin = this.sizes[l], w = new Float64Array(nout * nin);
      for (var o = 0; o < nout; o++) for (var i = 0; i < nin; i++) w[o * nin + i] = spec.weights[l][o][i];
      this.W.push(w);
      this.b.push(Float64Array.from(spec.biases[l]));
      this.a.push(new Float64Array(nout)); // pre-activation
      this.h.push(new Float64Array(nout)); // post-activation (hidden layers)
      this.JA.push(new Float64Array(nout * 2)); // d a / d x
      this.J.push(new Float64Array(nout * 2)); // d h / d x
    }
    this.input = new Float64Array(2);
    this.nHidden = this.L - 1;
  }

  // Forward pass at (x, y); fills this.a / this.h; returns the logit.
  Model.prototype.forward = function (x, y) {
    var prev = this.input; prev[0] = x; prev[1] = y;
    for (var l = 0; l < this.L; l++) {
      var nin = this.sizes[l], nout = this.sizes[l + 1], w = this.W[l], b = this.b[l], a = this.a[l], h = this.h[l];
      for (var o = 0; o < nout; o++) {
        var s = b[o], row = o * nin;
        for (var i = 0; i < nin; i++) s += w[row + i] * prev[i];
        a[o] = s;
        h[o] = l < this.L - 1 ? silu(s) : s;
      }
      prev = h;
    }
    return this.a[this.L - 1][0];
  };

  // Forward pass plus forward-mode Jacobians d h_l / d x (this.J[l], (n_l, 2) row-major).
  Model.prototype.jacobian = function (x, y) {
    var logit = this.forward(x, y);
    for (var l = 0; l < this.L; l++) {
      var nin = this.sizes[l], nout = this.sizes[l + 1], w = this.W[l], JA = this.JA[l], J = this.J[l];
      var prevJ = l === 0 ? null : this.J[l - 1];
      for (var o = 0; o < nout; o++) {
        var gx = 0, gy = 0, row = o * nin;
        if (prevJ === null) { gx = w[row]; gy = w[row + 1]; }
        else for (var i = 0; i < nin; i++) { gx += w[row + i] * prevJ[2 * i]; gy += w[row + i] * prevJ[2 * i + 1]; }
        JA[2 * o] = gx; JA[2 * o + 1] = gy;
        var d = l < this.L - 1 ? siluPrime(this.a[l][o]) : 1;
        J[2 * o] = d * gx; J[2 * o + 1] = d * gy;
      }
    }
    return logit;
  };

  // ------------------------------------------------------------------ objectives ("terms")
  // A term is {kind: "p"} (the output probability) or {kind: "unit", layer: 1.., index: 0..} (a hidden
  // unit's activation after its SiLU).

  function termValue(m, t, logit) {
    return t.kind === "p" ? sigmoid(logit) : m.h[t.layer - 1][t.index];
  }

  function valueAt(m, t, x, y) { return termValue(m, t, m.forward(x, y)); }

  // [value, d/dx, d/dy] of a term at (x, y)
  function valueGrad(m, t, x, y) {
    var logit = m.jacobian(x, y);
    if (t.kind === "p") {
      var p = sigmoid(logit), s = p * (1 - p), J = m.J[m.L - 1];
      return [p, s * J[0], s * J[1]];
    }
    var Jh = m.J[t.layer - 1];
    return [m.h[t.layer - 1][t.index], Jh[2 * t.index], Jh[2 * t.index + 1]];
  }

  var SUB = "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089";
  function sub(n) { return String(n).replace(/[0-9]/g, function (d) { return SUB[Number(d)]; }); }

  // p(x), or h_{layer,unit}(x) with subscripts
  function termName(t) {
    return t.kind === "p" ? "p(x)" : "h" + sub(t.layer) + "," + sub(t.index) + "(x)";
  }

  function termLabel(t) {
    return t.kind === "p" ? "p(x): output probability of 'inside'" :
      termName(t) + ": hidden layer " + t.layer + ", unit " + t.index + " (after SiLU)";
  }

  // ------------------------------------------------------------------ the explorer

  function Explorer(root, data) {
    var self = this;
    this.root = root;
    this.data = data;
    this.model = new Model(data.model);
    this.E = data.extent;
    this.tol = data.tolerance;
    this.h = 2 * this.E / (GRID - 1);
    this.el = function (id) { return document.getElementById("explorer-" + id); };
    this.canvas = this.el("canvas");
    if (!this.canvas) throw new Error("explorer: the page has no <canvas id=\"explorer-canvas\">");
    this.unitRange = this.measureUnits();
    this.setupCanvas();
    this.setupControls();
    this.terms = null; this.xStar = null; this.result = null;
    this.readControls();
    var q = data.chapter && data.chapter.queries.length ? data.chapter.queries[0] : [0.5, 0.3];
    this.clickAt(q[0], q[1]);
    this.canvas.addEventListener("click", function (e) {
      var p = self.eventToPlane(e);
      if (p) self.clickAt(p[0], p[1]);
    });
    this.canvas.addEventListener("mousemove", function (e) { self.hover(self.eventToPlane(e)); });
    this.canvas.addEventListener("mouseleave", function () { self.hover(null); });
  }

  // min and max of every hidden unit over a coarse grid of the plane: which units are constant there
  Explorer.prototype.measureUnits = function () {
    var m = this.model, n = 81, ranges = [];
    for (var l = 0; l < m.nHidden; l++) {
      var k = m.sizes[l + 1], lo = new Float64Array(k).fill(Infinity), hi = new Float64Array(k).fill(-Infinity);
      ranges.push({lo: lo, hi: hi});
    }
    for (var j = 0; j < n; j++) for (var i = 0; i < n; i++) {
      m.forward(-this.E + 2 * this.E * i / (n - 1), -this.E + 2 * this.E * j / (n - 1));
      for (l = 0; l < m.nHidden; l++) {
        var h = m.h[l], r = ranges[l];
        for (var u = 0; u < h.length; u++) { if (h[u] < r.lo[u]) r.lo[u] = h[u]; if (h[u] > r.hi[u]) r.hi[u] = h[u]; }
      }
    }
    return ranges;
  };

  Explorer.prototype.isLive = function (layer, unit) {
    var r = this.unitRange[layer - 1];
    return r.hi[unit] - r.lo[unit] > 1e-6;
  };

  Explorer.prototype.setupCanvas = function () {
    var dpr = window.devicePixelRatio || 1, c = this.canvas;
    c.width = Math.round(CW * dpr); c.height = Math.round(CH * dpr);
    c.style.width = CW + "px"; c.style.height = "auto"; c.style.maxWidth = "100%"; c.style.cursor = "crosshair";
    this.ctx = c.getContext("2d");
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.off = document.createElement("canvas");
    this.off.width = PS; this.off.height = PS;
    this.offCtx = this.off.getContext("2d");
    this.image = this.offCtx.createImageData(PS, PS);
  };

  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = String(value); o.textContent = text; select.appendChild(o);
    return o;
  }

  Explorer.prototype.fillUnits = function () {
    var layer = Number(this.el("layer").value), k = this.model.sizes[layer], live = [];
    var selects = [this.el("unit-a"), this.el("unit-b")];
    var keep = selects.map(function (s) { return s.value; });
    for (var u = 0; u < k; u++) if (this.isLive(layer, u)) live.push(u);
    // the live units by how much they vary over the plane, largest first (the defaults)
    var r = this.unitRange[layer - 1];
    live.sort(function (a, b) { return (r.hi[b] - r.lo[b]) - (r.hi[a] - r.lo[a]); });
    for (var s = 0; s < 2; s++) {
      var sel = selects[s];
      while (sel.firstChild) sel.removeChild(sel.firstChild);
      for (u = 0; u < k; u++) {
        var o = option(sel, u, "unit " + u + (this.isLive(layer, u) ? "" : " (constant)"));
        if (!this.isLive(layer, u)) o.disabled = true;
      }
      var want = Number(keep[s]);
      if (keep[s] === "" || !this.isLive(layer, want) || this.unitsLayer !== layer) want = live[Math.min(s, live.length - 1)];
      sel.value = String(want === undefined ? 0 : want);
    }
    this.unitsLayer = layer;
  };

  Explorer.prototype.setupControls = function () {
    var self = this, m = this.model;
    var layer = this.el("layer");
    for (var l = 1; l <= m.nHidden; l++) option(layer, l, "hidden layer " + l + " (" + m.sizes[l] + " units)");
    layer.value = "1"; // the first layer's units are SiLUs of lines: straight level sets, easy to read
    this.fillUnits();
    var tolEl = this.el("tolerance");
    if (tolEl) tolEl.textContent = this.tol.toExponential(0);
    var change = function () { self.readControls(); self.update(); };
    this.el("objective").addEventListener("change", change);
    layer.addEventListener("change", function () { self.fillUnits(); change(); });
    this.el("unit-a").addEventListener("change", change);
    this.el("unit-b").addEventListener("change", change);
    this.el("epsilon").addEventListener("input", function () { self.readEpsilon(); self.update(true); });
    var toggle = this.el("samples"), note = this.el("chapter"), ch = this.data.chapter;
    toggle.addEventListener("change", function () { self.draw(); });
    var box = this.el("queries");
    if (ch) {
      var n = ch.samples.map(function (s) { return s.length; });
      note.textContent = "Chapter 1's " + ch.queries.length + " queries (white crosses) and their EquiDiff samples " +
        "through the 2D diffusion prior (one colour per query, as on its button; " + n.join(", ") + " of " + ch.n_requested + " starting noises per " +
        "query converged, each within tau = " + ch.tau + " of its query's p). They belong to the output-probability " +
        "objective: choose a query below to see its level curve.";
      ch.queries.forEach(function (q, i) {
        var b = document.createElement("button");
        b.type = "button"; b.className = "explorer-query";
        var dot = document.createElement("span");
        dot.style.cssText = "display:inline-block; width:0.7em; height:0.7em; border-radius:50%; border:1px solid #000; " +
          "margin-right:0.4em; vertical-align:middle; background:" + sampleColour(i);
        b.appendChild(dot);
        b.appendChild(document.createTextNode("x* = Q" + (i + 1) + " (" + q[0] + ", " + q[1] + ")"));
        b.style.margin = "0 0.4em 0.3em 0";
        b.addEventListener("click", function () { self.clickAt(q[0], q[1]); });
        box.appendChild(b);
      });
    } else {
      toggle.checked = false; toggle.disabled = true;
      note.textContent = "No EquiDiff samples to overlay: " + (this.data.chapter_missing ||
        "chapter 1 did not run in this build") + ". Build chapter 1, then the book, to see them.";
    }
  };

  Explorer.prototype.readEpsilon = function () {
    var v = Number(this.el("epsilon").value); // the slider is 100 log10(eps)
    this.eps = Math.pow(10, v / 100);
    this.el("epsilon-value").textContent = this.eps.toPrecision(2);
  };

  Explorer.prototype.readControls = function () {
    this.objective = this.el("objective").value;
    var layer = Number(this.el("layer").value), a = Number(this.el("unit-a").value), b = Number(this.el("unit-b").value);
    var unitControls = this.root.querySelectorAll(".explorer-unit-control");
    for (var i = 0; i < unitControls.length; i++) {
      var need = unitControls[i].getAttribute("data-for");
      unitControls[i].style.display = (need === "unit" ? this.objective !== "probability" :
                                       this.objective === "two_units") ? "" : "none";
    }
    var terms;
    if (this.objective === "probability") terms = [{kind: "p"}];
    else if (this.objective === "unit") terms = [{kind: "unit", layer: layer, index: a}];
    else if (this.objective === "two_units") terms = [{kind: "unit", layer: layer, index: a}, {kind: "unit", layer: layer, index: b}];
    else throw new RangeError("objective must be 'probability', 'unit' or 'two_units', got " + this.objective);
    this.readEpsilon();
    var key = JSON.stringify(terms);
    if (key !== this.termsKey) { this.terms = terms; this.termsKey = key; this.computeFields(); }
  };

  // the objective's terms on the grid (for the curves and the band) and at every pixel (for the picture)
  Explorer.prototype.computeFields = function () {
    var m = this.model, N = GRID, E = this.E, h = this.h, terms = this.terms, nt = terms.length, i, j, t;
    this.fields = [];
    for (t = 0; t < nt; t++) this.fields.push(new Float64Array(N * N));
    for (j = 0; j < N; j++) for (i = 0; i < N; i++) {
      var logit = m.forward(-E + i * h, -E + j * h);
      for (t = 0; t < nt; t++) this.fields[t][j * N + i] = termValue(m, terms[t], logit);
    }
    // per pixel (bilinear on the grid): pixel (px, py) has its centre at plane (x, y), y upwards
    this.pixelFields = [];
    for (t = 0; t < nt; t++) {
      var F = this.fields[t], P = new Float32Array(PS * PS);
      for (var py = 0; py < PS; py++) {
        var y = E - (py + 0.5) / PS * 2 * E, gy = (y + E) / h, j0 = Math.min(N - 2, Math.floor(gy)), fy = gy - j0;
        for (var px = 0; px < PS; px++) {
          var x = -E + (px + 0.5) / PS * 2 * E, gx = (x + E) / h, i0 = Math.min(N - 2, Math.floor(gx)), fx = gx - i0;
          var k = j0 * N + i0;
          P[py * PS + px] = (1 - fy) * ((1 - fx) * F[k] + fx * F[k + 1]) + fy * ((1 - fx) * F[k + N] + fx * F[k + N + 1]);
        }
      }
      this.pixelFields.push(P);
    }
    // colour scale of the first term: [0, 1] for the probability, the range over the plane for a unit
    var F0 = this.fields[0], lo = Infinity, hi = -Infinity;
    for (i = 0; i < F0.length; i++) { if (F0[i] < lo) lo = F0[i]; if (F0[i] > hi) hi = F0[i]; }
    this.range = terms[0].kind === "p" ? [0, 1] : (hi - lo > 1e-12 ? [lo, hi] : [lo - 0.5, lo + 0.5]);
    var base = new Uint8ClampedArray(PS * PS * 4), P0 = this.pixelFields[0];
    for (i = 0; i < PS * PS; i++) {
      var c = colormap((P0[i] - this.range[0]) / (this.range[1] - this.range[0]));
      base[4 * i] = c[0]; base[4 * i + 1] = c[1]; base[4 * i + 2] = c[2]; base[4 * i + 3] = 255;
    }
    this.base = base;
  };

  function colormap(v) {
    v = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(v)), f = v - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
  }

  // ------------------------------------------------------------------ the invariant set

  // Newton steps along the gradient from (x, y) to the level L = c; [x, y] within tol / 100, or null.
  Explorer.prototype.refine = function (t, c, x, y) {
    var m = this.model, x0 = x, y0 = y, h = this.h, target = this.tol / 100;
    for (var k = 0; k <= NEWTON_STEPS; k++) {
      var vg = valueGrad(m, t, x, y), r = vg[0] - c;
      if (Math.abs(r) < target) break;
      if (k === NEWTON_STEPS) return null;
      var gg = vg[1] * vg[1] + vg[2] * vg[2];
      if (!(gg > 1e-300)) return null;
      var dx = -r * vg[1] / gg, dy = -r * vg[2] / gg, len = Math.sqrt(dx * dx + dy * dy);
      if (len > h) { dx *= h / len; dy *= h / len; } // a step never leaves the neighbourhood of its cell
      x += dx; y += dy;
    }
    var E = this.E + h; // a crossing on the plane's border may settle just outside it (the picture is clipped)
    if (Math.abs(x) > E || Math.abs(y) > E) return null;
    if (Math.hypot(x - x0, y - y0) > 2 * h) return null; // it wandered to another part of the curve
    return [x, y];
  };

  // Marching squares of the grid field F at level c, each crossing refined: {points, segments, dropped, cells}
  Explorer.prototype.contour = function (F, t, c) {
    var N = GRID, E = this.E, h = this.h, self = this, cache = new Map(), points = [], segments = [], cells = new Set();
    var dropped = 0;
    function edge(key, ia, ja, ib, jb) {
      var idx = cache.get(key);
      if (idx !== undefined) return idx;
      var va = F[ja * N + ia], vb = F[jb * N + ib], s = (c - va) / (vb - va);
      var r = self.refine(t, c, -E + (ia + s * (ib - ia)) * h, -E + (ja + s * (jb - ja)) * h);
      idx = -1;
      if (r) { idx = points.length; points.push(r); } else dropped++;
      cache.set(key, idx);
      return idx;
    }
    for (var j = 0; j < N - 1; j++) for (var i = 0; i < N - 1; i++) {
      var k = j * N + i, v00 = F[k], v10 = F[k + 1], v11 = F[k + N + 1], v01 = F[k + N];
      var code = (v00 >= c ? 1 : 0) | (v10 >= c ? 2 : 0) | (v11 >= c ? 4 : 0) | (v01 >= c ? 8 : 0);
      if (code === 0 || code === 15) continue;
      var B = function () { return edge(2 * k, i, j, i + 1, j); };
      var T = function () { return edge(2 * (k + N), i, j + 1, i + 1, j + 1); };
      var Lf = function () { return edge(2 * k + 1, i, j, i, j + 1); };
      var R = function () { return edge(2 * (k + 1) + 1, i + 1, j, i + 1, j + 1); };
      var pairs;
      var centreHigh = (v00 + v10 + v11 + v01) / 4 >= c;
      switch (code) {
        case 1: case 14: pairs = [[Lf, B]]; break;
        case 2: case 13: pairs = [[B, R]]; break;
        case 3: case 12: pairs = [[Lf, R]]; break;
        case 4: case 11: pairs = [[R, T]]; break;
        case 6: case 9: pairs = [[B, T]]; break;
        case 7: case 8: pairs = [[Lf, T]]; break;
        case 5: pairs = centreHigh ? [[B, R], [Lf, T]] : [[Lf, B], [R, T]]; break;
        case 10: pairs = centreHigh ? [[Lf, B], [R, T]] : [[B, R], [Lf, T]]; break;
      }
      cells.add(k);
      for (var p = 0; p < pairs.length; p++) {
        var a = pairs[p][0](), b = pairs[p][1]();
        if (a >= 0 && b >= 0) segments.push([a, b]);
      }
    }
    return {points: points, segments: segments, dropped: dropped, cells: cells};
  };

  // Points where both terms equal their value at x*: 2D Newton from every cell both curves cross.
  Explorer.prototype.intersections = function (ta, ca, tb, cb, cellsA, cellsB) {
    var m = this.model, N = GRID, E = this.E, h = this.h, target = this.tol / 100, found = [];
    cellsA.forEach(function (k) {
      if (!cellsB.has(k)) return;
      var i = k % N, j = (k - i) / N, x = -E + (i + 0.5) * h, y = -E + (j + 0.5) * h, x0 = x, y0 = y, ok = false;
      for (var it = 0; it <= NEWTON_STEPS; it++) {
        var A = valueGrad(m, ta, x, y), Bv = valueGrad(m, tb, x, y), ra = A[0] - ca, rb = Bv[0] - cb;
        if (Math.abs(ra) < target && Math.abs(rb) < target) { ok = true; break; }
        var det = A[1] * Bv[2] - A[2] * Bv[1];
        if (it === NEWTON_STEPS || !(Math.abs(det) > 1e-300)) break;
        var dx = -(Bv[2] * ra - A[2] * rb) / det, dy = -(-Bv[1] * ra + A[1] * rb) / det, len = Math.hypot(dx, dy);
        if (len > h) { dx *= h / len; dy *= h / len; }
        x += dx; y += dy;
      }
      if (!ok || Math.abs(x) > E || Math.abs(y) > E || Math.hypot(x - x0, y - y0) > 2 * h) return;
      for (var q = 0; q < found.length; q++) if (Math.hypot(found[q][0] - x, found[q][1] - y) < h / 4) return;
      found.push([x, y]);
    });
    return found;
  };

  Explorer.prototype.compute = function () {
    var m = this.model, x = this.xStar[0], y = this.xStar[1], terms = this.terms, self = this;
    var values = terms.map(function (t) { return valueAt(m, t, x, y); });
    var res = {values: values, curves: [], points: [], dropped: 0, note: ""};
    var constant = terms.filter(function (t) { return t.kind === "unit" && !self.isLive(t.layer, t.index); });
    if (terms.length === 2 && terms[0].index === terms[1].index) {
      res.note = "choose two different units: one unit twice is the one-unit objective";
    } else if (constant.length) {
      res.note = "this unit is constant on the plane: its invariant set is the whole plane";
    } else {
      for (var t = 0; t < terms.length; t++) {
        var cnt = this.contour(this.fields[t], terms[t], values[t]);
        res.curves.push(cnt); res.dropped += cnt.dropped;
      }
      res.points = terms.length === 1 ? res.curves[0].points :
        this.intersections(terms[0], values[0], terms[1], values[1], res.curves[0].cells, res.curves[1].cells);
    }
    this.result = res;
    this.computeBand();
  };

  // the eps band on the grid (its share of the plane) and in the picture
  Explorer.prototype.computeBand = function () {
    var vals = this.result.values, eps = this.eps, nt = this.terms.length, i, t, inBand;
    var n = 0, total = GRID * GRID;
    for (i = 0; i < total; i++) {
      inBand = true;
      for (t = 0; t < nt; t++) if (!(Math.abs(this.fields[t][i] - vals[t]) < eps)) { inBand = false; break; }
      if (inBand) n++;
    }
    this.bandFraction = n / total;
    var img = this.image.data, base = this.base;
    for (i = 0; i < PS * PS; i++) {
      inBand = true;
      for (t = 0; t < nt; t++) if (!(Math.abs(this.pixelFields[t][i] - vals[t]) < eps)) { inBand = false; break; }
      var w = inBand ? 0.65 : 0; // the band: 65 % towards white
      img[4 * i] = base[4 * i] + w * (255 - base[4 * i]);
      img[4 * i + 1] = base[4 * i + 1] + w * (255 - base[4 * i + 1]);
      img[4 * i + 2] = base[4 * i + 2] + w * (255 - base[4 * i + 2]);
      img[4 * i + 3] = 255;
    }
    this.offCtx.putImageData(this.image, 0, 0);
  };

  Explorer.prototype.clickAt = function (x, y) {
    x = Number(x); y = Number(y);
    if (!isFinite(x) || !isFinite(y) || Math.abs(x) > this.E || Math.abs(y) > this.E) {
      throw new RangeError("x* must be a point of the plane [-" + this.E + ", " + this.E + "]^2, got (" + x + ", " + y + ")");
    }
    this.xStar = [x, y];
    this.update();
    return this.state();
  };

  Explorer.prototype.update = function (bandOnly) {
    if (!this.xStar) return;
    if (bandOnly && this.result) this.computeBand(); else this.compute();
    this.draw();
    this.showReadout();
  };

  // ------------------------------------------------------------------ drawing

  Explorer.prototype.toCanvas = function (x, y) {
    return [PL + (x + this.E) / (2 * this.E) * PS, PT + (this.E - y) / (2 * this.E) * PS];
  };

  Explorer.prototype.eventToPlane = function (e) {
    var rect = this.canvas.getBoundingClientRect();
    var cx = (e.clientX - rect.left) * CW / rect.width, cy = (e.clientY - rect.top) * CH / rect.height;
    if (cx < PL || cx > PL + PS || cy < PT || cy > PT + PS) return null;
    return [-this.E + (cx - PL) / PS * 2 * this.E, this.E - (cy - PT) / PS * 2 * this.E];
  };

  Explorer.prototype.draw = function () {
    var ctx = this.ctx, E = this.E, self = this, res = this.result;
    ctx.save();
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, CW, CH);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.off, PL, PT, PS, PS);
    ctx.beginPath(); ctx.rect(PL, PT, PS, PS); ctx.clip();
    // the true class boundary, the unit circle
    var o = this.toCanvas(0, 0), r = PS / (2 * E);
    ctx.setLineDash([5, 4]); ctx.strokeStyle = COLORS.circle; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.arc(o[0], o[1], r, 0, 2 * Math.PI); ctx.stroke(); ctx.setLineDash([]);
    // level curves: IS(x*) (one term), or both terms' level curves (two units)
    res.curves.forEach(function (cnt, ci) {
      var path = function () {
        ctx.beginPath();
        cnt.segments.forEach(function (s) {
          var a = self.toCanvas(cnt.points[s[0]][0], cnt.points[s[0]][1]), b = self.toCanvas(cnt.points[s[1]][0], cnt.points[s[1]][1]);
          ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]);
        });
      };
      ctx.lineCap = "round";
      path(); ctx.strokeStyle = COLORS.halo; ctx.lineWidth = 3; ctx.stroke();
      path(); ctx.strokeStyle = ci === 0 ? COLORS.curve : COLORS.curveB; ctx.lineWidth = 1.6; ctx.stroke();
    });
    // chapter 1's samples and queries
    var ch = this.data.chapter;
    if (ch && this.el("samples").checked) {
      ctx.fillStyle = COLORS.manifold;
      (this.data.manifold || []).forEach(function (p) {
        var c = self.toCanvas(p[0], p[1]);
        ctx.fillRect(c[0] - 1, c[1] - 1, 2, 2);
      });
      ctx.strokeStyle = "#000000"; ctx.lineWidth = 0.6;
      ch.samples.forEach(function (pts, qi) {
        ctx.fillStyle = sampleColour(qi);
        pts.forEach(function (p) {
          var c = self.toCanvas(p[0], p[1]);
          ctx.beginPath(); ctx.arc(c[0], c[1], 2.6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
        });
      });
      ch.queries.forEach(function (q, i) {
        var c = self.toCanvas(q[0], q[1]);
        ctx.strokeStyle = "#000000"; ctx.lineWidth = 4; cross(ctx, c, 6);
        ctx.strokeStyle = COLORS.query; ctx.lineWidth = 2; cross(ctx, c, 6);
        ctx.font = "bold 12px sans-serif"; ctx.fillStyle = sampleColour(i); ctx.strokeStyle = "#000000"; ctx.lineWidth = 3;
        ctx.strokeText("Q" + (i + 1), c[0] + 7, c[1] - 6); ctx.fillText("Q" + (i + 1), c[0] + 7, c[1] - 6);
      });
    }
    // the invariant points of two units
    if (this.terms.length === 2) {
      res.points.forEach(function (p) {
        var c = self.toCanvas(p[0], p[1]);
        ctx.beginPath(); ctx.moveTo(c[0], c[1] - 9); ctx.lineTo(c[0] + 9, c[1]); ctx.lineTo(c[0], c[1] + 9); ctx.lineTo(c[0] - 9, c[1]);
        ctx.closePath(); ctx.fillStyle = COLORS.point; ctx.fill(); ctx.strokeStyle = "#000000"; ctx.lineWidth = 1.5; ctx.stroke();
      });
    }
    // x*
    var s = this.toCanvas(this.xStar[0], this.xStar[1]);
    ctx.beginPath(); ctx.arc(s[0], s[1], 4.5, 0, 2 * Math.PI);
    ctx.fillStyle = COLORS.star; ctx.fill(); ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2; ctx.stroke();
    ctx.restore();
    this.drawAxes();
    this.drawColourBar();
  };

  function sampleColour(i) { return COLORS.samples[i % COLORS.samples.length]; }

  function cross(ctx, c, r) {
    ctx.beginPath(); ctx.moveTo(c[0] - r, c[1]); ctx.lineTo(c[0] + r, c[1]); ctx.moveTo(c[0], c[1] - r); ctx.lineTo(c[0], c[1] + r); ctx.stroke();
  }

  Explorer.prototype.drawAxes = function () {
    var ctx = this.ctx, E = this.E;
    ctx.save();
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 1; ctx.strokeRect(PL, PT, PS, PS);
    ctx.fillStyle = "#000000"; ctx.font = "12px sans-serif";
    for (var v = Math.ceil(-E); v <= Math.floor(E); v++) {
      var px = this.toCanvas(v, 0)[0], py = this.toCanvas(0, v)[1];
      ctx.beginPath(); ctx.moveTo(px, PT + PS); ctx.lineTo(px, PT + PS + 5); ctx.moveTo(PL - 5, py); ctx.lineTo(PL, py); ctx.stroke();
      ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText(String(v), px, PT + PS + 7);
      ctx.textAlign = "right"; ctx.textBaseline = "middle"; ctx.fillText(String(v), PL - 8, py);
    }
    ctx.font = "italic 14px serif";
    ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText("x\u2081", PL + PS / 2, PT + PS + 24);
    ctx.translate(PL - 38, PT + PS / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = "middle"; ctx.fillText("x\u2082", 0, 0);
    ctx.restore();
  };

  Explorer.prototype.drawColourBar = function () {
    var ctx = this.ctx, lo = this.range[0], hi = this.range[1], self = this;
    var yOf = function (v) { return PT + PS - (v - lo) / (hi - lo) * PS; };
    ctx.save();
    for (var py = 0; py < PS; py++) {
      var c = colormap(1 - (py + 0.5) / PS);
      ctx.fillStyle = "rgb(" + Math.round(c[0]) + "," + Math.round(c[1]) + "," + Math.round(c[2]) + ")";
      ctx.fillRect(CBX, PT + py, CBW, 1);
    }
    // the eps band and the value at x* on the bar (the first term)
    var v0 = this.result.values[0];
    var b0 = Math.max(lo, v0 - this.eps), b1 = Math.min(hi, v0 + this.eps);
    if (b1 > b0) { ctx.fillStyle = "rgba(255,255,255,0.6)"; ctx.fillRect(CBX, yOf(b1), CBW, Math.max(1, yOf(b0) - yOf(b1))); }
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 1; ctx.strokeRect(CBX, PT, CBW, PS);
    if (v0 >= lo && v0 <= hi) {
      var yv = yOf(v0);
      ctx.strokeStyle = COLORS.curve; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(CBX - 4, yv); ctx.lineTo(CBX + CBW, yv); ctx.stroke();
      ctx.fillStyle = "#000000"; ctx.beginPath(); ctx.moveTo(CBX - 2, yv); ctx.lineTo(CBX - 9, yv - 5); ctx.lineTo(CBX - 9, yv + 5); ctx.fill();
    }
    ctx.fillStyle = "#000000"; ctx.font = "11px sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 1;
    for (var k = 0; k <= 4; k++) {
      var v = lo + (hi - lo) * k / 4, y = yOf(v);
      ctx.beginPath(); ctx.moveTo(CBX + CBW, y); ctx.lineTo(CBX + CBW + 4, y); ctx.stroke();
      ctx.fillText(self.terms[0].kind === "p" ? v.toFixed(2) : v.toPrecision(3), CBX + CBW + 6, y);
    }
    ctx.font = "12px sans-serif"; ctx.textAlign = "center";
    ctx.translate(CBX + CBW + 52, PT + PS / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(termLabel(this.terms[0]), 0, 0);
    ctx.restore();
  };

  // ------------------------------------------------------------------ the text beside the picture

  function fmt(v) { return v.toFixed(6); }

  Explorer.prototype.showReadout = function () {
    var res = this.result, terms = this.terms, x = this.xStar;
    var label = terms.map(function (t) { return termName(t).replace("(x)", "(x*)"); }).join(", ");
    this.el("value-label").textContent = label;
    this.el("value").textContent = res.values.map(fmt).join(", ");
    var where = "x* = (" + x[0].toFixed(3) + ", " + x[1].toFixed(3) + "). ";
    var text;
    if (res.note) text = where + res.note + ".";
    else if (terms.length === 1) {
      text = where + "IS(x*) is drawn in red: " + res.points.length + " points on " + res.curves[0].segments.length +
        " segments, each refined until |" + termName(terms[0]) + " \u2212 " + label + "| < " + this.tol.toExponential(0) +
        (res.dropped ? " (" + res.dropped + " grid crossings that did not converge are left out)" : "") + ".";
    } else {
      text = where + "The red and blue curves are the two units' level curves through x*; IS(x*) is where they cross: " +
        res.points.length + " point" + (res.points.length === 1 ? "" : "s") + " (white diamonds), each with both units within " +
        this.tol.toExponential(0) + " of their values at x*.";
    }
    text += " The \u03b5 band (pale) covers " + (100 * this.bandFraction).toFixed(1) + " % of the plane.";
    this.el("readout").textContent = text;
  };

  Explorer.prototype.hover = function (p) {
    var out = this.el("hover");
    if (!out) return;
    if (!p) { out.textContent = "\u00a0"; return; }
    var m = this.model, logit = m.forward(p[0], p[1]);
    var parts = this.terms.map(function (t) { return termName(t).replace("(x)", "") + " = " + termValue(m, t, logit).toFixed(4); });
    out.textContent = "pointer at (" + p[0].toFixed(3) + ", " + p[1].toFixed(3) + "): " + parts.join(", ");
  };

  Explorer.prototype.state = function () {
    var res = this.result, terms = this.terms;
    var units = terms[0].kind === "p" ? [] : terms.map(function (t) { return t.index; });
    var copy = function (pts) { return pts.map(function (p) { return [p[0], p[1]]; }); };
    return {
      objective: this.objective,
      layer: terms[0].kind === "p" ? null : terms[0].layer,
      units: units,
      x_star: [this.xStar[0], this.xStar[1]],
      value: terms.length === 1 ? res.values[0] : res.values.slice(),
      curve_points: copy(res.points),
      curves: res.curves.map(function (c) { return copy(c.points); }),
      dropped: res.dropped,
      note: res.note,
      epsilon: this.eps,
      band_fraction: this.bandFraction,
      tolerance: this.tol
    };
  };

  Explorer.prototype.api = function () {
    var self = this;
    return {
      clickAt: function (x, y) { return self.clickAt(x, y); },
      state: function () { return self.state(); },
      toPixel: function (x, y) {
        var c = self.toCanvas(x, y), rect = self.canvas.getBoundingClientRect();
        return {x: c[0] * rect.width / CW, y: c[1] * rect.height / CH};
      },
      model: self.model
    };
  };

  // ------------------------------------------------------------------ start

  function start() {
    var root = document.getElementById("equidiff-explorer");
    if (!root) return; // another page of the book
    var data = window.EQUIDIFF_EXPLORER;
    if (!data || !data.model) {
      root.insertAdjacentHTML("afterbegin", "<p><strong>The explorer's data is missing</strong>: _static/explorer_data.js " +
        "was not written by this build (python -m equidiff.report.explorer --book book writes it).</p>");
      return;
    }
    window.equidiffExplorer = new Explorer(root, data).api();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
