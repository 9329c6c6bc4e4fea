"""Cohen et al. randomized-smoothing certification: known answers, metrics, files, sharding, resume."""
import json
import math
import re
from statistics import NormalDist

import pytest
import torch
from scipy.stats import beta, binom, binomtest

from rtk_plugins.smoothing import report as certify_report
from rtk.config.fields import ConfigValueError, build_config
from rtk.data import ImageSet, apply_options
from rtk.errors import RtkError
from rtk_plugins.datasets import DigitsConfig
from rtk_plugins.datasets.digits import load_digits
from rtk_plugins.smoothing.cohen import ABSTAIN, CohenCertifier, lower_confidence_bound, predict_from_counts
from rtk_plugins.smoothing import CohenConfig, max_certifiable_radius, min_certify_n, min_predict_n
from tests.helpers import TINY_RECIPE, quiet_context

PHI_INV = NormalDist().inv_cdf


def certifier(**options):
    return CohenCertifier(build_config(CohenConfig, options))


def ctx_for(tmp_path=None, **kw):
    return quiet_context(out_dir=tmp_path, **kw)


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


class Constant(torch.nn.Module):
    """Always votes for class ``c`` of ``k``."""

    def __init__(self, c=2, k=5):
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.c), self.k).float()


class RightWithProbability(torch.nn.Module):
    """Reads the label from the image mean (images are filled with their label) and, using the
    noise on pixel 0, returns it with probability p; otherwise one of the other k-1 classes,
    chosen uniformly with the noise on pixel 1. Needs sigma = 0.25 (the noise is de-scaled)."""

    def __init__(self, p, k=10, sigma=0.25):
        super().__init__()
        self.p, self.k, self.sigma = p, k, sigma

    def forward(self, x):
        flat = x.flatten(1)
        label = flat.mean(1).round().long()
        u0 = torch.special.ndtr((flat[:, 0] - label) / self.sigma)
        u1 = torch.special.ndtr((flat[:, 1] - label) / self.sigma)
        other = (label + 1 + (u1 * (self.k - 1)).long().clamp(max=self.k - 2)) % self.k
        return torch.nn.functional.one_hot(torch.where(u0 < self.p, label, other), self.k).float()


def label_images(labels):
    labels = torch.tensor(labels)
    return ImageSet(labels.float().view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone(), labels)


def test_constant_classifier_certifies_at_the_clopper_pearson_bound_of_n_out_of_n():
    data = ImageSet(torch.rand(4, 1, 4, 4), torch.tensor([2, 0, 2, 1]))
    rows = certifier(n0=10, n=300, batch_size=64, sigma=0.5).certify_examples(Constant(c=2), data, ctx_for())
    bound = 0.001 ** (1 / 300)  # the Beta(n, 1) quantile: P(all n succeed | p) = p^n = alpha
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    for row, label in zip(rows, [2, 0, 2, 1]):
        assert row["prediction"] == 2 and row["nA"] == 300 and row["correct"] == (label == 2)
        assert row["pA_lower"] == pytest.approx(bound, rel=1e-9)
        assert row["radius"] == pytest.approx(0.5 * PHI_INV(bound), rel=1e-9)
    assert rows[0]["radius"] == pytest.approx(max_certifiable_radius(0.5, 300, 0.001))


@pytest.mark.parametrize("p", [0.8, 0.3])
def test_random_classifier_bound_matches_the_binomial_tail_of_its_counts(p):
    data = label_images([3, 7, 1])
    n = 2000
    cert = certifier(n0=50, n=n, batch_size=500, sigma=0.25, seed=5)
    rows = cert.certify_examples(RightWithProbability(p), data, ctx_for())
    for row in rows:
        n_a = row["nA"]
        if p > 0.5:
            assert abs(n_a / n - p) < 5 * math.sqrt(p * (1 - p) / n)  # the noise really is drawn per sample
            # Clopper-Pearson: the lowest pA under which seeing >= nA successes has probability alpha.
            assert binom.sf(n_a - 1, n, row["pA_lower"]) == pytest.approx(0.001, rel=1e-6)
            assert row["prediction"] == row["label"] and row["correct"]
            assert row["radius"] == pytest.approx(0.25 * PHI_INV(row["pA_lower"]), rel=1e-9)
        else:  # no class reaches one half: the true one has 0.3, each other (1 - p) / 9
            assert row["pA_lower"] < 0.5
            assert row["prediction"] == ABSTAIN and row["radius"] == 0.0 and not row["correct"]


