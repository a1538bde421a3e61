"""Figures of the training runs (matplotlib, imported when a figure is drawn)."""
from __future__ import annotations

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str) -> None:
    """Per-epoch gesture loss, accuracy and active-token fraction (train and validation)."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set_title("gesture loss")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="train")
    ax[1].plot(ep, [h["val_accuracy"] for h in history], label="validation")
    ax[1].set_title("gesture accuracy (per frame)")
    ax[2].plot(ep, [h["train_active"] for h in history], label="train")
    ax[2].plot(ep, [h["val_active"] for h in history], label="validation")
    ax[2].set_title("change-mask active-token fraction")
    for a in ax:
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(conf: np.ndarray, path: str, title: str) -> None:
    """Row-normalised confusion matrix (true x predicted gesture)."""
    plt = _pyplot()
    norm = conf / np.maximum(1, conf.sum(axis=1, keepdims=True))
    names = GESTURE_CLASSES[:len(norm)]
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(norm)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(norm)), names, fontsize=7)
    for i in range(len(norm)):
        for j in range(len(norm)):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
