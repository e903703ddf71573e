// Renders /openapi.json as a readable page: one section per operation.

const main = document.getElementById("operations");

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c != null));
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `${schemaName(schema.items)}[]`;
  if (Array.isArray(schema.type)) return schema.type.join(" | ");
  return schema.type || "";
}

function table(head, rows) {
  if (rows.length === 0) return null;
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { textContent: h })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))),
  );
}

function operation(path, method, op) {
  const params = (op.parameters || []).map((p) => [
    el("code", { textContent: p.name }),
    `${p.in}${p.required ? ", required" : ""}`,
    p.description || "",
  ]);
  const body = op.requestBody?.content?.["application/json"]?.schema;
  const answers = Object.entries(op.responses || {}).map(([status, r]) => {
    const [type, media] = Object.entries(r.content || {})[0] || [];
    return [el("code", { textContent: status }), r.description || "", type ? `${type} ${schemaName(media.schema)}` : ""];
  });
  const auth = (op.security || []).flatMap((s) => Object.keys(s));
  return el(
    "section",
    { id: op.operationId },
    el("h2", {}, el("span", { className: "method", textContent: method.toUpperCase() }), el("code", { textContent: path })),
    auth.length ? el("p", { className: "auth", textContent: `Bearer: ${auth.join(" or ")}` }) : null,
    op.summary ? el("p", { textContent: op.summary }) : null,
    table(["parameter", "in", "meaning"], params),
    body ? el("p", {}, "Body: ", el("code", { textContent: schemaName(body) })) : null,
    table(["status", "meaning", "body"], answers),
  );
}

try {
  const response = await fetch("/openapi.json");
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const doc = await response.json();
  const sections = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) sections.push(operation(path, method, op));
  }
  main.replaceChildren(...sections);
} catch (error) {
  main.replaceChildren(el("p", { className: "error", role: "alert", textContent: `Cannot read /openapi.json: ${error.message}` }));
}
