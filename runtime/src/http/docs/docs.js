// The /docs page: renders the runtime's OpenAPI 3.1 document (openapi.json, beside this file)
// as a reference of every operation and schema. Served from the binary; it loads nothing from
// anywhere else, and writes text only through textContent (no HTML from the document is ever
// interpreted).
"use strict";

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === "") continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A schema as a short type expression; references link to the schema's section.
function typeOf(schema) {
  if (!schema) return "any";
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return el("a", { href: `#schema-${name}`, class: "type" }, name);
  }
  for (const key of ["oneOf", "anyOf", "allOf"]) {
    if (Array.isArray(schema[key])) {
      const parts = schema[key].map(typeOf);
      const joined = [];
      parts.forEach((part, i) => {
        if (i > 0) joined.push(key === "allOf" ? " & " : " | ");
        joined.push(part);
      });
      return el("span", { class: "type" }, joined);
    }
  }
  let type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "object";
  if (type === "array" || (Array.isArray(schema.type) && schema.type.includes("array"))) {
    return el("span", { class: "type" }, `${type} of `, typeOf(schema.items));
  }
  if (schema.format) type += ` (${schema.format})`;
  if (Array.isArray(schema.enum)) type += `: ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  return el("span", { class: "type" }, type);
}

function description(text) {
  return text ? el("p", { class: "description" }, text) : null;
}

function contentTable(content) {
  const rows = Object.entries(content || {}).map(([mediaType, body]) =>
    el("tr", {}, el("td", {}, el("code", {}, mediaType)), el("td", {}, typeOf(body.schema))),
  );
  return rows.length ? el("table", {}, el("tr", {}, el("th", {}, "Media type"), el("th", {}, "Schema")), rows) : null;
}

function parametersSection(parameters) {
  if (!parameters || parameters.length === 0) return null;
  return el("section", {},
    el("h4", {}, "Parameters"),
    el("table", {},
      el("tr", {}, el("th", {}, "Name"), el("th", {}, "In"), el("th", {}, "Type"), el("th", {}, "Description")),
      parameters.map((p) => el("tr", {},
        el("td", {}, el("code", {}, p.name), p.required ? el("span", { class: "required" }, "required") : null),
        el("td", {}, p.in),
        el("td", {}, typeOf(p.schema)),
        el("td", {}, p.description || ""),
      )),
    ),
  );
}

function requestSection(body) {
  if (!body) return null;
  return el("section", {},
    el("h4", {}, "Request body", body.required ? el("span", { class: "required" }, "required") : null),
    description(body.description),
    contentTable(body.content),
  );
}

function responsesSection(responses) {
  const rows = Object.entries(responses || {}).map(([code, response]) => {
    const media = Object.entries(response.content || {}).map(([mediaType, body]) =>
      el("div", {}, el("code", {}, mediaType), " ", typeOf(body.schema)));
    return el("tr", { "data-status": code },
      el("td", {}, el("code", {}, code)), el("td", {}, response.description || ""), el("td", {}, media));
  });
  if (rows.length === 0) return null;
  return el("section", {},
    el("h4", {}, "Responses"),
    el("table", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Description"), el("th", {}, "Body")), rows),
  );
}

function operationId(method, path) {
  return `op-${method}-${path.replace(/[^A-Za-z0-9]+/g, "-")}`;
}

function renderOperation(method, path, op) {
  return el("article", {
    class: "operation",
    id: operationId(method, path),
    "data-operation": `${method.toUpperCase()} ${path}`,
  },
    el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), path,
      op.summary ? el("span", { class: "summary" }, ` — ${op.summary}`) : null),
    op.deprecated ? el("p", { class: "error" }, "Deprecated") : null,
    description(op.description),
    parametersSection(op.parameters),
    requestSection(op.requestBody),
    responsesSection(op.responses),
  );
}

function renderSchema(name, schema) {
  const required = new Set(schema.required || []);
  const properties = Object.entries(schema.properties || {});
  return el("article", { class: "schema", id: `schema-${name}`, "data-schema": name },
    el("h3", {}, name),
    description(schema.description),
    properties.length
      ? el("table", {},
        el("tr", {}, el("th", {}, "Property"), el("th", {}, "Type"), el("th", {}, "Description")),
        properties.map(([property, sub]) => el("tr", {},
          el("td", {}, el("code", {}, property), required.has(property) ? el("span", { class: "required" }, "required") : null),
          el("td", {}, typeOf(sub)),
          el("td", {}, sub.description || ""),
        )))
      : el("p", {}, typeOf(schema)),
  );
}

function render(doc) {
  const main = document.getElementById("api");
  const toc = document.getElementById("toc");
  const info = doc.info || {};
  document.getElementById("title").textContent = `${info.title || "API"} ${info.version || ""}`.trim();
  document.title = `${info.title || "API"} — API reference`;

  // Operations grouped by their first tag, in the document's tag order.
  const groups = new Map((doc.tags || []).map((t) => [t.name, { tag: t, operations: [] }]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, { tag: { name: tag }, operations: [] });
      groups.get(tag).operations.push([method, path, op]);
    }
  }

  const sections = [description(info.description)];
  const tocItems = [];
  for (const { tag, operations } of groups.values()) {
    if (operations.length === 0) continue;
    sections.push(el("section", { class: "tag", id: `tag-${tag.name}` },
      el("h2", {}, tag.name), description(tag.description),
      operations.map(([method, path, op]) => renderOperation(method, path, op))));
    tocItems.push(el("h2", {}, tag.name), operations.map(([method, path]) =>
      el("a", { href: `#${operationId(method, path)}` }, `${method.toUpperCase()} ${path}`)));
  }
  const schemas = Object.entries((doc.components && doc.components.schemas) || {});
  if (schemas.length) {
    sections.push(el("section", { id: "schemas" }, el("h2", {}, "Schemas"),
      schemas.map(([name, schema]) => renderSchema(name, schema))));
    tocItems.push(el("h2", {}, "Schemas"),
      schemas.map(([name]) => el("a", { href: `#schema-${name}` }, name)));
  }
  toc.replaceChildren(...tocItems.flat());
  main.replaceChildren(...sections.filter(Boolean));
  document.body.dataset.rendered = "true";
}

async function load() {
  const main = document.getElementById("api");
  try {
    const response = await fetch("openapi.json", { headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(`openapi.json answered HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    main.replaceChildren(el("p", { class: "error" }, `Cannot render the OpenAPI document: ${error.message}`));
    document.body.dataset.rendered = "error";
  }
}

document.addEventListener("DOMContentLoaded", load);
