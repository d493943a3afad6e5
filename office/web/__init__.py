"""The office's web page: a fleet view, a crack map, crack details and the segment table.

``crackseg-office serve`` runs ``office.web.server``: a small threaded standard-library HTTP
server (nothing to install beyond the office extra, no Node server) that serves the static
page from ``office/web/static`` (Leaflet vendored, no CDN) and a read-only JSON API
(``office.web.api``) over the same query layer as the exports. docs/office.md, "The web
page", lists the endpoints.
"""
