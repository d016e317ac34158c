// Local Swagger UI over the app's OpenAPI schema (no CDN; the page's CSP allows scripts from this server only).
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
