"""notebooks/explore_search.ipynb runs top to bottom and draws real figures; the committed copy keeps its outputs."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explore_search.ipynb"
MIN_FIGURES = 5
MIN_PNG_BYTES = 10_000
SMALLER = "TRIALS, BUDGETS = 20, [1.0]  # the test's parameters: every cell runs, on less work"


def kernel_manager(folder: Path) -> AsyncKernelManager:
    """A ``python3`` kernel on this interpreter, whatever kernels are installed on the machine."""
    write_kernel_spec(folder / "python3")
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]))


def png_sizes(notebook: nbformat.NotebookNode) -> list[int]:
    """Sizes in bytes of every PNG the notebook's code cells output."""
    return [
        len(base64.b64decode(output["data"]["image/png"]))
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs if "image/png" in output.get("data", {})
    ]


@pytest.mark.slow
def test_notebook_executes_and_draws_figures(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code")
    assert "TRIALS =" in notebook.cells[parameters].source and "BUDGETS =" in notebook.cells[parameters].source
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(SMALLER))  # as papermill injects parameters
    client = NotebookClient(notebook, km=kernel_manager(tmp_path / "kernels"), timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(cleanup_kc=True)  # raises CellExecutionError, with the failing cell's traceback
    sizes = png_sizes(notebook)
    assert len(sizes) >= MIN_FIGURES and min(sizes) > MIN_PNG_BYTES, sizes


def test_committed_notebook_keeps_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "execute the notebook and save it with its outputs"
    assert not any(o.output_type == "error" for cell in code for o in cell.outputs)
    assert len(png_sizes(notebook)) >= MIN_FIGURES
