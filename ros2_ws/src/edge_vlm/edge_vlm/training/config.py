"""Configurations of the training commands (``edge-vlm train``): plain dataclasses, no torch,
so that the command line can show their defaults without loading the model code."""
from __future__ import annotations

from dataclasses import dataclass

LIGHTINGS = ("lab", "fluorescent", "natural")


@dataclass
class TrainConfig:
    out: str = "data/train/captioner.pt"
    subjects: int = 20
    val_subjects: int = 3
    test_subjects: int = 3
    clip_s: float = 1.5
    gap_s: float = 0.3
    epochs: int = 15
    batch: int = 24
    steps_per_epoch: int = 100
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 2
    workers: int = 2
    patience: int = 5
    rgb_prob: float = 0.3
    period_ns: int = 33_333_333
    dim: int = 128
    depth: int = 4
    window: int = 32
    caption_weight: float = 0.5
    # lambda of the latency term: lambda * max(0, E[active ratio] - active_target)
    active_weight: float = 2.0
    # expected active-token ratio allowed for free (a budget, not a push to 0)
    active_target: float = 0.08
    eval_frames: int = 600
    # real data (`edge-vlm train --data DvsGesture`): the folder ("" = simulated recordings),
    # users of the official train trials held out for validation, labelled test frames scored
    # (0 = all), folder of the memory-mapped frame histograms ("" = in memory)
    data: str = ""
    val_users: int = 3
    test_frames: int = 0
    frames_dir: str = ""


@dataclass
class AncTrainConfig(TrainConfig):
    out: str = "data/train_anc/captioner.pt"
    init: str = ""                 # STTF checkpoint to grow from ("" = the shipped one)
    epochs: int = 4
    batch: int = 12
    steps_per_epoch: int = 100
    lr: float = 1e-3
    cost_weight: float = 0.3
    balance_weight: float = 0.1
    complexity_weight: float = 1.0
    gate_weight: float = 1.0
    beta_min: float = 0.25
    sparse_prob: float = 0.7       # share of steps that train the sparse path with masks
    sparse_max_age: int = 8        # ... from a dense pass 1..sparse_max_age frames back
    shift_px: int = 16             # augmentation: random translation of each training window
    patience: int = 3
    eval_frames: int = 480


@dataclass
class GestureFitConfig(TrainConfig):
    init: str = ""                      # checkpoint to add the head to ("" = the shipped one)
    out: str = "data/train_gesture/captioner.pt"
    epochs: int = 20
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mirror: bool = True
    motion_width: int = 32              # channels of the head's first convs
    shift: int = 1                      # training: motion states moved by up to this many patches
    cache: str = ""                     # collected frames' file (reused if init and data match)
    scenes: bool = True                 # also the scenes beyond the gestures (scene head)
    lightings_per_subject: int = 3      # lightings streamed per training subject (rotating)
    random_sensor: bool = True          # every other recording on a randomised DVS sensor
    extra_subjects: int = 0             # more training subjects, ids after ``subjects`` (never
    #                                     a validation or test subject)
    level: str = ""                     # an ANC level ("tiny", ...): fit that level's own head


@dataclass
class RouterFitConfig(TrainConfig):
    init: str = ""                      # joint STTF+ANC checkpoint ("" = the shipped one)
    out: str = "data/train_router/captioner.pt"
    samples: int = 2400                 # labelled training frames
    static_samples: int = 600           # frames between gestures
    val_samples: int = 600
    epochs: int = 60
    batch: int = 128
    lr: float = 3e-3
    cost_weight: float = 0.3
    complexity_weight: float = 1.0
    balance_weight: float = 0.1
    loss_clip: float = 1.0
    heads: bool = False                 # score the levels by their gesture heads on streamed
    #                                     frames (training/router_heads.py)
    stream_every: int = 4               # heads: keep every n-th streamed frame
    cost_weights: tuple = (0.3, 0.2, 0.1, 0.05, 0.03)   # heads: the cost weights fitted ...
    accuracy_tolerance: float = 0.005   # ... and the largest kept whose routed validation
    #                                     accuracy is within this of Medium's

