"""Regenerate ``sekron/data/digits_mlp.npz``: the embedded default tensor of the CLI.

A 64-256-10 MLP trained on scikit-learn's bundled digits (8×8 images); the file keeps
its first weight matrix (256 × 64, input pixels in row-major 8×8 order) and its test
accuracy. Deterministic: run ``python tools/make_default_tensor.py`` to rebuild it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=0)
    clf.fit(X_tr, y_tr)
    acc = clf.score(X_te, y_te)
    W1 = clf.coefs_[0].T.astype(np.float32)  # (256, 64): out × in, like torch's Linear
    out = Path(__file__).resolve().parents[1] / "sekron" / "data" / "digits_mlp.npz"
    np.savez_compressed(out, W1=W1, test_accuracy=np.float64(acc))
    print(f"wrote {out} (W1 {W1.shape}, test accuracy {acc:.4f})")


if __name__ == "__main__":
    main()
