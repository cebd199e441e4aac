/* ghanet report - sortable, filterable case table (index page).
 *
 * Works on every <table class="cases">: a click on a header sorts by that column (again: reverse);
 * cells carry their sort key in data-sort (numbers sort as numbers, empty cells last). The text box
 * #case-filter keeps rows containing its text; the selects #group-filter and #fold-filter keep rows
 * whose data-group / data-fold match. window.ghanetTable holds the current sort for tests.
 */
(function () {
  "use strict";
  var state = window.ghanetTable = { column: null, descending: false, shown: 0 };

  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (raw === "") return { empty: true };
    var num = Number(raw);
    return isNaN(num) ? { text: raw.toLowerCase() } : { num: num };
  }

  function compare(a, b) {
    if (a.empty || b.empty) return a.empty === b.empty ? 0 : (a.empty ? 1 : -1);
    if (a.num !== undefined && b.num !== undefined) return a.num - b.num;
    var x = a.num !== undefined ? String(a.num) : a.text, y = b.num !== undefined ? String(b.num) : b.text;
    return x < y ? -1 : (x > y ? 1 : 0);
  }

  function sortBy(table, col, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1.cells[col]), b = key(r2.cells[col]);
      if (a.empty || b.empty) return compare(a, b);   // empty cells last in both directions
      var c = compare(a, b);
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, k) {
      th.setAttribute("aria-sort", k === col ? (descending ? "descending" : "ascending") : "none");
    });
    state.column = table.tHead.rows[0].cells[col].getAttribute("data-key");
    state.descending = descending;
  }

  function applyFilters(table) {
    var text = (document.getElementById("case-filter") || { value: "" }).value.trim().toLowerCase();
    var group = (document.getElementById("group-filter") || { value: "" }).value;
    var fold = (document.getElementById("fold-filter") || { value: "" }).value;
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var ok = (!text || r.textContent.toLowerCase().indexOf(text) >= 0) &&
               (!group || r.getAttribute("data-group") === group) &&
               (!fold || r.getAttribute("data-fold") === fold);
      r.hidden = !ok;
      if (ok) shown++;
    });
    state.shown = shown;
    var counter = document.getElementById("case-count");
    if (counter) counter.textContent = shown + " of " + table.tBodies[0].rows.length + " cases";
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.cases"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      function go() {
        var desc = state.column === th.getAttribute("data-key") ? !state.descending : false;
        sortBy(table, col, desc);
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
    });
    ["case-filter", "group-filter", "fold-filter"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.addEventListener("input", function () { applyFilters(table); });
    });
    applyFilters(table);
  });
})();
