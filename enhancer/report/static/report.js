/* enhancer report: the gallery (filters, sort, pages, sample view with keyboard navigation) and the rejected table.
 *
 * Hand-written, no dependencies, no network: it runs from file://. Sample records come in pages of config.chunk_size
 * as data/chunk-NNNNN.js scripts that call ENHANCER_REPORT.chunk(k, columns) (browsers refuse fetch() of file://
 * URLs but load scripts from there). Without a filter or a sort only the chunks of the page on screen are loaded;
 * a filter or a sort loads them all once. document.body.dataset.state is "loading" while the gallery updates and
 * "ready" once it shows the result.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("report-config").textContent);
  var records = new Array(config.n_selected); // by gallery position (the order of the selection)
  var waiters = {};
  var promises = {};
  var state = { label: "", pred: "", result: "", ranges: {}, sort: "", page: 0, view: null, open: -1 };
  var updates = 0;
  var $ = function (id) { return document.getElementById(id); };

  window.ENHANCER_REPORT = {
    chunk: function (k, columns) {
      ingest(k, columns);
      if (waiters[k]) waiters[k]();
    },
    rejected: function (rows) { showRejected(rows); },
  };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function loadScript(src, onError) {
    var s = el("script", { src: src });
    s.onerror = onError;
    document.head.appendChild(s);
  }

  function loadChunk(k) {
    if (!promises[k]) {
      promises[k] = new Promise(function (resolve, reject) {
        waiters[k] = resolve;
        var src = "data/chunk-" + String(k).padStart(5, "0") + ".js";
        loadScript(src, function () { reject(new Error("cannot load " + src)); });
      });
    }
    return promises[k];
  }

  function loadRange(a, b) {
    var wanted = [];
    for (var k = Math.floor(a / config.chunk_size); k * config.chunk_size < b && k < config.n_chunks; k++) {
      wanted.push(loadChunk(k));
    }
    return Promise.all(wanted);
  }

  function ingest(k, c) {
    for (var j = 0; j < c.pos.length; j++) {
      var r = {
        at: k * config.chunk_size + j, pos: c.pos[j], index: c.index[j], label: c.label[j], pred: c.pred[j],
        prob: c.prob[j], good: c.good[j] === 1, path: c.path[j], orig: c.orig[j], box: c.box ? c.box[j] : null, m: {},
      };
      r.conf = r.prob[r.pred];
      config.metrics.forEach(function (name) { r.m[name] = c.m[name][j]; });
      records[r.at] = r;
    }
  }

  /* ---- filters and sort ---------------------------------------------------------------------------------- */

  function plain() {
    var ranged = Object.keys(state.ranges).some(function (name) {
      return state.ranges[name].min !== null || state.ranges[name].max !== null;
    });
    return !state.label && !state.pred && !state.result && !state.sort && !ranged;
  }

  function matches(r) {
    if (state.label !== "" && r.label !== Number(state.label)) return false;
    if (state.pred !== "" && r.pred !== Number(state.pred)) return false;
    if (state.result === "correct" && r.label !== r.pred) return false;
    if (state.result === "wrong" && r.label === r.pred) return false;
    if (state.result === "good" && !r.good) return false;
    return Object.keys(state.ranges).every(function (name) {
      var b = state.ranges[name];
      var v = r.m[name];
      if (b.min === null && b.max === null) return true;
      if (v === null || v === undefined) return false;
      return (b.min === null || v >= b.min) && (b.max === null || v <= b.max);
    });
  }

  function sortValue(r, key) {
    var v = key === "conf" ? r.conf : r.m[key];
    return v === null || v === undefined ? null : v;
  }

  function sortView(view) {
    if (!state.sort) return view;
    var parts = state.sort.split(":");
    var sign = parts[1] === "asc" ? 1 : -1;
    return view.sort(function (a, b) {
      var va = sortValue(records[a], parts[0]);
      var vb = sortValue(records[b], parts[0]);
      if (va === null || vb === null) return (va === null) - (vb === null) || a - b; // undefined values last
      return sign * (va - vb) || a - b;
    });
  }

  function update(keepPage) {
    var token = ++updates;
    document.body.dataset.state = "loading";
    if (!keepPage) state.page = 0;
    var ready = plain() ? Promise.resolve() : loadAll();
    return ready.then(function () {
      if (token !== updates) return;
      state.view = plain() ? null : sortView(records.map(function (r) { return r.at; }).filter(function (at) {
        return matches(records[at]);
      }));
      return render(token);
    }).catch(fail);
  }

  function loadAll() { return loadRange(0, config.n_selected); }
  function viewLength() { return state.view ? state.view.length : config.n_selected; }
  function viewAt(k) { return state.view ? state.view[k] : k; }

  function fail(err) {
    document.body.dataset.state = "error";
    $("status").appendChild(el("strong", { class: "error" }, " " + err.message));
    throw err;
  }

  /* ---- gallery ------------------------------------------------------------------------------------------- */

  function thumb(pos, kind) {
    var folder = String(Math.floor(pos / config.per_folder)).padStart(3, "0");
    return "thumbs/" + folder + "/" + pos + (kind === "card" ? ".card.jpg" : ".jpg");
  }

  function fmt(v, digits) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(digits); }

  function card(k) {
    var r = records[viewAt(k)];
    var right = r.label === r.pred || r.label < 0;  // multi-label (-1): no single label to be wrong about
    var a = el("a", {
      class: "card " + (right ? "correct" : "wrong"), href: "#sample=" + r.pos, "data-k": k, "data-pos": r.pos,
      "data-label": r.label, "data-pred": r.pred, "data-conf": r.conf,
    });
    if (config.panels.length) {
      a.appendChild(el("img", { src: thumb(r.pos, "card"), alt: r.path, loading: "lazy", width: config.card_px }));
    }
    // a multi-label sample has no single label (-1): its title is the most probable class
    var title = r.label < 0 ? "top: " + config.classes[r.pred]
      : config.classes[r.label] + (right ? "" : " \u2192 " + config.classes[r.pred]);
    a.appendChild(el("span", { class: "title" }, title));
    a.appendChild(el("span", { class: "prob" }, fmt(r.conf, 4)));
    if (!right) a.appendChild(el("span", { class: "badge wrong" }, "wrong"));
    if (r.good) a.appendChild(el("span", { class: "badge good" }, "Good"));
    a.appendChild(el("span", { class: "path" }, r.path.split("/").pop()));
    config.range_metrics.forEach(function (name) {
      a.appendChild(el("span", { class: "metric" }, name.replace("_", " ") + " " + fmt(r.m[name], 3)));
    });
    a.addEventListener("click", function (ev) { ev.preventDefault(); openSample(k); });
    return a;
  }

  function render(token) {
    var n = viewLength();
    var pages = Math.max(1, Math.ceil(n / config.page_size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var a = state.page * config.page_size;
    var b = Math.min(n, a + config.page_size);
    var ready = state.view || n === 0 ? Promise.resolve() : loadRange(a, b);
    return ready.then(function () {
      if (token !== undefined && token !== updates) return;
      var cards = [];
      for (var k = a; k < b; k++) cards.push(card(k));
      $("cards").replaceChildren.apply($("cards"), cards);
      $("match-count").textContent = n;
      $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
      $("pager-prev").disabled = state.page === 0;
      $("pager-next").disabled = state.page >= pages - 1;
      document.body.dataset.state = "ready";
    });
  }

  function buttonGroup(name, caption, choices) {
    var group = el("div", { class: "filter", role: "group", "aria-label": caption });
    group.appendChild(el("span", { class: "caption" }, caption));
    choices.forEach(function (choice) {
      var b = el("button", { type: "button", id: "filter-" + name + "-" + (choice[0] || "all"), "data-value": choice[0] });
      b.textContent = choice[1];
      b.setAttribute("aria-pressed", String(choice[0] === ""));
      b.addEventListener("click", function () {
        state[name] = choice[0];
        group.querySelectorAll("button").forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        update();
      });
      group.appendChild(b);
    });
    return group;
  }

  function rangeInputs(name) {
    var box = el("label", { class: "filter range" });
    box.appendChild(el("span", { class: "caption" }, name.replace("_", " ")));
    state.ranges[name] = { min: null, max: null };
    ["min", "max"].forEach(function (bound) {
      var input = el("input", { type: "number", id: "range-" + name + "-" + bound, step: "0.01", min: "0", max: "1",
        placeholder: bound, "aria-label": name + " " + bound });
      input.addEventListener("change", function () {
        state.ranges[name][bound] = input.value === "" ? null : Number(input.value);
        update();
      });
      box.appendChild(input);
    });
    return box;
  }

  function sortSelect() {
    var box = el("label", { class: "filter" });
    box.appendChild(el("span", { class: "caption" }, "Sort"));
    var select = el("select", { id: "sort" });
    var options = [["", "dataset order"], ["conf:desc", "probability, high first"], ["conf:asc", "probability, low first"]];
    config.range_metrics.forEach(function (m) {
      options.push([m + ":desc", m.replace("_", " ") + ", high first"]);
      options.push([m + ":asc", m.replace("_", " ") + ", low first"]);
    });
    options.forEach(function (o) { select.appendChild(el("option", { value: o[0] }, o[1])); });
    select.addEventListener("change", function () { state.sort = select.value; update(); });
    box.appendChild(select);
    return box;
  }

  function buildControls() {
    var classes = config.classes.map(function (name, k) { return [String(k), name]; });
    var filters = $("filters");
    filters.appendChild(buttonGroup("label", "True class", [["", "all"]].concat(classes)));
    filters.appendChild(buttonGroup("pred", "Predicted", [["", "all"]].concat(classes)));
    filters.appendChild(buttonGroup("result", "Result", [["", "all"], ["correct", "correct"], ["wrong", "wrong"],
      ["good", "Good (\u2265 " + config.good + ")"]]));
    config.range_metrics.forEach(function (m) { filters.appendChild(rangeInputs(m)); });
    filters.appendChild(sortSelect());
    $("selected-count").textContent = config.n_selected;
    var pager = $("pager");
    var prev = el("button", { type: "button", id: "pager-prev" }, "\u2190 previous page");
    var next = el("button", { type: "button", id: "pager-next" }, "next page \u2192");
    prev.addEventListener("click", function () { state.page -= 1; document.body.dataset.state = "loading"; render(); });
    next.addEventListener("click", function () { state.page += 1; document.body.dataset.state = "loading"; render(); });
    pager.appendChild(prev);
    pager.appendChild(el("span", { id: "page-info" }));
    pager.appendChild(next);
  }

  /* ---- sample view --------------------------------------------------------------------------------------- */

  function buildModal() {
    var modal = el("div", { id: "sample", class: "modal", role: "dialog", "aria-modal": "true", "aria-labelledby": "sample-title" });
    modal.hidden = true;
    var box = el("div", { class: "modal-box" });
    var head = el("div", { class: "modal-head" });
    head.appendChild(el("h2", { id: "sample-title" }));
    [["sample-prev", "\u2190 previous"], ["sample-next", "next \u2192"], ["sample-close", "close (Esc)"]].forEach(function (b) {
      head.appendChild(el("button", { type: "button", id: b[0] }, b[1]));
    });
    box.appendChild(head);
    if (config.panels.length) {
      var figure = el("figure", { class: "strip" });
      figure.appendChild(el("img", { id: "sample-strip", alt: "" }));
      var captions = el("figcaption", { style: "grid-template-columns: repeat(" + config.panels.length + ", 1fr)" });
      config.panels.forEach(function (p) { captions.appendChild(el("span", {}, p[1])); });
      figure.appendChild(captions);
      box.appendChild(figure);
    }
    box.appendChild(el("table", { id: "sample-fields" }));
    modal.appendChild(box);
    document.body.appendChild(modal);
    modal.addEventListener("click", function (ev) { if (ev.target === modal) closeSample(); });
    $("sample-prev").addEventListener("click", function () { step(-1); });
    $("sample-next").addEventListener("click", function () { step(1); });
    $("sample-close").addEventListener("click", closeSample);
  }

  function fieldRows(r) {
    var rows = [
      ["path", r.path, "sample-path"],
      ["dataset position", r.pos],
      ["scan index", r.index],
      ["true class", r.label < 0 ? "multi-label" : config.classes[r.label], "sample-label"],
      ["predicted class", config.classes[r.pred], "sample-pred"],
      ["probability of the prediction", fmt(r.conf, 4), "sample-prob"],
      ["result", (r.label === r.pred ? "correct" : "wrong") + (r.good ? ", Good" : "")],
    ];
    config.classes.forEach(function (name, c) { rows.push(["probability " + name, fmt(r.prob[c], 4)]); });
    rows.push(["original size (h \u00d7 w)", r.orig[0] + " \u00d7 " + r.orig[1]]);
    if (r.box) {
      var b = r.box;
      rows.push(["crop box x0, y0, x1, y1", b.join(", ") + "  (" + (b[2] - b[0]) + " \u00d7 " + (b[3] - b[1]) + " px)", "sample-box"]);
    }
    config.metrics.forEach(function (m) {
      var v = r.m[m];
      var shown = m.slice(-4) === "_hit" ? ({ 1: "hit", 0: "miss" }[v] || "undefined") : fmt(v, 4);
      rows.push([m.replace("_", " "), shown]);
    });
    return rows;
  }

  function openSample(k) {
    var n = viewLength();
    if (n === 0) return Promise.resolve();
    k = Math.min(Math.max(0, k), n - 1);
    state.open = k;
    var at = viewAt(k);
    return loadRange(at, at + 1).then(function () {
      var r = records[at];
      $("sample-title").textContent = (k + 1) + " of " + n + ": " + r.path.split("/").pop();
      if (config.panels.length) {
        $("sample-strip").src = thumb(r.pos, "strip");
        $("sample-strip").alt = r.path;
      }
      var table = $("sample-fields");
      table.replaceChildren.apply(table, fieldRows(r).map(function (row) {
        var tr = el("tr");
        tr.appendChild(el("th", {}, row[0]));
        tr.appendChild(el("td", row[2] ? { id: row[2] } : {}, row[1]));
        return tr;
      }));
      $("sample-prev").disabled = k === 0;
      $("sample-next").disabled = k === n - 1;
      $("sample").hidden = false;
      history.replaceState(null, "", "#sample=" + r.pos);
      var page = Math.floor(k / config.page_size);
      if (page !== state.page) {
        state.page = page;
        return render();
      }
    });
  }

  function step(delta) {
    if (state.open >= 0) openSample(state.open + delta);
  }

  function closeSample() {
    $("sample").hidden = true;
    state.open = -1;
    history.replaceState(null, "", "#gallery");
  }

  document.addEventListener("keydown", function (ev) {
    if (state.open < 0 || /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) return;
    if (ev.key === "ArrowRight" || ev.key === "j") step(1);
    else if (ev.key === "ArrowLeft" || ev.key === "k") step(-1);
    else if (ev.key === "Escape") closeSample();
    else return;
    ev.preventDefault();
  });

  /* ---- rejected table ------------------------------------------------------------------------------------ */

  var SHOWN_REJECTED = 1000;

  function showRejected(rows) {
    var body = document.querySelector("#rejected-table tbody");
    var more = $("rejected-more");
    function fill(limit) {
      body.replaceChildren.apply(body, rows.slice(0, limit).map(function (row) {
        var tr = el("tr");
        row.forEach(function (cell) { tr.appendChild(el("td", {}, cell)); });
        return tr;
      }));
      more.hidden = rows.length <= limit;
    }
    more.textContent = "show all " + rows.length + " rows";
    more.addEventListener("click", function () { fill(rows.length); });
    fill(SHOWN_REJECTED);
  }

  /* ---- start --------------------------------------------------------------------------------------------- */

  buildControls();
  buildModal();
  loadScript("data/rejected.js", function () { fail(new Error("cannot load data/rejected.js")); });
  var wanted = /^#sample=(\d+)$/.exec(location.hash);
  update().then(function () {
    if (!wanted) return;
    var pos = Number(wanted[1]);
    return loadAll().then(function () {
      var hit = records.filter(function (r) { return r.pos === pos; })[0];
      if (hit) return openSample(hit.at);
    });
  });
})();
