"""What a person does in the browser: log into Airflow, fill the trigger form, watch the run succeed,
follow the task's "MLflow run" link to the run's metrics. Playwright drives Debian's Chromium
(`make browser`); no browser is downloaded.

Screenshots go to ``$FEDFLOW_TEST_ARTIFACTS`` (default ``test-artifacts/``, git-ignored).
``FEDFLOW_UPDATE_DOC_IMAGES=1`` also refreshes the small copies in ``docs/images/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest

from tasks import airflow_api
from tests.conftest import ROOT
from tests.servers.conftest import DAG_ID, EXPERIMENT

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The trigger form's sections are an accordion: open a section, then fill its fields.
FORM = {
    "Data": ("num_clients", "min_examples_per_client"),
    "Algorithm": ("rounds", "clients_per_round", "local_epochs"),
    "Chunks, evaluation and tracking": ("rounds_per_chunk", "eval_every"),
}
RUN_TIMEOUT_S = 600
DOC_IMAGES = ROOT / "docs" / "images"
DOC_IMAGE_MAX_BYTES = 300_000


@pytest.fixture
def artifacts() -> Path:
    path = Path(os.environ.get("FEDFLOW_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing. Fix: `make browser` (Debian's chromium) or set CHROMIUM=/path/to/chromium.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 960})
            tab.set_default_timeout(60_000)
            yield tab
        finally:
            browser.close()


def test_an_experiment_triggered_from_the_form_succeeds_and_links_to_its_mlflow_run(live_servers, page, artifacts):
    from playwright.sync_api import expect

    api = live_servers.api()
    runs_before = {r["dag_run_id"] for r in api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]}

    page.goto(f"{live_servers.airflow_url}/dags/{DAG_ID}")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(api.password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    for section, fields in FORM.items():
        dialog.get_by_role("button", name=section, exact=True).click()
        for name in fields:
            field = dialog.locator(f'input[name="element_{name}"]')
            field.fill(str(EXPERIMENT[name]))
            field.blur()  # the form clamps and stores a number on blur
    submit = page.get_by_test_id("trigger-dag-submit")
    with contextlib.suppress(AssertionError):
        expect(submit).to_be_enabled(timeout=10_000)
    if not submit.is_enabled():
        dialog.screenshot(path=artifacts / "airflow-trigger-form-disabled.png")
        from tasks.config_schema import param_schemas

        empty = [n for n, p in param_schemas().items() if p["default"] == "" and "null" not in p["type"]]
        pytest.fail("The trigger form keeps Trigger disabled. Airflow's form treats an empty string as a missing "
                    f"required value: params defaulting to \"\" need type [\"string\", \"null\"]. Empty: {empty}")
    dialog.get_by_role("button", name="Algorithm", exact=True).click()  # the section shown in the screenshot
    dialog.get_by_text(f"Trigger Dag - {DAG_ID}").scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the accordion's animation
    page.screenshot(path=artifacts / "airflow-trigger-form.png")
    submit.click()

    run_id = _new_run(api, runs_before)
    conf = api.dag_run(DAG_ID, run_id)["conf"]
    assert {k: conf[k] for k in EXPERIMENT} == EXPERIMENT  # what was typed is what runs

    page.goto(api.run_url(DAG_ID, run_id))
    badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (state := badge.inner_text().strip()) != "Success":  # Queued -> Running -> Success, no reload
        assert state != "Failed", _failure(api, run_id)
        assert time.monotonic() < deadline, f"badge still {state!r} after {RUN_TIMEOUT_S} s; {_failure(api, run_id)}"
        page.wait_for_timeout(2000)
    page.screenshot(path=artifacts / "airflow-run-success.png")

    # The task's Details tab holds its extra links.
    page.goto(f"{api.run_url(DAG_ID, run_id)}/tasks/evaluate_and_register/details")
    link = page.get_by_role("link", name="MLflow run")
    href = link.get_attribute("href")
    mlflow_run_id = api.xcom(DAG_ID, run_id, "evaluate_and_register")["mlflow_run_id"]
    assert re.fullmatch(rf"{re.escape(live_servers.mlflow_url)}/#/experiments/\d+/runs/{mlflow_run_id}", href or ""), href
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            link.click()
        mlflow = opened.value
    else:
        link.click()
        mlflow = page
    mlflow.set_default_timeout(60_000)
    mlflow.wait_for_load_state()
    assert mlflow_run_id in mlflow.url
    expect(mlflow.get_by_text(re.compile(r"^Metrics \(\d+\)$"))).to_be_visible()
    for metric in ("train_loss", "train_accuracy", "test_accuracy", "final_test_accuracy"):
        expect(mlflow.get_by_text(metric, exact=True).first).to_be_attached()
    _show_metric_charts(mlflow)
    mlflow.screenshot(path=artifacts / "mlflow-run.png")

    if os.environ.get("FEDFLOW_UPDATE_DOC_IMAGES") == "1":
        for name in ("airflow-trigger-form.png", "airflow-run-success.png", "mlflow-run.png"):
            _save_doc_image(artifacts / name, DOC_IMAGES / name)


def _new_run(api: airflow_api.Client, before: set[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
        new = [r["dag_run_id"] for r in runs if r["dag_run_id"] not in before]
        if new:
            assert len(new) == 1, new
            return new[0]
        time.sleep(1)
    raise AssertionError(f"No new run of {DAG_ID} {timeout_s:.0f} s after pressing Trigger")


def _failure(api: airflow_api.Client, run_id: str) -> str:
    failed = [ti for ti in api.task_instances(DAG_ID, run_id) if ti.get("state") == "failed"]
    return "; ".join(f"{ti['task_id']}: {api.task_error(DAG_ID, run_id, ti['task_id'], ti['try_number'])}"
                     for ti in failed) or "no failed task yet"


def _show_metric_charts(mlflow) -> None:
    """For the screenshot only (best effort): the classic-ML view of the run's training curves, without
    MLflow 3's assistant panel."""
    with contextlib.suppress(Exception):
        mlflow.get_by_role("button", name="Close").click(timeout=5000)
    with contextlib.suppress(Exception):
        mlflow.get_by_role("tab", name="Model metrics").click(timeout=5000)
        mlflow.get_by_placeholder("Search metric charts").fill("train_", timeout=5000)
        mlflow.get_by_text("train_loss", exact=True).first.wait_for(timeout=10000)
        mlflow.wait_for_timeout(1500)  # charts animate in


def _save_doc_image(source: Path, target: Path) -> None:
    """A palette PNG copy (UI screenshots keep their look at 256 colours, at a fraction of the size)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    assert target.stat().st_size < DOC_IMAGE_MAX_BYTES, f"{target} is {target.stat().st_size} bytes"
