// Renders the OpenAPI document with the vendored Swagger UI. The document
// comes from the docs' own copy, which needs no credentials; "Try it out"
// calls the API, which does (the Authorize button takes an API key and
// token).
window.ui = window.SwaggerUIBundle({
  url: "/api/v0002/docs/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
});
