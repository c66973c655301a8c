"""report: papermill executes the report notebook; nbconvert writes one self-contained HTML page."""

import logging

import nbformat
import papermill
from nbconvert import HTMLExporter

from litpipe import paths
from litpipe.config import Params
from litpipe.io import write_text

log = logging.getLogger(__name__)

EXECUTED = paths.REPORT_WORK / "report.ipynb"


def run(params: Params) -> None:
    EXECUTED.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(paths.REPORT_NOTEBOOK),
        str(EXECUTED),
        parameters={"title": params.report.title, "inputs": paths.report_inputs()},
        kernel_name="python3",
        progress_bar=False,
        cwd=".",
    )
    # Code hidden; figures already embedded as base64 PNGs; the offline template fetches no scripts.
    exporter = HTMLExporter(
        template_name="offline",
        extra_template_basedirs=[str(paths.REPORT_NOTEBOOK.parent)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    executed = nbformat.read(EXECUTED, as_version=4)
    executed.metadata["title"] = params.report.title  # the page's <title>; nbconvert's default is the file's name
    html, _ = exporter.from_notebook_node(executed)
    write_text(paths.REPORT_HTML, html)
    log.info("report: %s (%.0f kB)", paths.REPORT_HTML, len(html) / 1024)
