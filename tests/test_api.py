"""The public API: the README's Python example runs as printed, and the exports resolve."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

import saver_search
from saver_search import ArraySource, InvalidParameter, run_search


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced blocks of a README section, as (language, text)."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", body, flags=re.S)


def test_readme_python_example_prints_what_the_readme_says(tmp_path):
    (language, code), (_, printed) = readme_blocks("Python API")[:2]
    assert language == "python"
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == printed


def test_every_export_resolves_and_import_stays_light():
    for name in saver_search.__all__:
        assert getattr(saver_search, name) is not None, name
    proc = subprocess.run([sys.executable, "-c", "import saver_search, sys; print(sorted(m for m in ('torch', 'optuna', "
                           "'timm') if m in sys.modules))"], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("models, fragment", [
    ({"a": (np.zeros((5, 3)), 1.0), "b": (np.zeros((4, 3)), 2.0)}, "model 'b' has predictions for 4 samples but the data has 5"),
    ({"a": (np.full((5, 3), np.nan), 1.0)}, "NaN or infinite"),
    ({"a": (np.zeros((5, 3, 2)), 1.0)}, "must be (n, classes) probabilities or logits"),
    ({"a": (np.zeros((5, 3)), 0.0)}, "cost must be a positive number of GMACs"),
])
def test_bad_arrays_name_the_model_and_the_problem(models, fragment):
    with pytest.raises(InvalidParameter) as error:
        ArraySource.from_arrays(np.array([0, 1, 2, 0, 1]), models)
    assert error.value.parameter == "models" and fragment in str(error.value)


def test_classes_only_models_serve_as_target_and_never_answer_as_candidates():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    probs = rng.dirichlet(np.ones(4), 4000)
    source = ArraySource.from_arrays(labels, {"guess": (probs, 0.1), "oracle": (labels.copy(), 5.0)})
    result = run_search(source, "oracle", 1.0)
    assert result.target.accuracy == 1.0 and result.best.target_alone
    assert source.model("guess").probs.shape == (4, 4000)  # top-k kept