def test_zero_sigma_is_the_base_classifier_with_radius_zero(one_thread):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    data = ImageSet(torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,)))
    cert = certifier(sigma=0.0, n0=10, n=20, batch_size=8)
    assert cert.warnings() == []  # a radius of 0 is what sigma 0 means, not a too-small n
    rows = cert.certify_examples(model, data, ctx_for())
    with torch.no_grad():
        base = model(data.images).argmax(1)
    assert [r["prediction"] for r in rows] == base.tolist()
    assert all(r["radius"] == 0.0 and r["nA"] == 20 for r in rows)
    summary = cert.summarize(rows, ctx_for())
    clean = float((base == data.labels).float().mean())
    assert summary["metrics"]["clean_smoothed_accuracy"] == pytest.approx(clean)
    assert summary["metrics"]["acr"] == 0.0 and summary["metrics"]["certified_accuracy@0.5"] == 0.0


@pytest.mark.parametrize("n_a,n", [(1, 10), (10, 10), (137, 200), (99_000, 100_000), (100_000, 100_000)])
def test_lower_bound_is_the_beta_quantile_of_the_spec(n_a, n):
    assert lower_confidence_bound(n_a, n, 0.001) == pytest.approx(beta.ppf(0.001, n_a, n - n_a + 1), rel=1e-12)
    assert lower_confidence_bound(0, n, 0.001) == 0.0


def test_predict_follows_the_two_sided_binomial_test():
    assert predict_from_counts([5, 90, 10], 0.001) == (1, pytest.approx(binomtest(90, 100, 0.5).pvalue))
    assert predict_from_counts([55, 45, 0], 0.001)[0] == ABSTAIN  # p-value 0.37
    assert predict_from_counts([0, 11], 0.001)[0] == 1  # 2 * 0.5^11 < 0.001
    assert predict_from_counts([10, 0], 0.001)[0] == ABSTAIN  # 2 * 0.5^10 > 0.001
    data = ImageSet(torch.rand(3, 1, 4, 4), torch.tensor([1, 1, 0]))
    cert = certifier(mode="predict", n=11, batch_size=4)
    rows = cert.certify_examples(Constant(c=1, k=3), data, ctx_for())
    assert [r["prediction"] for r in rows] == [1, 1, 1] and all(r["radius"] == 0.0 for r in rows)
    metrics = cert.summarize(rows, ctx_for())["metrics"]
    assert metrics == {"clean_smoothed_accuracy": pytest.approx(2 / 3), "abstain_rate": 0.0}


def test_an_n_too_small_to_certify_anything_is_a_config_error():
    assert min_certify_n(0.001) == 10 and 0.001 ** (1 / 10) >= 0.5 > 0.001 ** (1 / 9)
    assert min_predict_n(0.001) == 11
    with pytest.raises(ConfigValueError, match=r"n=9 .*use n >= 10"):
        build_config(CohenConfig, {"n": 9})
    with pytest.raises(ConfigValueError, match=r"use n >= 11"):
        build_config(CohenConfig, {"n": 10, "mode": "predict"})
    with pytest.raises(ConfigValueError, match="alpha"):
        build_config(CohenConfig, {"alpha": 0.0})
    one = ImageSet(torch.rand(1, 1, 2, 2), torch.tensor([2]))
    rows = certifier(n0=1, n=10).certify_examples(Constant(), one, ctx_for())
    assert rows[0]["prediction"] == 2 and 0 <= rows[0]["radius"] < 0.01  # n = n_min certifies, barely
    warnings = certifier(n=200).warnings()  # caps radii at 0.456: the 0.5 headline is 0 by construction
    assert len(warnings) == 1 and "0.456" in warnings[0]
    least = int(re.search(r"n >= (\d+) reaches 0.5", warnings[0]).group(1))
    assert 0.001 ** (1 / least) >= NormalDist().cdf(0.5 / 0.25) > 0.001 ** (1 / (least - 1))  # the least n that works
    assert certifier(n=least).warnings() == [] and certifier(n=least - 1).warnings() and certifier().warnings() == []


HAND_TSV = """index\tlabel\tprediction\tradius\tcorrect\tseconds\tpA_lower
0\t1\t1\t0.8\t1\t0.1\t0.99
1\t2\t2\t0.3\t1\t0.1\t0.88
2\t3\t-1\t0.0\t0\t0.1\t0.4
3\t4\t5\t1.2\t0\t0.1\t0.99
4\t0\t0\t0.0\t1\t0.1\t0.5
"""


