"""The README's "From Python" code runs as written (from a folder that has the recipes), and its
objects are what the text says they are."""
import os
import re

from tests.helpers import REPO


def readme_python() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_from_python_section_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python(), "README.md (From Python)", "exec"), namespace)
    results, report, certified = namespace["results"], namespace["report"], namespace["certified"]
    assert (tmp_path / "runs" / "from-python" / "results.json").is_file()
    assert len(namespace["frame"]) == len(results.runs) == 2
    assert results.runs[1]["params"]["source.objective"]["name"] == "pgd-at"
    assert namespace["robust"].rtk_info["objective"] == "pgd-at"
    assert report.n == 100 and set(report.metrics) == {"clean", "pgd", "fgsm", "robust"}
    lo, hi = report.intervals["pgd"]
    assert lo <= report.metrics["pgd"] <= hi
    assert "acr" in certified.metrics and certified.n == 20
    printed = capsys.readouterr().out
    assert "quickstart" in printed and str(report.metrics["clean"])[:4] in printed
    assert os.getcwd() == str(tmp_path)
