"""The argument parsers of every ``edge-vlm`` command: argparse only, so that ``--help`` and an
argument error never load the model code (the commands' modules are imported when they run)."""
from __future__ import annotations

import os

from edge_vlm.paths import docs_dir, repo_root
from edge_vlm.training.config import TrainConfig

DEMO_DIR = os.path.join("data", "demo")
EVAL_OUT = os.path.join("data", "eval")
COCO_OUT = os.path.join("data", "coco")
BENCH_WHAT = ("decode", "sttf", "anc", "e2e", "streams", "multihost", "all")


def add_stats(sub) -> None:
    s = sub.add_parser("stats", help="event statistics of a bag directory or an event file")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def add_synth(sub) -> None:
    s = sub.add_parser("synth",
                       help="simulate DVS128 gesture recordings (DVS128 layout and/or ROS 2 bag)")
    s.add_argument("--out", default="data/synth")
    s.add_argument("--subjects", type=int, nargs="+", default=[0])
    s.add_argument("--lightings", nargs="+", default=["lab"],
                   choices=["lab", "fluorescent", "natural"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clip-s", type=float, default=1.5)
    s.add_argument("--gap-s", type=float, default=0.3)
    s.add_argument("--no-frames", action="store_true", help="events only (like a DVS128)")
    s.add_argument("--format", choices=["bag", "dvs128", "both"], default="both")
    s.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    s.add_argument("--packet-ms", type=float, default=10.0,
                   help="EventPacket length in sensor time (ms)")
    s.add_argument("--scenes", action="store_true",
                   help="after each gesture recording, a recording of the scenes beyond the 11 "
                        "gestures (nothing moving, walk, stand up, sit down, object moved, "
                        "object swings, two movers, camera shake) on the same time line; the "
                        "bag's ground truth holds both, the DvsGesture layout only the gestures "
                        "(it has no scene classes)")


def add_convert(sub) -> None:
    p = sub.add_parser("convert",
                       help="convert an event recording (AEDAT 2/3.1/4, Prophesee RAW/DAT, RPG "
                            "events.txt, DvsGesture) to a ROS 2 bag")
    p.add_argument("input", help="event file, DvsGesture trial (.aedat) or directory, or bag")
    p.add_argument("output",
                   help="output bag folder (for a DvsGesture directory: a parent folder)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--packet-ms", type=float, default=2.0,
                   help="EventPacket length in ms of sensor time (default 2)")
    p.add_argument("--width", type=int, default=None, help="override the sensor width")
    p.add_argument("--height", type=int, default=None, help="override the sensor height")
    p.add_argument("--camera", choices=("DVS128", "DAVIS240"), default=None,
                   help="AEDAT 2.0 address layout (default: from the file header, else DVS128)")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="DvsGesture directory: which trials")
    p.add_argument("--limit", type=int, default=None,
                   help="DvsGesture directory: at most N trials")
    p.add_argument("--overwrite", action="store_true", help="replace existing output bags")


def add_train(sub) -> None:
    d = TrainConfig()
    s = sub.add_parser("train",
                       help="train the STTF (or joint STTF+ANC) captioning model on simulated "
                            "data (resumable)")
    s.add_argument("--model", choices=("sttf", "anc", "router", "gesture"), default="sttf",
                   help="sttf: the STTF model from scratch; anc: the joint STTF+ANC model grown "
                        "from --init; router: fit the router of the joint checkpoint --init on "
                        "its frozen branches; gesture: fit the gesture head's motion net on the "
                        "frozen checkpoint --init")
    s.add_argument("--init", default="",
                   help="anc: STTF checkpoint to grow from; router, gesture: checkpoint (default: "
                        "the shipped one)")
    s.add_argument("--out", default=d.out)
    s.add_argument("--subjects", type=int, default=d.subjects)
    s.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs} (sttf) / 4 (anc)")
    s.add_argument("--steps", type=int, default=None,
                   help=f"steps per epoch, default {d.steps_per_epoch}")
    s.add_argument("--batch", type=int, default=None, help=f"default {d.batch} (sttf) / 12 (anc)")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--threads", type=int, default=d.threads)
    s.add_argument("--workers", type=int, default=d.workers, help="simulation processes")
    s.add_argument("--dim", type=int, default=d.dim)
    s.add_argument("--depth", type=int, default=d.depth, help="encoder (sparse ViT) layers")
    s.add_argument("--window", type=int, default=d.window,
                   help="frames of temporal context (= max token age)")
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--clip-s", type=float, default=d.clip_s)
    s.add_argument("--active-weight", type=float, default=d.active_weight,
                   help="lambda of the expected active-token ratio in the loss")
    s.add_argument("--patience", type=int, default=None,
                   help="early stopping (epochs without improvement)")
    s.add_argument("--heads", action="store_true",
                   help="router: score the levels by the gesture heads that answer for them, on "
                        "streamed frames (per-level heads: train --model gesture --level)")
    s.add_argument("--cost-weight", type=float, default=None,
                   help="router: weight of the levels' relative FLOPs in the routing loss "
                        "(default 0.3; with --heads: this weight only, instead of choosing one "
                        "of 0.3, 0.2, 0.1, 0.05, 0.03 on the validation subjects)")
    s.add_argument("--balance-weight", type=float, default=None,
                   help="anc: weight of the routing load-balancing (entropy) term (default 0.1)")
    s.add_argument("--resume", action="store_true", help="continue from <out>.resume")
    s.add_argument("--motion-width", type=int, default=None,
                   help="gesture: channels of the motion head's first convs (default 32)")
    s.add_argument("--level", choices=("tiny", "small", "medium"), default=None,
                   help="gesture: fit the head of this ANC level of a joint checkpoint (written "
                        "next to the shared head, which the other levels keep reading) instead "
                        "of the shared head")
    s.add_argument("--shift", type=int, default=None,
                   help="gesture: translate the training motion states by up to this many patches "
                        "(default 1)")
    s.add_argument("--extra-subjects", type=int, default=None,
                   help="gesture: this many more simulated training subjects, ids after "
                        "--subjects (default 0; the held-out subjects stay the same)")
    s.add_argument("--cache", default="",
                   help="gesture: file keeping the streamed frames, reused by a rerun on the same "
                        "checkpoint and data")
    add_train_data(s)
    s.add_argument("--no-progress", action="store_true")


