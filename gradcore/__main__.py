"""``python -m gradcore``: print the build information, then train a small network."""
from __future__ import annotations

import time

import numpy as np

import gradcore
import gradcore.functional as F


def _print_info() -> None:
    print("gradcore", gradcore.__version__)
    for key, value in gradcore.info().items():
        print(f"  {key:>16}: {value}")


def _demo(epochs: int = 30, batch: int = 64, seed: int = 0) -> None:
    """A 3-layer ReLU network learning a synthetic 3-class problem with plain SGD momentum."""
    rng = np.random.default_rng(seed)
    n, d, k = 2048, 20, 3
    centers = rng.normal(0, 1.5, size=(k, d))
    y = rng.integers(0, k, size=n)
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)

    sizes = [d, 64, 64, k]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = rng.normal(0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)
        params += [gradcore.Tensor(W, requires_grad=True), gradcore.Tensor(np.zeros(fan_out, np.float32), requires_grad=True)]
    velocity = [np.zeros_like(p.data) for p in params]

    def forward(xb):
        h = F.linear(xb, params[0], params[1], activation="relu")
        h = F.linear(h, params[2], params[3], activation="relu")
        return F.linear(h, params[4], params[5])

    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(forward(X[idx]), y[idx])
            for p in params:
                p.grad = None
            loss.backward()
            for p, v in zip(params, velocity):
                v *= 0.9
                v += p.grad
                p.data -= 0.05 * v
            total += loss.item() * len(idx)
        if epoch % 5 == 0 or epoch == epochs - 1:
            with gradcore.no_grad():
                acc = float(np.mean(np.argmax(forward(X).data, axis=1) == y))
            print(f"  epoch {epoch + 1:3d}  loss {total / n:.4f}  accuracy {acc:.3f}")
    print(f"trained 3-layer network ({sum(p.size for p in params)} parameters) in {time.perf_counter() - t0:.2f} s")


def main() -> None:
    _print_info()
    print()
    _demo()


if __name__ == "__main__":
    main()
