"""``python -m gradcore``: print the build information, then train a small network."""
from __future__ import annotations

import argparse
import time

import numpy as np

import gradcore
from gradcore import nn, optim
from gradcore.datasets import make_classification, train_test_split


def _print_info() -> None:
    print("gradcore", gradcore.__version__)
    for key, value in gradcore.info().items():
        print(f"  {key:>18}: {value}")


def _demo(epochs: int = 12) -> None:
    """A 3-layer network (Dense + BatchNorm + ReLU + Dropout, He init) on a synthetic
    3-class problem, trained with AMSGrad and global-norm clipping."""
    gradcore.manual_seed(0)
    X, y = make_classification(n_samples=4000, n_features=20, n_informative=6, n_redundant=4, n_classes=3,
                               random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    net = nn.Sequential(
        nn.Dense(20, 64, activation="relu"), nn.BatchNorm(64), nn.Dropout(0.1),
        nn.Dense(64, 64, activation="relu"),
        nn.Dense(64, 3),
    )
    net.compile(optim.Adam(net.parameters(), lr=2e-3, amsgrad=True, global_clip_norm=5.0),
                loss="crossentropy", metrics=["accuracy"])
    print(f"\ntraining a 3-layer network ({net.count_params()} parameters) on {len(X_train)} samples:")
    t0 = time.perf_counter()
    net.fit(X_train, y_train, epochs=epochs, batch_size=64, validation_split=0.1, verbose=2)
    seconds = time.perf_counter() - t0
    test_loss, test_acc = net.evaluate(X_test, y_test, verbose=0)
    print(f"test loss {test_loss:.4f}, test accuracy {test_acc:.3f} ({seconds:.2f} s of training)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gradcore",
        description="Print gradcore's build information, then train a small network as a smoke test. "
                    "The gradient-monitor experiments are `python -m gradcore.lab`.")
    parser.add_argument("--info", action="store_true", help="print the build information only")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the demo (default 12)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    _print_info()
    if not args.info:
        _demo(args.epochs)


if __name__ == "__main__":
    main()