def add_train_data(s) -> None:
    """``edge-vlm train --data``: the real DVS128 Gesture download instead of simulated data."""
    d = TrainConfig()
    s.add_argument("--data", default="", metavar="DvsGesture",
                   help="sttf: train on the real DVS128 Gesture download (not in this "
                        "repository and not downloadable here: bring your own copy) instead of "
                        "simulated data: a folder of userXX_<lighting>.aedat (AEDAT 3.1) + "
                        "_labels.csv + trials_to_train.txt / trials_to_test.txt. Trains on the "
                        "official train trials minus --val-users held-out users (validation, "
                        "early stopping), reports per-frame and per-sample accuracy on the test "
                        "trials")
    s.add_argument("--val-users", type=int, default=d.val_users,
                   help="--data: users of the train trials held out for validation "
                        f"(default {d.val_users}, picked with --seed)")
    s.add_argument("--test-frames", type=int, default=d.test_frames,
                   help="--data: labelled test frames scored (random subset; 0 = all, default)")
    s.add_argument("--frames-dir", default=d.frames_dir,
                   help="--data: keep the frame histograms in memory-mapped files here "
                        "(64 KiB a frame: the full train split is estimated at over 10 GB at "
                        "30 fps; default: in memory)")


FINETUNE_OUT = os.path.join("data", "finetune", "captioner.pt")


def add_finetune(sub) -> None:
    s = sub.add_parser(
        "finetune",
        help="adapt a checkpoint's gesture and scene heads to your own labelled recordings",
        description="Fine-tune the gesture head (and the scene head, if the checkpoint has one) "
                    "on the labelled recordings of DIR: AEDAT 3.1 trials + labels CSV in the "
                    "DvsGesture layout, and/or ROS 2 bags labelled on /edge_vlm/ground_truth. "
                    "Only the small motion head is adapted, starting from the checkpoint's, on "
                    "the frozen encoder: a few labelled minutes are far too few to retrain the "
                    "encoder or the captioner (they would overfit and forget the other scenes), "
                    "and the captions follow what the heads found. Whole recordings are held "
                    "out for validation (a single recording: its last segments); the best "
                    "validation epoch is kept, the temperatures refitted on validation, and the "
                    "checkpoint's head and the fine-tuned one are scored on the same held-out "
                    "frames (finetune.json next to --out). Classes absent from DIR lose ground: "
                    "label every gesture your robot must keep recognising.")
    s.add_argument("checkpoint", metavar="CKPT",
                   help='checkpoint to adapt ("" or "shipped": the shipped one)')
    s.add_argument("--data", required=True, metavar="DIR", help="folder of labelled recordings")
    s.add_argument("--out", default=FINETUNE_OUT,
                   help=f"checkpoint written (default {FINETUNE_OUT})")
    s.add_argument("--epochs", type=int, default=20, help="passes over the frames (default 20)")
    s.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate (default 1e-3, below the 3e-3 of a fresh head)")
    s.add_argument("--val-share", type=float, default=0.25,
                   help="share of the recordings held out for validation (default 0.25; at "
                        "least one recording each side)")
    s.add_argument("--seed", type=int, default=0, help="picks the validation recordings")
    s.add_argument("--no-mirror", action="store_true",
                   help="do not also train on the left-right mirrored recordings")
    s.add_argument("--no-rehearse", action="store_true",
                   help="scene head: do not mix a simulated recording of the other scenes into "
                        "the training frames (they keep the scene groups from drifting to "
                        "'gesture' everywhere)")
    s.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    s.add_argument("--no-progress", action="store_true")


