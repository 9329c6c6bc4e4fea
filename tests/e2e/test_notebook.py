"""The example notebook (examples/rtk_in_a_notebook.ipynb) runs top to bottom in a real Jupyter kernel
(nbclient), and what it shows holds: robustness transfers through the robust source's features."""
import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO

CHECKS = '''
assert 0.5 <= report["clean"] <= 1 and report["robust"] <= report["pgd"] <= report["clean"]
assert float((adversarial - images).abs().max()) <= pgd.eps + 1e-6
assert robust.rtk_info["objective"] == "pgd-at" and natural.rtk_info["objective"] == "natural"
mean = frame[frame.eps > 0].groupby("source")["PGD-20"].mean()
assert mean["pgd-at"] > mean["natural"] + 0.05, mean
assert len(frame) == 2 * len(radii) and (frame.low <= frame["PGD-20"]).all() and (frame["PGD-20"] <= frame.high).all()
assert (results.out_dir / "metrics.jsonl").is_file() and (results.out_dir / "curves.png").stat().st_size > 10_000
'''


def test_the_example_notebook_runs_and_shows_what_it_says(tmp_path, monkeypatch):
    monkeypatch.setenv("RTK_RUNS", str(tmp_path / "runs"))
    notebook = nbformat.read(REPO / "examples" / "rtk_in_a_notebook.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # shipped clean
    notebook.cells.append(nbformat.v4.new_code_cell(CHECKS))
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, when a cell fails
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the sweep's plot and the training curves
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["notebook-quickstart", "notebook-sweep"]


@pytest.mark.parametrize("name", ["rtk_in_a_notebook.ipynb"])
def test_notebooks_are_valid(name):
    nbformat.validate(nbformat.read(REPO / "examples" / name, as_version=4))
