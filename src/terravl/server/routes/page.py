"""The web map page, the OpenAPI page and their assets, all served by this process (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page():
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/docs", response_class=HTMLResponse)
async def docs():
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url="/openapi.json", title="TerraVL API",
                               swagger_js_url="/vendor/swagger/swagger-ui-bundle.js",
                               swagger_css_url="/vendor/swagger/swagger-ui.css",
                               swagger_favicon_url="/vendor/swagger/favicon-32x32.png")


def mount_assets(app: FastAPI) -> None:
    """The page's own files, Leaflet and Swagger UI, from installed packages."""
    import swagger_ui_bundle
    import xstatic.pkg.leaflet as leaflet

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=leaflet.BASE_DIR), name="leaflet")
    app.mount("/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
