"""The web pages: prediction page, runs page, local API docs and the token login form."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retune.server import explain
from retune.server.state import TOKEN_COOKIE, state
from retune.server.uploads import read_body

LOGIN_FORM_LIMIT = 4096  # bytes: the login form holds one token

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index(request: Request) -> HTMLResponse:
    served = state(request)
    upload_mb = served.config.max_upload_mb
    return served.page(request, "index.html", explanations=explain.DESCRIPTIONS, max_upload_mb=upload_mb)


@router.get("/runs")
async def runs_page(request: Request) -> HTMLResponse:
    return state(request).page(request, "runs.html")


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return state(request).page(request, "docs.html")


@router.get("/login")
async def login_form(request: Request) -> HTMLResponse:
    return state(request).page(request, "login.html", failed=False)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token typed into the form; on success keep it in an HttpOnly, same-site cookie."""
    served = state(request)
    form = parse_qs((await read_body(request, LOGIN_FORM_LIMIT)).decode("utf-8", "replace"))
    offered = form.get("token", [""])[0]
    token = served.config.token
    if not token or not secrets.compare_digest(offered.encode(), token.encode()):
        response = served.page(request, "login.html", failed=True)
        response.status_code = 401
        return response
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict")
    return response
