// Progressive enhancement only: the report reads completely without JavaScript (every case is also in
// the static gallery, linked from its table row). With it: sortable case tables, a filter, and a
// click on a case row shows its image | map | region large.
(function () {
  "use strict";
  document.querySelectorAll(".js-only").forEach(function (el) { el.hidden = false; });
  var cellValue = function (row, i) {
    var text = row.children[i].textContent.trim();
    var num = parseFloat(text);
    return isNaN(num) || !/^[-+]?[\d.]/.test(text) ? text.toLowerCase() : num;
  };
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, i) {
      th.classList.add("sort");
      th.title = "sort";
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var asc = th.dataset.dir !== "asc";
        table.querySelectorAll("thead th").forEach(function (o) { delete o.dataset.dir; });
        th.dataset.dir = asc ? "asc" : "desc";
        Array.from(body.rows)
          .sort(function (a, b) {
            var x = cellValue(a, i), y = cellValue(b, i);
            return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
          })
          .forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var filter = document.getElementById("case-filter");
  var count = document.getElementById("case-count");
  var applyFilter = function () {
    var q = filter.value.trim().toLowerCase(), shown = 0, all = 0;
    document.querySelectorAll("table.cases tbody tr").forEach(function (r) {
      var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
      r.hidden = !hit;
      all += 1;
      shown += hit ? 1 : 0;
    });
    count.textContent = shown + " of " + all + " cases";
  };
  if (filter) { filter.addEventListener("input", applyFilter); applyFilter(); }
  var viewer = document.getElementById("viewer");
  var show = function (id) {
    var fig = document.getElementById(id);
    if (!fig || !viewer) { return false; }
    viewer.querySelector("img").src = fig.querySelector("img").src;
    viewer.querySelector("p").textContent = fig.querySelector("figcaption").textContent;
    viewer.hidden = false;
    return true;
  };
  document.querySelectorAll("table.cases tbody tr").forEach(function (r) {
    r.addEventListener("click", function (e) {
      if (show(r.dataset.target)) { e.preventDefault(); }
    });
  });
  document.querySelectorAll(".gallery figure").forEach(function (f) {
    f.addEventListener("click", function () { show(f.id); });
  });
  if (viewer) {
    viewer.addEventListener("click", function () { viewer.hidden = true; });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape") { viewer.hidden = true; } });
  }
})();
