"""Tests for the MRS core (enas_rnn.scores.mrs) and the sine reproduction script's quick mode."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from enas_rnn.errors import ConfigError
from enas_rnn.scores import SCORES, make_score, register_score
from enas_rnn.scores.lm import LMSpec, MRSScore
from enas_rnn.scores.mrs import (
    ERRORS,
    MRSConfig,
    MRSResult,
    ThresholdTracker,
    mrs_score_module,
    mrs_score_regression,
    randomize_,
    resolve_hi,
    score_from_errors,
    truncnorm_log_cdf,
)

REPO = Path(__file__).resolve().parents[1]


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _hand_cdf(t: float, m: float, s: float, lo: float, hi: float) -> float:
    """Closed form of the truncated normal cdf with math.erf."""
    return (_phi((t - m) / s) - _phi((lo - m) / s)) / (_phi((hi - m) / s) - _phi((lo - m) / s))


# --------------------------------------------------------------------------- truncated normal


@pytest.mark.parametrize(
    "t, m, s, lo, hi",
    [
        (0.01, 0.5, 0.2, 0.0, 2.0),
        (0.3, 0.5, 0.2, 0.0, 1.0),
        (0.8, 0.4, 0.3, 0.0, 1.0),
        (0.01, -0.2, 0.4, 0.0, 2.0),  # mean below the support
        (1.5, 3.0, 0.5, 0.0, 2.0),  # mean above the support
    ],
)
def test_truncnorm_matches_hand_computation(t, m, s, lo, hi) -> None:
    log_p, p = truncnorm_log_cdf(t, m, s, lo, hi)
    ref = _hand_cdf(t, m, s, lo, hi)
    assert p == pytest.approx(ref, rel=1e-9)
    assert log_p == pytest.approx(math.log(ref), rel=1e-9)


def test_truncnorm_deep_tail_stays_finite_and_ordered() -> None:
    # P is ~1e-1036 here: it underflows, but log p is still exact and ordered.
    a, p_a = truncnorm_log_cdf(0.01, 0.7, 0.01, 0.0, 2.0, floor=0.0)
    b, _ = truncnorm_log_cdf(0.01, 0.6, 0.01, 0.0, 2.0, floor=0.0)
    assert p_a == 0.0 and math.isfinite(a) and a < b < math.log(1e-300)
    # Mills-ratio asymptotics: log Phi(x) ~ -x^2/2 - log(-x) - log(sqrt(2 pi)).
    x = (0.01 - 0.7) / 0.01
    approx = -x * x / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi)
    assert a == pytest.approx(approx, rel=1e-3)
    # With the default floor the score is clamped at log(1e-300).
    clamped, _ = truncnorm_log_cdf(0.01, 0.7, 0.01, 0.0, 2.0)
    assert clamped == pytest.approx(math.log(1e-300))


def test_truncnorm_sd_zero_is_point_mass() -> None:
    assert truncnorm_log_cdf(0.5, 0.3, 0.0, 0.0, 1.0) == (0.0, 1.0)
    assert truncnorm_log_cdf(0.5, 0.5, 0.0, 0.0, 1.0) == (0.0, 1.0)  # mean == t counts
    log_p, p = truncnorm_log_cdf(0.5, 0.7, 0.0, 0.0, 1.0)
    assert p == 0.0 and log_p == pytest.approx(math.log(1e-300))


def test_truncnorm_outside_support_and_floor() -> None:
    log_p, p = truncnorm_log_cdf(-0.1, 0.5, 0.2, 0.0, 1.0, floor=1e-10)
    assert p == 0.0 and log_p == pytest.approx(math.log(1e-10))
    assert truncnorm_log_cdf(-0.1, 0.5, 0.2, 0.0, 1.0, floor=0.0)[0] == -math.inf
    assert truncnorm_log_cdf(1.0, 0.5, 0.2, 0.0, 1.0) == (0.0, 1.0)
    # hi = inf (unbounded errors such as cross-entropy)
    _, p = truncnorm_log_cdf(1.0, 2.0, 1.0, 0.0, math.inf)
    assert p == pytest.approx((_phi(-1.0) - _phi(-2.0)) / (1.0 - _phi(-2.0)))
    with pytest.raises(ValueError):
        truncnorm_log_cdf(0.5, 0.5, 0.1, 1.0, 1.0)


def test_score_from_errors() -> None:
    errs = [0.4, 0.5, 0.6, 0.45, 0.55]
    res = score_from_errors(errs, threshold=0.3, lo=0.0, hi=1.0)
    mean = sum(errs) / len(errs)
    sd = math.sqrt(sum((e - mean) ** 2 for e in errs) / len(errs))  # ddof=0, like the authors
    assert res.mean == pytest.approx(mean) and res.sd == pytest.approx(sd)
    assert res.p == pytest.approx(_hand_cdf(0.3, mean, sd, 0.0, 1.0))
    assert res.score == pytest.approx(math.log(res.p)) and res.score == res.log_p
    assert res.samples == tuple(errs) and res.threshold == 0.3 and res.seconds == 0.0
    # identical errors: sd == 0 handled exactly
    assert score_from_errors([0.2, 0.2], 0.3, 0.0, 1.0).p == 1.0
    # a non-finite error counts as the worst error hi
    res_nan = score_from_errors([0.5, math.nan], 0.3, 0.0, 1.0)
    assert res_nan.mean == pytest.approx(0.75)
    assert "samples" not in res.to_dict() and "samples" in res.to_dict(with_samples=True)


# --------------------------------------------------------------------------- sampling


def _net() -> nn.Module:
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 1), nn.Tanh())


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 3, generator=g)
    return x, torch.sin(x.sum(dim=1))  # shape: (64,); the net outputs (64, 1)


def test_normal_and_uniform_draws() -> None:
    lin = nn.Linear(200, 100)
    randomize_(lin, "uniform", 0.25, torch.Generator().manual_seed(0))
    w = torch.cat([p.flatten() for p in lin.parameters()])
    assert w.abs().max() <= 0.25 and w.abs().max() > 0.24
    assert abs(w.mean().item()) < 0.01
    randomize_(lin, "normal", 2.0, torch.Generator().manual_seed(0))
    w = torch.cat([p.flatten() for p in lin.parameters()])
    assert w.std().item() == pytest.approx(2.0, rel=0.03)
    assert w.abs().max() > 2.0  # not bounded like the uniform draw


def test_init_draws_use_reset_parameters_and_are_seeded() -> None:
    lin = nn.Linear(400, 50)
    bound = 1.0 / math.sqrt(400)  # torch's default Linear init bound
    randomize_(lin, "init", 99.0, torch.Generator().manual_seed(1))
    w1 = lin.weight.detach().clone()
    assert w1.abs().max() <= bound  # scale is ignored for "init"
    state = torch.random.get_rng_state()
    randomize_(lin, "init", 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(lin.weight, w1)  # same generator seed, same draw
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    randomize_(lin, "init", 1.0, torch.Generator().manual_seed(2))
    assert not torch.equal(lin.weight, w1)


def test_init_requires_reset_parameters() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="uncovered"):
        randomize_(Raw(), "init", 1.0, torch.Generator())
    with pytest.raises(ValueError, match="unknown dist"):
        randomize_(Raw(), "cauchy", 1.0, torch.Generator())


def test_determinism_and_seed() -> None:
    net = _net()
    x, y = _data()
    cfg = MRSConfig(samples=8, seed=3, hi=2.0)
    a = mrs_score_regression(net, x, y, cfg)
    b = mrs_score_regression(net, x, y, cfg)
    c = mrs_score_regression(net, x, y, MRSConfig(samples=8, seed=4))
    assert a.samples == b.samples and a.score == b.score
    assert a.samples != c.samples
    assert len(a.samples) == 8 and isinstance(a, MRSResult) and a.seconds > 0


def test_module_restored_after_scoring() -> None:
    net = _net()
    net.train()
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn, net)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    for dist in ("normal", "uniform", "init"):
        mrs_score_regression(model, x, y, MRSConfig(samples=3, dist=dist))
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), dist
        assert model.training and net[2].training  # train/eval flags restored


def test_scoring_runs_in_eval_mode_without_grad() -> None:
    net = _net()
    x, y = _data()
    seen: list[tuple[bool, bool]] = []

    def err(m: nn.Module) -> float:
        seen.append((m.training, torch.is_grad_enabled()))
        return 0.5

    res = mrs_score_module(net, err, MRSConfig(samples=2, hi=1.0))
    assert seen == [(False, False), (False, False)]
    assert res.sd == 0.0 and res.p == 0.0  # constant error 0.5 > t = 0.01


def test_error_and_hi_registry() -> None:
    assert resolve_hi(MRSConfig()) == ERRORS["mae"].hi == 2.0
    assert resolve_hi(MRSConfig(hi=1.0)) == 1.0
    with pytest.raises(KeyError, match="unknown error"):
        resolve_hi(MRSConfig(error="nope"))


# --------------------------------------------------------------------------- thresholds


def test_quantile_threshold_tracker() -> None:
    tr = ThresholdTracker(quantile=0.5)
    with pytest.raises(ValueError):
        tr.threshold()
    # First item: the median of its own errors.
    assert tr.threshold([1.0, 2.0, 3.0]) == 2.0
    tr.add([1.0, 2.0, 3.0])
    tr.add([5.0, 6.0, 7.0, math.nan])  # NaN counts as +inf, the worst error
    assert len(tr) == 2
    assert tr.threshold() == pytest.approx(5.0)
    assert tr.threshold([0.0]) == pytest.approx(3.0)
    res = score_from_errors([1.0, 2.0, 3.0], 0.01, 0.0, 10.0)
    re = tr.rescore(res, 0.0, 10.0)
    assert re.threshold == pytest.approx(5.0) and re.p > res.p
    with pytest.raises(ValueError):
        ThresholdTracker(quantile=1.0)


def test_quantile_mode_in_scoring_updates_tracker() -> None:
    net = _net()
    x, y = _data()
    cfg = MRSConfig(samples=10, threshold_mode="quantile", quantile=0.2)
    tr = ThresholdTracker(cfg.quantile)
    r1 = mrs_score_regression(net, x, y, cfg, tracker=tr)
    assert len(tr) == 1
    errs = sorted(r1.samples)
    assert errs[0] <= r1.threshold <= errs[-1]
    r2 = mrs_score_regression(net, x, y, MRSConfig(samples=10, threshold_mode="quantile", quantile=0.2, seed=1), tracker=tr)
    assert len(tr) == 2 and r2.threshold == pytest.approx(tr.threshold())
    # No tracker: falls back to the item's own errors.
    r3 = mrs_score_regression(net, x, y, cfg)
    assert r3.threshold == pytest.approx(r1.threshold)


# --------------------------------------------------------------------------- registry


def test_score_registry() -> None:
    assert SCORES["mrs"] is MRSScore and {"mrs", "hidden_cov"} <= set(SCORES)
    assert isinstance(make_score("mrs", LMSpec(10, 4, 4), MRSConfig()), MRSScore)
    with pytest.raises(ConfigError, match="unknown score 'nope'.*hidden_cov, mrs"):
        make_score("nope", LMSpec(10, 4, 4), MRSConfig())
    with pytest.raises(ValueError, match="already registered"):
        register_score("mrs")(type("Dup", (), {}))
    name = "_test_dummy_score"
    try:

        @register_score(name)
        class Dummy:
            def __init__(self, spec, cfg, cache=None, pool=0) -> None:
                self.cfg = cfg

            def __call__(self, genotypes, data):
                return [self.cfg] * len(genotypes)

        assert make_score(name, None, 1.5)([None, None], None) == [1.5, 1.5]
    finally:
        SCORES.pop(name, None)


# --------------------------------------------------------------------------- script


def _load_sine_script():
    spec = importlib.util.spec_from_file_location("mrs_sine", REPO / "scripts" / "mrs_sine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sine_keras_lstm_matches_torch_lstm_and_keras_hard_sigmoid() -> None:
    """The script's Keras LSTM (gate order i, f, c, o, one bias) is nn.LSTM with bias_hh = 0 when its
    gates are sigmoids; Keras 2's hard sigmoid is clip(0.2 z + 0.5, 0, 1)."""
    sine = _load_sine_script()
    g = torch.Generator().manual_seed(0)
    layer = sine.KerasLSTM(3, 5, gate="sigmoid")
    ref = nn.LSTM(3, 5, batch_first=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(generator=g)
        ref.weight_ih_l0.copy_(layer.kernel.T)
        ref.weight_hh_l0.copy_(layer.recurrent_kernel.T)
        ref.bias_ih_l0.copy_(layer.bias)
        ref.bias_hh_l0.zero_()
        x = torch.randn(4, 7, 3, generator=g)
        assert torch.allclose(layer(x, sequences=True), ref(x)[0], atol=1e-6)
        assert torch.allclose(layer(x, sequences=False), ref(x)[0][:, -1], atol=1e-6)
    z = torch.tensor([-3.0, -2.5, 0.0, 1.0, 2.5, 3.0])
    assert sine.hard_sigmoid(z).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.7, 1.0, 1.0])
    # MRS redraws every weight: a SineNet has no parameter outside kernel/recurrent/bias/dense.
    names = {n.split(".")[-1] for n, _ in sine.SineNet([2, 3]).named_parameters()}
    assert names == {"kernel", "recurrent_kernel", "bias", "weight"}


