/* Concept explorer viewer: plain JavaScript, no dependencies, works from file://.
 * data/index.js defines window.EXPLORER_INDEX = {meta, rows}; latent pages load data/chunk_<k>.js,
 * which call EXPLORER_CHUNK(k, records). */
"use strict";
var Explorer = (function () {
  var DATA = window.EXPLORER_INDEX, META = DATA.meta, COLS = META.columns;
  var COL = {}; COLS.forEach(function (c, i) { COL[c.key] = i; });
  var STATE_KEY = "explorer-index:" + META.title;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(v, type, digits) {
    if (v === null || v === undefined) return "–";
    if (type === "pct") return (100 * v).toFixed(digits === undefined ? 1 : digits) + "%";
    if (type === "num") return Number(v).toFixed(digits === undefined ? 3 : digits);
    if (type === "class") return esc(META.class_names[v] === undefined ? v : META.class_names[v]);
    return esc(v);
  }
  function el(id) { return document.getElementById(id); }

  /* A sprite cell as an <img> clipped by its box: ref = [book, slot], size in CSS pixels. */
  function thumb(ref, size, title) {
    if (!ref) return "";
    var b = META.books[ref[0]], slot = ref[1], per = b.cols * b.cols;
    var sheet = Math.floor(slot / per), pos = slot % per;
    var inSheet = Math.min(per, b.count - sheet * per), across = inSheet > b.cols ? b.cols : inSheet;
    var x = (pos % b.cols) * size, y = Math.floor(pos / b.cols) * size;
    return '<span class="thumb" style="width:' + size + "px;height:" + size + 'px"' +
      (title ? ' title="' + esc(title) + '"' : "") + '><img alt="" src="sprites/' + b.files[sheet] +
      '" style="width:' + across * size + "px;left:" + -x + "px;top:" + -y + 'px"></span>';
  }
  function tagHtml(t) {
    if (t === null || t === undefined) return "–";
    var base = String(t).split(":")[0];
    return '<span class="tag tag-' + esc(base) + '">' + esc(t) + "</span>";
  }
  function cell(row, c) {
    var v = row[COL[c.key]];
    if (c.type === "latent") return '<a href="latent.html#' + v + '">' + v + "</a>";
    if (c.type === "tag") return tagHtml(v);
    if (c.type === "thumb") return thumb(v, 28);
    return fmt(v, c.type, c.digits);
  }

  /* ---------------- index page ---------------- */
  function index() {
    var rows = DATA.rows, state = {sort: META.default_sort || COLS[0].key, dir: META.default_dir || 1, page: 0,
                                   size: 100, tag: "", min: "", max: "", cls: "", model: "", search: ""};
    try { Object.assign(state, JSON.parse(sessionStorage.getItem(STATE_KEY) || "{}")); } catch (e) { /* fresh */ }
    document.title = META.title;
    el("head").innerHTML = "<h1>" + esc(META.title) + '</h1><p class="sub">' + esc(META.subtitle || "") + "</p>";
    el("foot").innerHTML = '<p class="sub">' + (META.links || []).map(function (l) {
      return '<a href="' + esc(l.href) + '">' + esc(l.label) + "</a>";
    }).join(" · ") + (META.notes ? " " + esc(META.notes) : "") + "</p>";
    (META.tag_values || []).forEach(function (t) { el("f-tag").add(new Option(t, t)); });
    (META.class_names || []).forEach(function (n, i) { el("f-class").add(new Option(n, String(i))); });
    if (META.model_filter) META.models.forEach(function (m) { el("f-model").add(new Option(m, m)); });
    else el("f-model-label").style.display = "none";
    if (META.range_filter) el("f-range-name").textContent = META.range_filter.label;
    else el("f-range-label").style.display = "none";
    var head = "<tr>" + COLS.map(function (c) {
      return '<th data-key="' + c.key + '" class="' + (c.type === "text" || c.type === "tag" || c.type === "class" ? "text" : "") +
        '" title="' + esc(c.title || "") + '">' + esc(c.label) + "</th>";
    }).join("") + "</tr>";
    el("table").tHead.innerHTML = head;
    var inputs = {tag: "f-tag", min: "f-min", max: "f-max", cls: "f-class", model: "f-model", search: "f-search"};
    Object.keys(inputs).forEach(function (k) {
      var node = el(inputs[k]);
      node.value = state[k];
      node.addEventListener("input", function () { state[k] = node.value; state.page = 0; render(); });
    });
    el("p-size").value = String(state.size);
    el("p-size").addEventListener("change", function () { state.size = +el("p-size").value; state.page = 0; render(); });
    el("f-reset").addEventListener("click", function () {
      Object.keys(inputs).forEach(function (k) { state[k] = ""; el(inputs[k]).value = ""; });
      state.page = 0; render();
    });
    el("table").tHead.addEventListener("click", function (ev) {
      var th = ev.target.closest("th");
      if (!th) return;
      var key = th.getAttribute("data-key");
      state.dir = state.sort === key ? -state.dir : (COLS[COL[key]].type === "latent" ? 1 : -1);
      state.sort = key; state.page = 0; render();
    });
    el("p-prev").addEventListener("click", function () { state.page -= 1; render(); });
    el("p-next").addEventListener("click", function () { state.page += 1; render(); });

    function filtered() {
      var lo = state.min === "" ? -Infinity : +state.min, hi = state.max === "" ? Infinity : +state.max;
      var rk = META.range_filter ? COL[META.range_filter.key] : -1;
      var tk = COL.tag, ck = COL[META.class_key || "dominant"], mk = META.model_filter ? COL[META.model_filter] : -1;
      var ids = null;
      var q = state.search.trim();
      if (q.indexOf(",") >= 0) { ids = {}; q.split(",").forEach(function (s) { if (s.trim()) ids[s.trim()] = 1; }); }
      return rows.filter(function (r) {
        if (state.tag && String(r[tk]).split(":")[0] !== state.tag && r[tk] !== state.tag) return false;
        if (rk >= 0 && (state.min !== "" || state.max !== "")) {
          var v = r[rk];
          if (v === null || v < lo || v > hi) return false;
        }
        if (state.cls !== "" && String(r[ck]) !== state.cls) return false;
        if (mk >= 0 && state.model && r[mk] !== state.model) return false;
        if (ids) return ids.hasOwnProperty(String(r[0]));
        if (q && String(r[0]).indexOf(q) < 0) return false;
        return true;
      });
    }
    function render() {
      var list = filtered(), k = COL[state.sort], dir = state.dir;
      list.sort(function (a, b) {
        var x = a[k], y = b[k];
        if (x === null || x === undefined) return (y === null || y === undefined) ? a[0] - b[0] : 1;
        if (y === null || y === undefined) return -1;
        if (x < y) return -dir;
        if (x > y) return dir;
        return a[0] - b[0];
      });
      var pages = Math.max(1, Math.ceil(list.length / state.size));
      state.page = Math.min(Math.max(0, state.page), pages - 1);
      var part = list.slice(state.page * state.size, (state.page + 1) * state.size);
      el("table").tBodies[0].innerHTML = part.map(function (r) {
        return '<tr data-id="' + r[0] + '">' + COLS.map(function (c) {
          var cls = c.type === "text" || c.type === "tag" || c.type === "class" ? ' class="text"' : "";
          return "<td" + cls + ">" + cell(r, c) + "</td>";
        }).join("") + "</tr>";
      }).join("");
      Array.prototype.forEach.call(el("table").tHead.rows[0].cells, function (th) {
        th.className = th.className.replace(/ ?sorted-(asc|desc)/g, "") +
          (th.getAttribute("data-key") === state.sort ? (dir > 0 ? " sorted-asc" : " sorted-desc") : "");
      });
      el("count").textContent = list.length + " of " + rows.length + " " + META.unit_name + "s shown (" + META.n_latents +
        " in all; those that never fire on the " + META.n_images + " " + META.split + " images have no row)";
      el("p-info").textContent = "page " + (state.page + 1) + " / " + pages;
      el("p-prev").disabled = state.page === 0;
      el("p-next").disabled = state.page >= pages - 1;
      try { sessionStorage.setItem(STATE_KEY, JSON.stringify(state)); } catch (e) { /* private mode */ }
      document.body.setAttribute("data-rows", String(part.length));
      document.body.setAttribute("data-matches", String(list.length));
    }
    render();
    ready();
  }

  function ready() {
    document.body.setAttribute("data-ready-ms", performance.now().toFixed(1));
    window.explorerReady = true;
  }

  /* ---------------- latent page ---------------- */
  var chunks = {};
  window.EXPLORER_CHUNK = function (k, records) { chunks[k] = records; if (window.__explorerPending) window.__explorerPending(); };

  function latent() {
    var ids = DATA.rows.map(function (r) { return r[0]; });
    var pos = {}; ids.forEach(function (id, i) { pos[id] = i; });
    function show() {
      var id = parseInt(location.hash.slice(1), 10);
      if (isNaN(id) || pos[id] === undefined) id = ids[0];
      var k = Math.floor(id / META.chunk_size);
      if (!chunks[k]) {
        window.__explorerPending = function () { window.__explorerPending = null; show(); };
        var s = document.createElement("script");
        s.src = "data/chunk_" + k + ".js";
        document.body.appendChild(s);
        return;
      }
      render(id, chunks[k][String(id)]);
    }
    function render(id, rec) {
      var i = pos[id], prev = ids[i - 1], next = ids[i + 1];
      document.title = META.short_title + " latent " + id;
      el("nav").innerHTML = '<span class="nav"><a id="back" href="index.html">← index</a>' +
        (prev !== undefined ? '<a id="prev" href="latent.html#' + prev + '">‹ previous (' + prev + ")</a>" : "<span>‹ previous</span>") +
        "<b>" + esc(META.unit_name) + " " + id + "</b> " +
        (next !== undefined ? '<a id="next" href="latent.html#' + next + '">next (' + next + ") ›</a>" : "<span>next ›</span>") +
        "</span>";
      var h = "<h1>" + esc(META.short_title) + ": " + esc(META.unit_name) + " " + id + " " + tagHtml(rec.tag) + "</h1>";
      h += '<div class="stats">' + rec.stats.map(function (s) {
        return "<span>" + esc(s[0]) + ": <b>" + (s[2] ? fmt(s[1], s[2], s[3]) : esc(s[1] === null ? "–" : s[1])) + "</b></span>";
      }).join("") + "</div>";
      h += '<div class="models" style="grid-template-columns:repeat(' + rec.models.length + ',minmax(0,1fr))">';
      rec.models.forEach(function (m) { h += modelPanel(m, rec); });
      h += "</div>";
      (rec.tables || []).forEach(function (t) { h += table(t); });
      (rec.bars || []).forEach(function (b) { h += "<h2>" + esc(b.title) + "</h2>" + bars(b.labels, b.values, b.digits); });
      (rec.links || []).forEach(function (l) {
        h += "<h2>" + esc(l.title) + '</h2><p class="links">' + (l.items.length ? l.items.map(function (it) {
          return '<a href="latent.html#' + it[0] + '">' + it[0] + "</a> <span class=sub>(" + fmt(it[1], "num", 2) + ")</span>";
        }).join(" ") : '<span class="none">none</span>') + "</p>";
      });
      el("main").innerHTML = h;
      el("foot").innerHTML = '<p class="sub">' + esc(META.notes || "") + "</p>";
      window.scrollTo(0, 0);
      ready();
    }
    window.addEventListener("hashchange", show);
    show();
  }

  function modelPanel(m, rec) {
    var h = '<section class="model"><h3>' + esc(m.name) + '</h3><div class="stats">' + m.stats.map(function (s) {
      return "<span>" + esc(s[0]) + ": <b>" + fmt(s[1], s[2], s[3]) + "</b></span>";
    }).join("") + "</div>";
    (m.pictures || []).forEach(function (p) {
      h += '<div class="picture"><div class="sub">' + esc(p.label) + "</div>" +
        (p.ref ? thumb(p.ref, 112, p.label) + (p.caption ? ' <span class="sub">' + esc(p.caption) + "</span>" : "")
               : '<span class="none">' + esc(p.none || "none computed") + "</span>") + "</div>";
    });
    h += '<div class="sub">top-activating ' + esc(META.split) + " images (code · label)</div>";
    h += '<div class="tops">' + (m.top.length ? m.top.map(function (t) {
      var name = META.class_names[t[2]] === undefined ? t[2] : META.class_names[t[2]];
      return '<div class="top">' + thumb(t[0], 64, "image " + t[3]) + "<br>" + fmt(t[1], "num", 2) + "<br>" + esc(name) + "</div>";
    }).join("") : '<span class="none">never fires in this model</span>') + "</div>";
    h += '<div class="sub">activation histogram (codes where it fires, ' + m.hist.total + " images)</div>" +
      histogram(m.hist);
    h += '<div class="sub">class distribution of firings</div>' + classBars(m.classes);
    return h + "</section>";
  }

  function histogram(hist) {
    var w = 300, ht = 90, n = hist.counts.length, max = Math.max.apply(null, hist.counts.concat([1]));
    var bw = w / n, s = '<svg width="' + w + '" height="' + (ht + 16) + '" role="img">';
    hist.counts.forEach(function (c, i) {
      var bh = ht * c / max;
      s += '<rect x="' + (i * bw + 0.5) + '" y="' + (ht - bh) + '" width="' + Math.max(1, bw - 1) + '" height="' + bh +
        '" fill="#4a7fc1"><title>' + c + "</title></rect>";
    });
    s += '<text x="0" y="' + (ht + 12) + '">' + fmt(hist.lo, "num", 2) + '</text><text x="' + w + '" y="' + (ht + 12) +
      '" text-anchor="end">' + fmt(hist.hi, "num", 2) + "</text>";
    return s + "</svg>";
  }

  function classBars(counts) {
    var order = counts.map(function (c, i) { return [c, i]; }).filter(function (p) { return p[0] > 0; })
      .sort(function (a, b) { return b[0] - a[0] || a[1] - b[1]; });
    if (!order.length) return '<p class="none">no firings</p>';
    var shown = order.slice(0, 10), rest = order.slice(10).reduce(function (s, p) { return s + p[0]; }, 0);
    var labels = shown.map(function (p) { return META.class_names[p[1]] || String(p[1]); });
    var values = shown.map(function (p) { return p[0]; });
    if (rest) { labels.push("other " + (order.length - 10) + " classes"); values.push(rest); }
    return bars(labels, values, 0);
  }

  function bars(labels, values, digits) {
    var w = 300, rowh = 14, lw = 110, max = Math.max.apply(null, values.map(Math.abs).concat([1e-12]));
    var s = '<svg width="' + (w + lw + 50) + '" height="' + (labels.length * rowh + 4) + '" role="img">';
    labels.forEach(function (l, i) {
      var v = values[i], bw = w * Math.abs(v) / max, y = i * rowh + 2;
      s += '<text x="' + (lw - 4) + '" y="' + (y + 10) + '" text-anchor="end">' + esc(String(l).slice(0, 18)) + "</text>" +
        '<rect x="' + lw + '" y="' + y + '" width="' + bw + '" height="' + (rowh - 3) + '" fill="' + (v < 0 ? "#c1554a" : "#4a7fc1") +
        '"></rect><text x="' + (lw + bw + 4) + '" y="' + (y + 10) + '">' + fmt(v, "num", digits === undefined ? 3 : digits) + "</text>";
    });
    return s + "</svg>";
  }

  function table(t) {
    return "<h2>" + esc(t.title) + "</h2><table><thead><tr>" + t.header.map(function (x, i) {
      return "<th" + (i === 0 ? ' class="text"' : "") + ">" + esc(x) + "</th>";
    }).join("") + "</tr></thead><tbody>" + t.rows.map(function (r) {
      return "<tr>" + r.map(function (x, i) {
        var v = (typeof x === "number") ? fmt(x, "num", 3) : (x === null ? "–" : esc(x));
        if (t.links && t.links[i] && x !== null) v = '<a href="latent.html#' + x + '">' + x + "</a>";
        return "<td" + (i === 0 ? ' class="text"' : "") + ">" + v + "</td>";
      }).join("") + "</tr>";
    }).join("") + "</tbody></table>" + (t.note ? '<p class="sub">' + esc(t.note) + "</p>" : "");
  }

  return {index: index, latent: latent};
})();
