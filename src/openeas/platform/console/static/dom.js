// Building the page from data: every value goes in as a text node (never innerHTML),
// so a service's message or event text is shown, never run.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && name !== "list") node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.flat().map((c) => (c instanceof Node ? c : text(c))));
  return node;
}

export function text(value) {
  return document.createTextNode(value === undefined || value === null ? "" : String(value));
}

// A table whose body is rebuilt from `rows` (arrays of cells, each a value or a Node).
export function table(headings, rows, attrs = {}) {
  return el(
    "table", attrs,
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

export function summary(pairs) {
  return el("dl", { className: "summary" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

export function replace(node, ...children) {
  node.replaceChildren(...children);
}

export function hrefOf(service) {
  return `#/services/${encodeURIComponent(service)}`;
}

// Put `nodes` in `parent` in this order, touching nothing when they already are (moving
// a node would take the focus from an input the user is typing in).
export function keep(parent, nodes) {
  const now = Array.from(parent.childNodes);
  if (now.length === nodes.length && now.every((n, i) => n === nodes[i])) return;
  parent.replaceChildren(...nodes);
}
