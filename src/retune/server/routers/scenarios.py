"""Scenario results: every served scenario's summary, its full results and each method's AUROC-matrix heatmap."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from retune.server.scenarios import ServedScenario
from retune.server.state import API_VERSION, UnknownName, heatmap_url, png_response, state

router = APIRouter()


def heatmap_urls(scenario: ServedScenario) -> dict[str, str]:
    """Each method's heatmap address."""
    return {method: heatmap_url(scenario.name, method) for method in scenario.heatmaps}


@router.get(f"/{API_VERSION}/scenarios", tags=["scenarios"])
async def list_scenarios(request: Request) -> dict:
    """Every served scenario: name, kind, methods, and per method the final mean AUROC and forgetting (mean ± sd
    over its (order, seed) runs), the classes in the means (min-positives rule) and its heatmap's address."""
    return {"scenarios": [{**s.summary(), "heatmaps": heatmap_urls(s)} for s in state(request).scenarios.values()]}


@router.get(f"/{API_VERSION}/scenarios/{{name}}", tags=["scenarios"])
async def scenario_details(name: str, request: Request) -> dict:
    """One scenario's summary, its config (scenario.json) and every method's full results.json."""
    scenario = state(request).scenario(name)
    return {**scenario.details(), "heatmaps": heatmap_urls(scenario)}


@router.get(
    f"/{API_VERSION}/scenarios/{{name}}/methods/{{method:path}}/auroc_matrix.png",
    tags=["scenarios"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "the browser's copy is current"}},
)
async def auroc_matrix(name: str, method: str, request: Request) -> Response:
    """A method's AUROC-matrix heatmap (AUROC on each class after each task, first run), drawn at startup."""
    scenario = state(request).scenario(name)
    if method not in scenario.heatmaps:
        raise UnknownName("method", method, list(scenario.heatmaps))
    return png_response(scenario.heatmaps[method], request)
