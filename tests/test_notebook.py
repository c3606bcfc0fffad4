"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (this interpreter) without an error."""

import json
import os
import sys

import pytest

QUICKER = {"zoo.train(model, x, y, epochs=15)": "zoo.train(model, x, y, epochs=3)",
           "tuned.fit(x, y, epochs=3,": "tuned.fit(x, y, epochs=1,"}
NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.ipynb")


def kernel_manager(spec_dir):
    """A KernelManager starting ``sys.executable -m ipykernel_launcher``: the test's own environment,
    whatever kernels this machine has registered (a fresh venv has none outside itself)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernel_dir = os.path.join(spec_dir, "tfjpq-test")
    os.makedirs(kernel_dir)
    with open(os.path.join(kernel_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "tfjpq test", "language": "python"}, f)
    return KernelManager(kernel_name="tfjpq-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir]))


def test_notebook_is_valid_and_follows_the_readme_path():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for call in ("datasets.load(", "tfjpq.wrap(", "target=", "SearchLogger()", "tfjpq.summary(", "tfjpq.profile(",
                 "plt.", "tfjpq.freeze(", "teacher=model", "tfjpq.export(", "tflm_export.convert(",
                 "tflm_export.emulate(", ".summary()"):
        assert call in source, call
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_executes_without_errors(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # every cell as committed, with fewer epochs: the suite checks that it runs
        for long, short in QUICKER.items():
            cell.source = cell.source.replace(long, short)
    source = "\n".join(c.source for c in nb.cells)
    assert not [long for long in QUICKER if long in source] and all(short in source for short in QUICKER.values())
    work = tmp_path / "run"
    work.mkdir()
    client = NotebookClient(nb, km=kernel_manager(str(tmp_path / "kernels")), timeout=600,
                            resources={"metadata": {"path": str(work)}})
    client.execute()          # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "TFLM accuracy" in text and "tensor arena" in text
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data"), "no inline plot"
    assert (work / "build" / "notebook" / "model_data.cc").is_file()