def test_certified_accuracy_and_acr_of_a_hand_made_tsv(tmp_path):
    path = tmp_path / "hand.tsv"
    path.write_text(HAND_TSV)
    rows = certify_report.read_tsv(path)
    curve = certify_report.certified_curve(rows, [1.0, 0.0, 0.25, 0.5])
    assert curve == [[0.0, 3 / 5], [0.25, 2 / 5], [0.5, 1 / 5], [1.0, 0.0]]  # the wrong 1.2 never counts
    metrics = certify_report.metrics(rows)
    assert metrics["acr"] == pytest.approx((0.8 + 0.3) / 5)  # over all five rows, not the correct three
    assert metrics["abstain_rate"] == pytest.approx(1 / 5)
    assert metrics["clean_smoothed_accuracy"] == pytest.approx(3 / 5)
    assert metrics["certified_accuracy@0.5"] == pytest.approx(1 / 5)
    cohen = tmp_path / "cohen.tsv"  # locuslab/smoothing certify.py's columns
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.8\t1\t0:00:01.2\n5\t2\t-1\t0.0\t0\t0:00:01.1\n")
    assert certify_report.acr(certify_report.read_tsv(cohen)) == pytest.approx(0.4)


def test_summarize_writes_the_tsv_and_the_plot(tmp_path):
    data = ImageSet(torch.rand(4, 1, 4, 4), torch.tensor([2, 0, 2, 1]))
    ctx = ctx_for(tmp_path, run_index=3)
    cert = certifier(n0=10, n=1000, batch_size=250, sigma=0.5)
    summary = cert.certify(Constant(c=2), data, ctx)
    assert summary["tsv"] == "certify-3.tsv" and summary["plot"] == "certify-3.png" and summary["n"] == 4
    assert (tmp_path / "certify-3.png").read_bytes()[:4] == b"\x89PNG"
    rows = certify_report.read_tsv(tmp_path / "certify-3.tsv")
    radius = 0.5 * PHI_INV(0.001 ** (1 / 1000))
    assert [r["radius"] for r in rows] == [pytest.approx(radius, rel=1e-12)] * 4  # certified, right or wrong
    assert [r["correct"] for r in rows] == [True, False, True, False] and all(r["nA"] == 1000 for r in rows)
    assert summary["metrics"] == certify_report.metrics(rows)  # the file keeps full precision
    assert summary["metrics"]["acr"] == pytest.approx(radius / 2) and summary["curve"][0] == [0.0, 0.5]
    assert not (tmp_path / "eval-state" / "certify-3.jsonl").exists()  # partial rows removed once summarized


def test_rows_do_not_depend_on_order_or_sharding():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    data = ImageSet(torch.rand(10, 1, 4, 4), torch.randint(0, 4, (10,)))
    cert = certifier(n0=20, n=100, batch_size=32, sigma=0.5)
    whole = cert.certify_examples(model, data, ctx_for(seed=3))
    halves = cert.certify_examples(model, data, ctx_for(seed=3), indices=[5, 6, 7, 8, 9])
    halves += cert.certify_examples(model, data, ctx_for(seed=3), indices=torch.arange(5))
    assert without_time(sorted(halves, key=lambda r: r["index"])) == without_time(whole)
    assert len({r["nA"] for r in whole}) > 1  # the model is not trivially constant under noise
    other_seed = cert.certify_examples(model, data, ctx_for(seed=4))
    assert without_time(other_seed) != without_time(whole)
    skipping = certifier(skip=3, max_examples=3).certify_examples(Constant(), data, ctx_for())
    assert [r["index"] for r in skipping] == [0, 3, 6]


class Interrupted(Exception):
    pass