def add_calibrate(sub) -> None:
    s = sub.add_parser("calibrate",
                       help="fit the sparse ViT's per-layer gate thresholds on the validation "
                            "subjects and store them in the checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--subjects", type=int, nargs="+", default=None,
                   help="simulated subjects (default: the validation subjects of edge-vlm train)")


def add_demo(sub) -> None:
    s = sub.add_parser(
        "demo", help="replay a bag (default: the simulated demo bag) through the three nodes",
        add_help=False, allow_abbrev=False,
        description="Options other than these three go to the demo runner edge_vlm_demo "
                    "(e.g. --every N, --rate R, --drain S, -p NODE.NAME=VALUE, --graph FILE); "
                    "`edge-vlm demo --help` lists them.")
    s.add_argument("--bag", default="", help="bag to play (default: the simulated demo bag)")
    s.add_argument("--checkpoint", default="", help="captioner checkpoint")
    s.add_argument("--out-dir", default=os.path.join(DEMO_DIR, "run"),
                   help="records, node logs, summary.json")
    s.set_defaults(extra=[], passthrough="extra")


def add_play(sub) -> None:
    s = sub.add_parser("play", help="bag player (ros2 bag play is not available here): "
                                    "`edge-vlm play --help` lists its options",
                       add_help=False, allow_abbrev=False)
    s.set_defaults(rest=[], passthrough="rest")


def add_run(sub) -> None:
    s = sub.add_parser("run", help="start the node graph through the bringup's launch file "
                                   "(edge_vlm_run; --single-process: one process): `edge-vlm "
                                   "run --help` lists its options",
                       add_help=False, allow_abbrev=False)
    s.set_defaults(rest=[], passthrough="rest")


def add_eval(sub) -> None:
    s = sub.add_parser(
        "eval", help="evaluate captions/gestures/compute offline on a bag or a DvsGesture folder",
        description="Replay SOURCE (ROS 2 bag folder/.db3/.mcap, DvsGesture folder, or `edge-vlm "
                    "synth` output) through the exact per-frame logic of sttf_perception + "
                    "vlm_captioner and report gesture accuracy, caption metrics (BLEU-1..4, "
                    "METEOR, ROUGE-L, CIDEr-D), trust metrics (caption/label consistency, false "
                    "gestures on scenes without one, calibration ECE + reliability diagram, "
                    "label switches), active-token fraction, FLOPs and latency. A source "
                    "without ground truth (a bag without its topic) gets the statistics that "
                    "need none: label and scene distributions, label switches, ANC routing, "
                    "top caption and example captions, and a timeline plot.")
    s.add_argument("source", help="bag folder / .db3 / .mcap, or DvsGesture folder")
    s.add_argument("--out", default=EVAL_OUT, help=f"output folder (default: {EVAL_OUT})")
    s.add_argument("--checkpoint", default="",
                   help="captioner checkpoint (default: the shipped one)")
    s.add_argument("--max-frames", type=int, default=None, help="stop after N processed frames")
    s.add_argument("--json", action="store_true",
                   help="print the summary as JSON instead of Markdown")
    s.add_argument("-p", "--param", action="append", default=[], metavar="[NODE.]NAME=VALUE",
                   help="node parameter override, e.g. -p use_rgb=never -p "
                        "vlm_captioner.decoding=beam")
    s.add_argument("--graph", default=None, help="graph file with node parameters (default: the "
                                                 "bringup package's config/graph.yaml)")
    s.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (saves ~10 s of Java start-up)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_coco(sub) -> None:
    s = sub.add_parser("coco",
                       help="caption a local COCO-format image set (RGB-only, change mask from "
                            "frame differences)")
    s.add_argument("--images", required=True, help="folder with the image files")
    s.add_argument("--captions", required=True, help="COCO captions JSON (images + annotations)")
    s.add_argument("--checkpoint", default="",
                   help="captioner checkpoint (default: the shipped one)")
    s.add_argument("--out", default=COCO_OUT,
                   help=f"report folder (default {COCO_OUT}; '' = none)")
    s.add_argument("--limit", type=int, default=None, help="only the first N images")
    s.add_argument("--threshold", type=float, default=None,
                   help="changed patch: mean abs luma difference above this (0..255; default: the "
                        "harness's, edge_vlm.evaluation.coco.DEFAULT_THRESHOLD)")
    s.add_argument("--refresh-period", type=int, default=0,
                   help="dense re-encode every N images (0 = first only)")
    s.add_argument("--decoding", choices=["greedy", "beam"], default="greedy")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    s.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (saves the Java start-up)")
    s.add_argument("--json", action="store_true", help="print the result JSON instead of Markdown")