def test_sine_grid_is_the_authors_space_and_seeded() -> None:
    sine = _load_sine_script()
    grid = sine.choose_grid(20, [1, 2, 3], seed=0)
    assert grid == sine.choose_grid(20, [1, 2, 3], seed=0) and len(set(grid)) == 60
    for widths, lb in grid:
        assert 1 <= len(widths) <= 3 and all(1 <= w <= 10 for w in widths) and 2 <= lb <= 20
    data = sine.load_data()
    assert data["train"].numel() == 1000 and data["test"].numel() == 200
    assert float(data["train"].min()) == pytest.approx(0.0, abs=1e-9) and float(data["train"].max()) == pytest.approx(1.0)


@pytest.mark.slow
def test_mrs_sine_quick(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "mrs_sine.py"), "--quick", "--lookback1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "mrs_sine.csv")))
    assert rows and {"layers", "widths", "look_back", "mrs_mean", "mrs_sd", "mrs_log_p", "mae_e3"} <= set(rows[0])
    main = [r for r in rows if r["variant"] == "authors"]
    assert len(main) == 12 and all(2 <= int(r["look_back"]) <= 20 for r in main)
    assert {int(r["look_back"]) for r in rows if r["variant"] == "lookback1"} == {1}
    assert all(0.0 <= float(r["mrs_mean"]) <= 1.0 and float(r["mrs_log_p"]) >= math.log(1e-300) for r in rows)
    assert (tmp_path / "mrs_sine_scatter.png").stat().st_size > 0
    assert "Pearson" in proc.stdout and "Ablation" in proc.stdout
