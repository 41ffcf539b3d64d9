"""compress(client=...) on a 2-worker LocalCluster: serial bits, a killed worker, resuming."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
distributed = pytest.importorskip("distributed")

from torch import nn  # noqa: E402

import sekron.torch.compression as compression  # noqa: E402
from sekron.errors import ArgumentError, FormatError  # noqa: E402
from sekron.torch import compress  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit="1GiB",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _model():
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten()]
    layers += [nn.Linear(8 * 4 * 4, 48), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(48, 48), nn.ReLU()]
    layers.append(nn.Linear(48, 10))
    return nn.Sequential(*layers).eval()


def _calibration():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(32, 3, 4, 4, generator=g) for _ in range(3)]


_OPTS = dict(ratio=4, max_candidates=2, progress=False, random_state=0)


@pytest.fixture(scope="module")
def serial():
    return compress(_model(), calibration=_calibration(), **_OPTS)


def _assert_same(got, want):
    (gm, grep), (wm, wrep) = got, want
    assert list(grep) == list(wrep)
    gs, ws = gm.state_dict(), wm.state_dict()
    assert list(gs) == list(ws)
    for k, w in ws.items():
        if isinstance(w, torch.Tensor):
            assert gs[k].dtype == w.dtype and torch.equal(gs[k], w), k
        else:  # a layer's extra state
            assert gs[k] == w, k
    assert [type(m) for m in gm.modules()] == [type(m) for m in wm.modules()]
    for g, w in zip(gm.modules(), wm.modules(), strict=True):
        if getattr(w, "selection", None) is not None:
            assert g.selection.structure == w.selection.structure
            assert g.fit_relative_error == w.fit_relative_error


def test_cluster_fits_are_bit_identical_to_serial(client, serial):
    """Workers run 1 BLAS/torch thread (the nanny's setting), the caller 2: same bits."""
    got = compress(_model(), calibration=_calibration(), client=client, **_OPTS)
    _assert_same(got, serial)
    assert sum(r.skipped is None for r in got[1]) >= 5


def test_a_worker_killed_mid_fit_costs_a_retry_not_a_layer(client, serial):
    pids = client.run(os.getpid)
    killed: dict[str, object] = {}

    def kill_when_busy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for addr, keys in client.processing().items():
                if any(str(k).startswith("sekron-fit-") for k in keys) and addr in pids:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.update(addr=addr, keys=keys)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=kill_when_busy)
    thread.start()
    got = compress(_model(), calibration=_calibration(), client=client, **_OPTS)
    thread.join()
    assert killed, "no fit was seen running"
    assert killed["addr"] not in client.run(os.getpid)  # that worker is gone
    _assert_same(got, serial)


def test_resume_reads_stored_fits_and_refits_nothing(client, serial, tmp_path, monkeypatch):
    first = compress(
        _model(), calibration=_calibration(), client=client, resume_dir=tmp_path, **_OPTS
    )
    _assert_same(first, serial)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == len(serial[1])  # one per layer, also those kept dense

    def no_refit(job):
        raise AssertionError(f"refitted {job.name}")

    monkeypatch.setattr(compression, "_fit_layer", no_refit)
    _assert_same(
        compress(_model(), calibration=_calibration(), resume_dir=tmp_path, **_OPTS), serial
    )

    # a lost file is refitted (here, in the caller) and only that one
    monkeypatch.undo()
    lost = files[2]
    lost.unlink()
    fitted = []
    real = compression._fit_layer
    monkeypatch.setattr(compression, "_fit_layer", lambda job: fitted.append(job.name) or real(job))
    _assert_same(
        compress(_model(), calibration=_calibration(), resume_dir=tmp_path, **_OPTS), serial
    )
    assert len(fitted) == 1 and lost.exists()


def test_resume_refuses_a_fit_of_other_weights(tmp_path):
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    compress(net, ratio=2, progress=False, resume_dir=tmp_path)
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0
    with pytest.raises(FormatError, match=r"holds a fit of layer '0' from other weights"):
        compress(net, ratio=2, progress=False, resume_dir=tmp_path)
    with pytest.raises(FormatError, match="other weights, Gram or options"):
        compress(net, ratio=3, progress=False, resume_dir=tmp_path)


def test_options_are_checked_before_any_work(tmp_path):
    net = nn.Sequential(nn.Linear(16, 16))
    with pytest.raises(ArgumentError, match="random_state"):
        compress(net, ratio=2, resume_dir=tmp_path, random_state=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match="resume_dir"):
        compress(net, ratio=2, resume_dir=tmp_path / "missing")
    with pytest.raises(ArgumentError, match="client"):
        compress(net, ratio=2, client="tcp://127.0.0.1:8786")


def test_cli_compress_weights_on_the_cluster_match_serial(client):
    """``sekron compress --scheduler/--workers``: the same tensors and reports as serial."""
    from sekron.cli.checkpoint import cluster_client, compress_weights

    rng = np.random.default_rng(0)
    weights = {f"l{i}.weight": rng.normal(size=(48, 64)).astype(np.float32) for i in range(4)}
    weights["l0.bias"] = np.zeros(48, np.float32)
    grams = {"l1": np.cov(rng.normal(size=(64, 200)))}
    want = compress_weights(weights, ratio=4, min_size=100, grams=grams)
    got = compress_weights(weights, ratio=4, min_size=100, grams=grams, client=client)
    assert got[1] == want[1]
    assert list(got[0]) == list(want[0])
    for k, w in want[0].items():
        g = got[0][k]
        if isinstance(w, np.ndarray):
            assert np.array_equal(g, w)
        else:
            assert all(np.array_equal(a, b) for a, b in zip(g.factors, w.factors, strict=True))
    assert cluster_client(None, None) is None
    with pytest.raises(ValueError, match="--workers"):
        cluster_client(None, 0)
