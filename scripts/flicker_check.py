"""Measurements behind the anti-flicker default (docs/design.md, "Anti-flicker at intake").

    python scripts/flicker_check.py val OUT.json [--k 4] [--reps 1 2 3] [--no-gestures]
        VALIDATION subjects (not test), flicker_min_flips 0 vs K, model not retrained: scene
        recordings ('nothing' frames captioned "nothing moves", scene-kind accuracy on the
        moving scenes) and gesture recordings (per-frame gesture accuracy), per lighting, and
        the share of events removed. Rows -> OUT.json, summary -> OUT_summary.json + stdout.
    python scripts/flicker_check.py real [--k 4]
        share of events removed on the real recordings of ../shared/data/real (both backends,
        which must agree), and what the same rule would remove on sensor pixels.
    python scripts/flicker_check.py timing [--k 4]
        decode + bin CPU time (process_time) off vs on, both backends, 1 / 10 / 33 ms packets.
    python scripts/flicker_check.py flips
        validation subject 1's scene recordings (rep 1), per lighting and scene: the share of
        events by the polarity flips of their pixel in their frame (0..12+).
    python scripts/flicker_check.py trace [--k 4]
        validation subject 1, fluorescent, rep 3: frame by frame around the last camera_shake ->
        nothing transition, K=0 and K: events, changed patches, scene kind, caption.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

P = 33_333_333


def _val(out: str, k: int, reps: tuple, gestures: bool) -> None:
    import torch

    from edge_vlm.bench.engines import sttf_engine
    from edge_vlm.bench.recordings import sim_frames
    from edge_vlm.bench.streams import SIM_SEED, simulated_events
    from edge_vlm.bench.trust import recording_segments
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.inference.factory import load_model
    from edge_vlm.sim import simulate_scene_recording, split_subjects
    from edge_vlm.training.config import LIGHTINGS, TrainConfig
    torch.set_num_threads(1)
    base = replay_params(graph=None).captioner
    configs = {0: dict(base, flicker_min_flips=0), k: dict(base, flicker_min_flips=k)}
    model, minfo = load_model("")
    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    rows: list[dict] = []

    def run(rec, part, segs):
        for kk, params in configs.items():
            eng = sttf_engine(model, params, True, minfo)
            for f in sim_frames(rec, params):
                r = eng.process(f.hist)
                j = next((i for i, g in enumerate(segs)
                          if g["t_start_ns"] < f.t_end <= g["t_end_ns"]), None)
                rows.append(dict(part=part, K=kk, rec=rec.name, light=rec.lighting
                                 if hasattr(rec, "lighting") else None, gt=f.gt,
                                 scene=None if j is None else segs[j]["scene"], raw=f.events,
                                 kept=float(np.asarray(f.hist).sum()), label=int(r.label),
                                 kind=r.scene.kind if r.scene else None,
                                 text=" ".join(r.text.split())))

    with torch.no_grad():
        for s in (int(x) for x in held[:tc.val_subjects]):
            for li, light in [(i + 3 * rep, lt) for rep in reps for i, lt in enumerate(LIGHTINGS)]:
                rec = simulate_scene_recording(s, light, seed=SIM_SEED + 7 * s + 1000 * (li + 1),
                                               clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)
                n0 = len(rows)
                run(rec, "scene", recording_segments(rec))
                for r in rows[n0:]:
                    r["light"] = light
                print(rec.name, light, len(rows), flush=True)
            for i, light in enumerate(LIGHTINGS if gestures else ()):
                rec = simulated_events(labels=range(1, 12), clip_s=tc.clip_s, gap_s=tc.gap_s,
                                       seed=SIM_SEED + 10 * s + i + 5000, lighting=light,
                                       subject=s)
                n0 = len(rows)
                run(rec, "gesture", [])
                for r in rows[n0:]:
                    r["light"] = light
                print(rec.name, light, len(rows), flush=True)
    with open(out, "w") as fh:
        json.dump(rows, fh)
    summary = _summary(rows, configs, LIGHTINGS)
    with open(out.replace(".json", "") + "_summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    for key, v in summary.items():
        print(key, v)


def _summary(rows: list[dict], configs: dict, lightings) -> dict:
    from edge_vlm.sim.captions import NOTHING_MOVES

    def mean(xs):
        return round(float(np.mean(xs)), 4) if xs else None
    out = {}
    for k in configs:
        for light in lightings:
            sel = [r for r in rows if r["K"] == k and r["light"] == light]
            no = [r for r in sel if r["part"] == "scene" and r["scene"] == "nothing"]
            mov = [r for r in sel if r["part"] == "scene" and r["scene"] not in (None, "nothing")]
            ge = [r for r in sel if r["part"] == "gesture" and r["gt"] is not None]
            out[f"K={k} {light}"] = dict(
                nothing_frames=len(no),
                nothing_moves_misses=sum(r["text"] != NOTHING_MOVES for r in no),
                nothing_moves_rate=mean([r["text"] == NOTHING_MOVES for r in no]),
                nothing_events_per_frame=mean([r["kept"] for r in no]),
                moving_frames=len(mov), moving_kind_acc=mean([r["kind"] == r["scene"]
                                                              for r in mov]),
                gesture_frames=len(ge), gesture_acc=mean([r["label"] == r["gt"] for r in ge]),
                removed_share=round(1 - sum(r["kept"] for r in sel)
                                    / max(1, sum(r["raw"] for r in sel)), 4))
    return out


def _real(k: int) -> None:
    from edge_vlm.bench import streams as bench
    from edge_vlm.events import concat_events
    from edge_vlm.io.codecs import make_decoder
    from edge_vlm.stream.binner import FrameBinner
    from edge_vlm.stream.flicker import flicker_keep
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "shared", "data", "real"))
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isfile(os.path.join(path, "metadata.yaml")):
            continue
        enc, pk = bench.bag_packets(path)
        res = {}
        for backend in ("numpy", "native"):
            b = FrameBinner(P, backend=backend, flicker_min_flips=k)
            frames = [f for p in pk for f in b.push(enc, *p)] + b.flush()
            res[backend] = (b.events, b.flicker_events, len(frames))
        if len(set(res.values())) != 1:
            sys.exit(f"error: numpy and native differ on {name}: {res}")
        ev_n, removed, n_frames = res["numpy"]
        dec = make_decoder(enc)
        ev = concat_events([np.asarray(dec.decode(np.frombuffer(d, np.uint8), w, h, tb))
                            for d, w, h, tb in pk])
        ev = ev[np.argsort(ev["t"], kind="stable")]
        w, h = pk[0][1], pk[0][2]
        keep = flicker_keep(ev["t"] // P, ev["p"].astype(np.int64) * (w * h)
                            + ev["y"].astype(np.int64) * w + ev["x"], w * h, k)
        sensor = 0.0 if keep is None else 1 - float(keep.mean())
        print(f"{name} ({enc} {w}x{h}, {n_frames} frames, {ev_n} events): flicker_min_flips={k} "
              f"removes {removed} events = {removed / max(1, ev_n):.4f} on model-grid pixels "
              f"(numpy == native); on sensor pixels it would remove {sensor:.4f}")


def _timing(k: int) -> None:
    from edge_vlm.bench.streams import SIM_SEED, packetize_mono
    from edge_vlm.sim import simulate_scene_recording
    from edge_vlm.stream.binner import FrameBinner
    rec = simulate_scene_recording(1, "fluorescent", seed=SIM_SEED + 7 + 4000,
                                   clip_duration_s=1.0, gap_s=0.3)
    n = len(rec.events)
    for packet_ns in (1_000_000, 10_000_000, P):
        pk = packetize_mono(rec.events, 128, 128, packet_ns)
        for backend in ("native", "numpy"):
            loops, res = (5 if backend == "native" else 1), {0: [], k: []}
            for rep in range(9 if backend == "native" else 3):
                for kk in ((0, k) if rep % 2 else (k, 0)):
                    t0 = time.process_time()
                    for _ in range(loops):
                        b = FrameBinner(P, backend=backend, flicker_min_flips=kk)
                        for d, w, h, tb in pk:
                            b.push("mono", d, w, h, tb)
                        b.flush()
                    res[kk].append(loops * n / (time.process_time() - t0) / 1e6)
            m0, mk = statistics.median(res[0]), statistics.median(res[k])
            print(f"{backend}, {packet_ns / 1e6:g} ms packets ({len(pk)}), {n} events: off "
                  f"{m0:.1f} Mev/s, on {mk:.1f} Mev/s, on/off {mk / m0:.3f}", flush=True)


def _val_scene(subject: int, light: str, rep: int):
    from edge_vlm.bench.streams import SIM_SEED
    from edge_vlm.sim import simulate_scene_recording
    from edge_vlm.training.config import LIGHTINGS, TrainConfig
    tc, li = TrainConfig(), LIGHTINGS.index(light) + 3 * rep
    return simulate_scene_recording(subject, light, seed=SIM_SEED + 7 * subject + 1000 * (li + 1),
                                    clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)


def _flips() -> None:
    from edge_vlm.bench.trust import recording_segments
    from edge_vlm.training.config import LIGHTINGS
    for light in LIGHTINGS:
        rec = _val_scene(1, light, 1)
        ev, segs = rec.events, recording_segments(rec)
        f = ev["t"].astype(np.int64) // P
        key = (f - f.min()) * 16384 + ev["y"].astype(np.int64) * 128 + ev["x"]
        o = np.argsort(key, kind="stable")
        ks, pol = key[o], ev["p"][o]
        flip = (ks[1:] == ks[:-1]) & (pol[1:] != pol[:-1])
        st = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        en = np.r_[st[1:], ks.size]
        cum = np.r_[0, np.cumsum(flip)]
        fl, n = cum[en - 1] - cum[st], en - st
        t_end = (ks[st] // 16384 + f.min() + 1) * P
        kind = np.full(len(st), "-", dtype=object)
        for g in segs:
            kind[(t_end > g["t_start_ns"]) & (t_end <= g["t_end_ns"])] = g["scene"]
        for sc in sorted(set(kind)):
            m = kind == sc
            h = np.bincount(np.minimum(fl[m], 12), weights=n[m], minlength=13)
            print(f"{light:12s} {sc:14s} events {int(h.sum()):6d} by flips 0..12+:",
                  (h / h.sum()).round(3).tolist())


def _trace(k: int) -> None:
    import torch

    from edge_vlm.bench.engines import sttf_engine
    from edge_vlm.bench.recordings import sim_frames
    from edge_vlm.bench.trust import recording_segments
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.inference.factory import load_model
    torch.set_num_threads(1)
    base = replay_params(graph=None).captioner
    model, minfo = load_model("")
    rec = _val_scene(1, "fluorescent", 3)
    shake = [g for g in recording_segments(rec) if g["scene"] == "camera_shake"][-1]
    t0, t1 = shake["t_end_ns"] - 200_000_000, shake["t_end_ns"] + 1_400_000_000
    for kk in (0, k):
        params = dict(base, flicker_min_flips=kk)
        eng = sttf_engine(model, params, True, minfo)
        with torch.no_grad():
            for f in sim_frames(rec, params):
                r = eng.process(f.hist)
                if t0 < f.t_end <= t1:
                    print(f"K={kk} t={f.t_end / 1e9:.3f} s (shake ends "
                          f"{shake['t_end_ns'] / 1e9:.2f}) events "
                          f"{int(np.asarray(f.hist).sum())} changed {r.change_tokens} "
                          f"kind {r.scene.kind if r.scene else None} | {' '.join(r.text.split())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("val", "real", "timing", "flips", "trace"))
    ap.add_argument("out", nargs="?", default="flicker_val.json")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--reps", type=int, nargs="+", default=[1])
    ap.add_argument("--no-gestures", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.k <= 63:
        sys.exit("error: --k must be in 1..63")
    if a.what == "val":
        _val(a.out, a.k, tuple(a.reps), not a.no_gestures)
    elif a.what == "real":
        _real(a.k)
    elif a.what == "flips":
        _flips()
    elif a.what == "trace":
        _trace(a.k)
    else:
        _timing(a.k)


if __name__ == "__main__":
    main()