def add_paper_table(sub) -> None:
    s = sub.add_parser("paper-table",
                       help="the paper's headline claims next to the measured figures (writes "
                            "docs/paper_table.md)")
    s.add_argument("--bench", default=None,
                   help="bench figures: JSON or benchmarks Markdown (default: "
                        "docs/benchmarks.json if present, else docs/benchmarks.md)")
    s.add_argument("--eval", dest="eval_path", default=str(repo_root() / EVAL_OUT / "eval.json"),
                   help="eval.json of `edge-vlm eval` (default: data/eval/eval.json)")
    s.add_argument("--out", default=str(docs_dir() / "paper_table.md"),
                   help="Markdown output (default docs/paper_table.md; '' = print only)")


def add_bench(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks: decode+bin throughput, token memory vs dense, "
                                     "end-to-end latency, drone + ground over a network link "
                                     "(multihost: root; all: also writes docs/benchmarks.md)")
    s.add_argument("what", nargs="?", choices=BENCH_WHAT, default="all")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--threads", type=int, default=1,
                   help="torch threads of the model (default 1); decoding is always "
                        "single-threaded")
    s.add_argument("--out", default=None,
                   help="Markdown report (default for `all`: docs/benchmarks.md of the "
                        "repository; '' = none)")
    s.add_argument("--repeats", type=int, default=5,
                   help="timed runs per figure: decode runs, STTF passes per engine and backend "
                        "(median; default 5)")
    s.add_argument("--checkpoint", default="",
                   help="captioner checkpoint (default: the shipped one)")
    s.add_argument("--bag", default=None, help="bag for `e2e` (default: a simulated DVS128 bag)")
    s.add_argument("--packet-ms", type=float, default=10.0,
                   help="EventPacket length of the simulated e2e bag (default 10, as `edge-vlm "
                        "synth`)")
    s.add_argument("--no-e2e", action="store_true", help="`all` without the node-graph run")
    s.add_argument("--no-anc", action="store_true", help="`all` without the ANC comparison")
    s.add_argument("--no-peers", action="store_true",
                   help="`all` without the peers (ToMe, top-k) on the same frames")
    s.add_argument("--no-streams", action="store_true",
                   help="`all` without the streams-per-machine runs")
    s.add_argument("--no-multihost", action="store_true",
                   help="`all` without the drone + ground runs (network namespaces)")
    s.add_argument("--quick", action="store_true",
                   help="tiny inputs (smoke test; figures not meaningful); multihost: the short "
                        "profile (one uncapped run)")
    s.add_argument("--domain-id", type=int, default=181,
                   help="multihost: ROS_DOMAIN_ID inside the namespaces (default 181)")


def add_sim_stats(sub) -> None:
    s = sub.add_parser(
        "sim-stats",
        help="sensor statistics of recordings side by side (event rate per pixel, ON/OFF, "
             "inter-event intervals, hot pixels, static-scene rate): simulated vs real",
        description="For each REC (a bag or any event file `edge-vlm stats` reads), read at "
                    "most the first --max-seconds / --max-events, and for each --sim-sensors "
                    "seed, simulate a session; print one Markdown table (a column per "
                    "recording) or JSON; --plot overlays the distributions.")
    s.add_argument("recordings", nargs="*", metavar="REC")
    s.add_argument("--sim-sensors", type=int, nargs="+", default=[], metavar="SEED",
                   help="also simulate a session (the 11 gestures of subject 1, ~20 s) seen by "
                        "each of these sensors (0: the nominal sensor; others: randomised)")
    s.add_argument("--sim-lightings", nargs="+", default=["lab"],
                   choices=["lab", "fluorescent", "natural"],
                   help="lightings of the --sim-sensors sessions (default lab)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--plot", default="", metavar="PNG", help="write the distributions here")
    s.add_argument("--static-window-ms", type=float, default=None,
                   help="window of the static-scene rate (p10 of the windows; default 100)")
    s.add_argument("--hot-k", type=float, default=None,
                   help="hot pixel: rate above k x the median of the active pixels (default 10)")
    s.add_argument("--max-events", type=int, default=None,
                   help="read at most this many events per recording (default 5,000,000)")
    s.add_argument("--max-seconds", type=float, default=None,
                   help="read at most this much sensor time per recording (default 30)")
