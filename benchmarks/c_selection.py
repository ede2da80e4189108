"""Logistic C selection against the test-oracle C on real digits.

sklearn's 8×8 digits scaled to [0, 1], a fixed test set of 60 images per class, and
nested episodes: in episode ``e`` the 9-shot support is inside the 10-shot one, which
is inside the 11-shot one. For each support the protocol chooses C on its own training
images; the oracle is the best test score over fixed-C fits on the same grid. Reports
the mean balanced accuracy per shot count and the mean gap to the oracle. Run it from a
checkout of another version to compare selection rules. Not collected by pytest.

Usage::

    python benchmarks/c_selection.py                       # 10 episodes, 23-point grid
    python benchmarks/c_selection.py --episodes 4 --n-c 12 # the test's setting
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from featkit.metrics import balanced_accuracy
from featkit.protocols import create_protocol
from featkit_protocols.logistic import c_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--n-c", type=int, default=23, help="grid points over 10^[-6, 5]")
    parser.add_argument("--shots", default="9,10,11")
    args = parser.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(y.size)
    test = np.concatenate([perm[y[perm] == c][-60:] for c in range(10)])
    pool = np.setdiff1d(np.arange(y.size), test)
    scores: dict[int, list[float]] = {s: [] for s in shots}
    gaps: dict[int, list[float]] = {s: [] for s in shots}
    chosen: dict[int, list[float]] = {s: [] for s in shots}
    with threadpool_limits(1):
        for episode in range(args.episodes):
            rng = np.random.default_rng(100 + episode)
            order = [rng.permutation(pool[y[pool] == c]) for c in range(10)]
            for s in shots:
                support = np.concatenate([members[:s] for members in order])
                model = create_protocol("logistic", n_c=args.n_c).fit(X[support], y[support])
                score = balanced_accuracy(y[test], model.predict(X[test]))
                oracle = max(
                    balanced_accuracy(
                        y[test],
                        create_protocol("logistic", c=float(c))
                        .fit(X[support], y[support])
                        .predict(X[test]),
                    )
                    for c in c_grid(args.n_c)
                )
                scores[s].append(score)
                gaps[s].append(oracle - score)
                chosen[s].append(float(model.C_))
    print(f"digits, {args.episodes} nested episodes, {args.n_c}-point C grid")
    print("shots  balanced_acc  gap_to_oracle  chosen C per episode")
    for s in shots:
        cs = " ".join(f"{c:.2g}" for c in chosen[s])
        print(f"{s:5d}  {100 * np.mean(scores[s]):12.1f}  {100 * np.mean(gaps[s]):13.2f}  {cs}")


if __name__ == "__main__":
    main()