class CountingModel(torch.nn.Module):
    """Counts forward passes; raises after ``fail_after`` of them (an interruption mid-example)."""

    def __init__(self, fail_after=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        self.calls, self.fail_after = 0, fail_after

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Interrupted
        return self.net(x)


def test_resumed_certification_skips_finished_rows(tmp_path):
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    data = ImageSet(images, torch.tensor([0, 1, 2, 3, 0, 1]))
    cert = certifier(n0=10, n=40, batch_size=10)  # 5 forward passes an example
    reference = cert.certify_examples(CountingModel(), data, ctx_for(tmp_path / "ref"))
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        cert.certify_examples(CountingModel(fail_after=12), data, ctx_for(out))  # dies inside example 2
    partial = (out / "eval-state" / "certify-0.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 2  # the fingerprint line and two finished rows
    resumed_model = CountingModel()
    resumed = cert.certify_examples(resumed_model, data, ctx_for(out, resume=True))
    assert resumed_model.calls == 4 * 5  # examples 2..5 only
    assert without_time(resumed) == without_time(reference)
    fresh_model = CountingModel()
    cert.certify_examples(fresh_model, data, ctx_for(out))  # not resuming: everything again
    assert fresh_model.calls == 6 * 5
    with pytest.raises(RtkError, match="does not match this certification .*config"):
        other = certifier(n0=10, n=40, batch_size=10, sigma=0.5)
        other.certify_examples(CountingModel(), data, ctx_for(out, resume=True))


def test_rtk_run_certifies_and_writes_rows(write_recipe, tmp_path, cli, one_thread):
    recipe = write_recipe(TINY_RECIPE + '\n[certify]\ncertifier = "cohen"\nsigma = 0.25\nn0 = 10\nn = 200\n'
                                        'batch_size = 100\nmax_examples = 5\n')
    out = tmp_path / "out"
    result = cli("run", recipe, "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    certify = run["certify"]
    assert set(certify["metrics"]) == {"certified_accuracy@0.5", "acr", "abstain_rate", "clean_smoothed_accuracy"}
    assert certify["n"] == 5 and certify["tsv"] == "certify-0.tsv" and certify["sigma"] == 0.25
    rows = certify_report.read_tsv(out / certify["tsv"])
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert certify["metrics"]["acr"] == pytest.approx(certify_report.acr(rows))
    assert certify["metrics"]["certified_accuracy@0.5"] == 0.0 and certify["warnings"]  # n = 200 caps radii at 0.456
    assert "certify-sample-size" in [f["name"] for f in run["flags"]]  # the warning is a flag of the run
    assert all(r["radius"] <= certify["max_certifiable_radius"] + 1e-12 for r in rows)
    assert (out / "certify-0.png").is_file() and not (out / "eval-state").exists()


def test_rows_name_test_set_images_when_a_subset_is_evaluated(write_recipe, tmp_path, cli, one_thread):
    recipe = write_recipe(TINY_RECIPE + '\n[certify]\ncertifier = "cohen"\nn0 = 10\nn = 100\nbatch_size = 100\n'
                                        'skip = 2\nmax_examples = 4\n')
    out = tmp_path / "out"
    result = cli("run", recipe, "--out", out, "--quiet", "--set", "eval.n=20", "--set", 'eval.subset="stride"')
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    rows = certify_report.read_tsv(out / run["certify"]["tsv"])
    digits = build_config(DigitsConfig, {"classes": [5, 6, 7, 8, 9]})
    total = len(apply_options(load_digits(digits), digits).test)  # the target's test set: 269 images
    evaluated = [i * total // 20 for i in range(20)]  # eval.subset = "stride": 20 spread over the test set
    assert [r["index"] for r in rows] == evaluated[0:8:2]  # skip 2 of those, the first 4; indices in the test set


def test_rtk_run_resumed_mid_certification_keeps_finished_rows(write_recipe, tmp_path, monkeypatch, one_thread):
    from rtk.config.recipe import load_recipe
    from rtk.registry import default_registry
    from rtk.stages.runner import Runner

    recipe = write_recipe(TINY_RECIPE + '\n[certify]\ncertifier = "cohen"\nn0 = 10\nn = 100\nbatch_size = 100\n'
                                        'max_examples = 6\n')
    real = CohenCertifier.certify_one
    calls = []

    def counted(self, *args, limit=None):
        calls.append(1)
        if limit is not None and len(calls) > limit:
            raise Interrupted
        return real(self, *args)

    out = tmp_path / "out"
    monkeypatch.setattr(CohenCertifier, "certify_one", lambda self, *a: counted(self, *a, limit=4))
    with pytest.raises(Interrupted):
        Runner(load_recipe(recipe), default_registry(), out, show_progress=False).run()
    assert len((out / "eval-state" / "certify-0.jsonl").read_text().splitlines()) == 1 + 4
    calls.clear()
    monkeypatch.setattr(CohenCertifier, "certify_one", lambda self, *a: counted(self, *a))
    resumed = Runner(load_recipe(recipe), default_registry(), out, show_progress=False, resume=True).run()
    assert len(calls) == 2  # the model reloaded from its checkpoint has the same digest: 4 rows reused
    calls.clear()
    fresh = Runner(load_recipe(recipe), default_registry(), tmp_path / "fresh", show_progress=False).run()
    assert len(calls) == 6
    assert resumed["runs"][0]["certify"] == fresh["runs"][0]["certify"]
    rows = [certify_report.read_tsv(folder / "certify-0.tsv") for folder in (out, tmp_path / "fresh")]
    assert without_time(rows[0]) == without_time(rows[1])
