"""ctypes loader of the fused encoder-block kernel (``_native/sparsevit.c`` -> ``libsparsevit.so``)
and the cache of what it reads (packed weights, layer structs, whole-pass plans).

The inference passes (:func:`~edge_vlm.inference.vit.sparse_infer` and ``dense_infer``) run a
whole pass in one C call (:func:`encode`: gather, every layer, final norm) when no per-layer
threshold is set, else layer by layer (:func:`run_layer`), whenever :func:`load` returns the
library: instead of ~20 PyTorch calls per layer, with the weights stored once in packed panels
instead of packed again by every small matmul. It is the same arithmetic as the PyTorch steps
(:func:`~edge_vlm.inference.vit.sparse_step` / ``dense_step``; float32, results agree to
rounding, checked by ``tests/test_native_vit.py``). The PyTorch path runs instead, with the same
results, when:

* the library is not built (``scripts/setup.sh`` builds it with gcc), is older than its source,
  or has another ABI; the CPU lacks AVX2/FMA/F16C; ``EDGE_VLM_NO_NATIVE_VIT=1`` is set (read once,
  at the first pass);
* :func:`~edge_vlm.inference.vit.backend_choice` measured the PyTorch path faster on this CPU
  (per ViT shape and pass kind, dense or sparse; unless :func:`~edge_vlm.inference.vit.set_native`
  forces one);
* autograd is recording (training), or a tensor is not float32 / contiguous;
* the shapes are not the kernel's (``dim``, ``dim/heads`` and the token count multiples of 16).

:func:`backend` names the path in use (``"native"`` or ``"torch"``); :func:`why` says why the
library is not used; :func:`isa` names the kernels the library runs on this CPU (``"avx512"``, or
``"avx2"`` where the CPU lacks AVX-512F/BW/VL/DQ; :func:`set_isa` picks the narrower set for tests
and benchmarks). The kernel is single-threaded, like the nodes' default ``num_threads: 1``.
While it computes a layer of a pass over up to 64 tokens it prefetches the next layer's weights
and keys/values into L2 (a pass reads 7.3 MB of them in the shipped Medium branch, more than L2,
whatever its token count: the fixed cost of a sparse pass); :func:`set_prefetch` turns that off
(the same results, bit for bit).
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import operator
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_vlm.paths import NATIVE_DIR
from edge_vlm.stream.native_evbin import check_built

_DIR = str(NATIVE_DIR)
LIB_PATH = os.path.join(_DIR, "libsparsevit.so")
SOURCE_PATH = os.path.join(_DIR, "sparsevit.c")
KERNELS_PATH = os.path.join(_DIR, "svit_kernels.h")        # included by sparsevit.c
ABI = 12
_PTR, _I64 = ctypes.c_void_p, ctypes.c_int64
_WEIGHTS = ("ln1_w", "ln1_b", "wqkv_t", "bqkv", "wproj_t", "bproj", "ln2_w", "ln2_b", "w1_t", "b1",
            "w2_t", "b2")
_MEMORY = ("mem_x", "mem_kt", "mem_v", "mem_out")
_HALF = ("wqkv_h", "wproj_h", "w1_h", "w2_h")


class LayerStruct(ctypes.Structure):
    """``svit_layer_t`` of sparsevit.c (field for field)."""

    _fields_ = ([(n, _I64) for n in ("d", "heads", "hid", "ntok", "act")]
                + [("eps1", ctypes.c_double), ("eps2", ctypes.c_double)]
                + [(n, _PTR) for n in _WEIGHTS + _MEMORY + _HALF])


class FusionStruct(ctypes.Structure):
    """``svit_fusion_t`` of sparsevit.c (field for field; :mod:`.native_stages`)."""

    WEIGHTS = ("queries", "age", "ln_kv_w", "ln_kv_b", "wkv_t", "bkv", "q", "wproj_t", "bproj",
               "ln2_w", "ln2_b", "w1_t", "b1", "w2_t", "b2")
    HEAD = ("gln_w", "gln_b", "gfc_w", "gfc_b")
    CACHE = ("z", "kt", "v")
    _fields_ = ([(n, _I64) for n in ("d", "heads", "ntok", "nq", "hid", "nage")]
                + [("eps_kv", ctypes.c_double), ("eps2", ctypes.c_double)]
                + [(n, _PTR) for n in WEIGHTS]
                + [("ncls", _I64), ("dyn_bucket", _I64), ("eps_g", ctypes.c_double)]
                + [(n, _PTR) for n in HEAD + CACHE])


class EmbedStruct(ctypes.Structure):
    """``svit_embed_t`` of sparsevit.c (field for field; :mod:`.native_stages`)."""

    WEIGHTS = ("w1_t", "b1", "w2_t", "b2", "wg_t", "bg")
    _fields_ = ([(n, _I64) for n in ("d", "ch", "patch", "h", "w")]
                + [(n, _PTR) for n in WEIGHTS])


_lib = None
_why = ""
_tried = False


def load():
    """The library, or None (the PyTorch path; :func:`why` says why). Decided once per process,
    at the first call (``EDGE_VLM_NO_NATIVE_VIT`` is read then)."""
    global _lib, _why, _tried
    if not _tried:
        _tried = True
        if os.environ.get("EDGE_VLM_NO_NATIVE_VIT", "") not in ("", "0"):
            _why = "EDGE_VLM_NO_NATIVE_VIT is set"
            return None
        try:
            check_built(LIB_PATH, (SOURCE_PATH, KERNELS_PATH))
            lib = ctypes.CDLL(LIB_PATH)
            lib.svit_abi.restype = _I64
            lib.svit_cpu_ok.restype = _I64
            if not lib.svit_cpu_ok():
                raise OSError("this CPU lacks AVX2/FMA/F16C")
            sizes = sum(map(ctypes.sizeof, (LayerStruct, FusionStruct, EmbedStruct)))
            if int(lib.svit_abi()) != (sizes | ABI << 16):
                raise OSError(f"{LIB_PATH} does not match native_vit.py (run scripts/setup.sh)")
            lib.svit_set_prefetch.argtypes = [_I64]
            lib.svit_set_prefetch.restype = _I64
            lib.svit_layer.argtypes = [_PTR, _I64, _PTR, _PTR]
            lib.svit_layer.restype = _I64
            lib.svit_layer_causal.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, _I64]
            lib.svit_layer_causal.restype = _I64
            lib.svit_encode.argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR,
                                        ctypes.c_double, _PTR, _I64]
            lib.svit_encode.restype = _I64
            lib.svit_fusion.argtypes = [_PTR, _I64, _PTR, _PTR, _PTR, _PTR, ctypes.c_double,
                                        _PTR, _PTR]
            lib.svit_fusion.restype = _I64
            lib.svit_embed.argtypes = [_PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64]
            lib.svit_embed.restype = _I64
            lib.svit_isa.restype = _I64
            lib.svit_set_isa.argtypes = [_I64]
            lib.svit_set_isa.restype = _I64
            _lib = lib
        except (OSError, AttributeError) as exc:
            _why = str(exc)
    return _lib


_build_id = ""


def build_id() -> str:
    """The loaded library's identity (SHA-256 of the file's bytes; empty when not loaded):
    what the on-disk backend choice (:mod:`.backend_cache`) is keyed by. Read once."""
    global _build_id
    if not _build_id and load() is not None:
        try:
            with open(LIB_PATH, "rb") as fh:
                _build_id = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            _build_id = f"unreadable:{ABI}"
    return _build_id


def why() -> str:
    """Why :func:`load` returned None (empty when the library is in use or not tried yet)."""
    return _why


def backend() -> str:
    """``"native"`` or ``"torch"``: the encoder-block path of inference passes now."""
    return "native" if load() is not None else "torch"


_ISAS = {1: "avx2", 2: "avx512"}


def isa() -> str:
    """The kernels the library runs now: ``"avx512"`` (the default where the CPU has
    AVX-512F/BW/VL/DQ), ``"avx2"``; empty when the library is not loaded."""
    lib = load()
    return _ISAS.get(int(lib.svit_isa()), "") if lib is not None else ""


def set_isa(name: str | None) -> str:
    """Run the kernels ``name`` (``"avx2"``, ``"avx512"``) when this CPU has them, else the widest
    it has; None: the default (the widest). Returns :func:`isa` then. Process-wide."""
    want = {v: k for k, v in _ISAS.items()}
    if name is not None and name not in want:
        raise ValueError(f"unknown kernel set {name!r} (one of {', '.join(want)})")
    lib = load()
    if lib is None:
        return ""
    want = want[name] if name is not None else -1
    return _ISAS.get(int(lib.svit_set_isa(want)), "")


def set_prefetch(on: bool | None) -> bool:
    """Whether a pass prefetches the next layer's weights and keys/values into L2 while it
    computes a layer (True, the default; None: unchanged): the same results either way
    (benchmarks and tests compare). Returns the setting before; False without the library."""
    lib = load()
    if lib is None:
        return False
    return bool(lib.svit_set_prefetch(-1 if on is None else int(bool(on))))


def pack(w: torch.Tensor) -> torch.Tensor:
    """A linear weight (N, K) as the kernel reads it: N/16 panels of its transpose, each
    (K, 16) contiguous (N a multiple of 16)."""
    n, k = w.shape
    return w.detach().t().reshape(k, n // 16, 16).permute(1, 0, 2).contiguous()


def pack_half(w: torch.Tensor) -> torch.Tensor | None:
    """The float16 copy of a packed weight when it is exact (every value representable: the
    shipped checkpoints store float16), else None. The kernel then reads these: half the bytes
    to stream from memory (what bounds a sparse step), the same values, the same results."""
    h = w.half()
    return h if torch.equal(h.float(), w) else None


@dataclass(slots=True)
class PackedWeights:
    """A block's inference weights as the kernel reads them (cached on the block as
    ``_native_weights`` while its parameters and its channel slice are unchanged)."""

    versions: tuple           # version counters of ``sources`` when they were packed
    tensors: tuple            # the kernel's tensors, in the order of _WEIGHTS
    hidden: int               # MLP channels, padded to a multiple of 16
    sources: tuple            # what they were packed from (parameters, or an ANC slice's tensors)
    mlp_slice: tuple | None   # the block's ``mlp_slice`` then (compared by identity)
    halves: tuple             # exact float16 copies of the 4 linear weights, else None each


@dataclass(slots=True)
class LayerView:
    """The kernel's view of (block weights, layer memory), cached on the layer memory as
    ``_native``; the packed weights stay alive with the pointers into them."""

    weights: PackedWeights
    struct: LayerStruct
    memory: tuple             # the layer memory's (x, kt, v, out) tensors it points into


def _weights(blk) -> PackedWeights:
    """The block's inference weights as the kernel reads them (packed linear weights, the MLP
    padded to a multiple of 16 hidden channels), cached on the block."""
    cached = blk.__dict__.get("_native_weights")
    sliced = blk.mlp_slice                # an ANC block's channel slice (a new tuple per budget)
    if (cached is not None and cached.mlp_slice is sliced
            and all(t._version == v for t, v in zip(cached.sources, cached.versions))):
        return cached
    w1, b1, w2, b2 = blk.mlp_params()
    src = (blk.ln1.weight, blk.ln1.bias, blk.qkv.weight, blk.qkv.bias, blk.proj.weight,
           blk.proj.bias, blk.ln2.weight, blk.ln2.bias, w1, b1, w2, b2)
    key = tuple(t._version for t in src)  # in-place updates (load_state_dict, optimiser) bump it
    hid = int(w1.shape[0])
    pad = -hid % 16
    with torch.no_grad():
        w1p = F.pad(w1.detach(), (0, 0, 0, pad))            # zero channels: relu/gelu(0) = 0
        b1p = F.pad(b1.detach(), (0, pad))
        w2p = F.pad(w2.detach(), (0, pad))
        ts = tuple(pack(t) if t.dim() == 2 else t.detach().contiguous() for t in
                   (src[:8] + (w1p, b1p, w2p, b2)))
        halves = tuple(pack_half(ts[i]) for i in (2, 4, 8, 10))
    cached = PackedWeights(key, ts, hid + pad, src, sliced, halves)
    blk._native_weights = cached
    return cached


def _struct(blk, lm) -> LayerStruct | None:
    """The kernel's view of (block weights, layer memory), cached on the layer memory; None when
    the shapes are not the kernel's."""
    n, d = lm.x.shape
    if d % 16 or blk.heads <= 0 or d % blk.heads or (d // blk.heads) % 16 or n % 16:
        return None
    weights = _weights(blk)
    mem = (lm.x, lm.kt, lm.v, lm.out)
    cached = lm.__dict__.get("_native")
    if (cached is not None and cached.weights is weights
            and all(a is b for a, b in zip(cached.memory, mem))):
        return cached.struct
    ws = weights.tensors
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in ws + mem):
        return None
    st = LayerStruct(d=d, heads=blk.heads, hid=weights.hidden, ntok=n,
                     act=0 if blk.act_fn is F.relu else 1,
                     eps1=float(blk.ln1.eps), eps2=float(blk.ln2.eps))
    for name, t in zip(_WEIGHTS + _MEMORY, ws + mem):
        setattr(st, name, t.data_ptr())
    if all(h is not None for h in weights.halves):
        for name, h in zip(_HALF, weights.halves):
            setattr(st, name, h.data_ptr())
    lm._native = LayerView(weights, st, mem)
    return st


def run_layer(blk, lm, x: torch.Tensor, idx: torch.Tensor, causal_from: int | None = None,
              kv_only: int = 0) -> torch.Tensor | None:
    """Layer ``blk`` over the tokens ``idx`` (x: their (n, D) inputs) through the kernel, updating
    ``lm`` like the PyTorch sparse step (input, keys, values, output of those tokens).
    ``causal_from``: a decoder block (:class:`~edge_vlm.model.layers.Block` with
    ``causal_from``): token ``idx[i]`` sees the first ``causal_from`` tokens and those up to
    itself only (:mod:`edge_vlm.inference.native_decoder`); ``kv_only`` (a decoder block): the
    first ``kv_only`` tokens of ``idx`` get their keys and values only (their rows of the result
    are their inputs: a pass's last block, whose prefix outputs no one reads).
    Returns the (n, D) outputs, or None when the kernel does not apply (the caller then runs
    the PyTorch path; nothing was written)."""
    lib = load()
    if lib is None or torch.is_grad_enabled() or x.dtype != torch.float32:
        return None
    st = _struct(blk, lm)
    if st is None:
        return None
    out = x.contiguous().clone()
    ii = idx.to(torch.int64).contiguous()
    if causal_from is None:
        rc = lib.svit_layer(ctypes.byref(st), int(ii.numel()), ii.data_ptr(), out.data_ptr())
    else:
        rc = lib.svit_layer_causal(ctypes.byref(st), int(ii.numel()), ii.data_ptr(),
                                   out.data_ptr(), int(causal_from), int(kv_only))
    return out if rc == 0 else None


def share_version_counter(vit) -> bool:
    """Re-create the float32 parameters of ``vit`` (a SparseViT) as views of one flat buffer, so
    that they share one autograd version counter: an in-place change of any of them (an
    optimiser step, ``load_state_dict``, an edit under ``no_grad``) bumps the version of all.
    :func:`encode` then revalidates its cached plan with one version read instead of one per
    weight tensor (in a streaming engine those tensors are out of cache by the next frame: a miss
    each). Call it right after building or loading a model, before an optimiser takes its
    parameters (they are new objects; values, names, ``requires_grad`` and ``state_dict`` are
    unchanged). Returns False (nothing changed) for tied weights or a parameter that is not a
    float32 CPU tensor."""
    params = [(m, name, p) for m in vit.modules() for name, p in m._parameters.items()
              if p is not None]
    if (not params or len({id(p) for _, _, p in params}) != len(params)      # tied weights: leave
            or any(p.dtype != torch.float32 or p.device.type != "cpu" for _, _, p in params)):
        return False
    flat = torch.empty(sum(p.numel() for _, _, p in params))
    o = 0
    for m, name, p in params:
        view = flat[o:o + p.numel()].view_as(p)
        view.copy_(p.detach())
        m._parameters[name] = torch.nn.Parameter(view, requires_grad=p.requires_grad)
        o += p.numel()
    for m in vit.modules():
        m.__dict__.pop("_native_weights", None)          # packed from the old parameter objects
    # any of them reads the shared counter (in __dict__: not registered as a parameter of vit)
    vit.__dict__["_native_shared"] = params[0][0]._parameters[params[0][1]]
    return True


_VERSION = operator.attrgetter("_version")
#: ``dict.get`` keys reading the blocks' ``mlp_slice`` (an instance attribute where set, i.e. by
#: ``GatedBlock.set_budget``; None otherwise) from their ``__dict__``: cheaper than Module reads
_SLICE_KEYS = itertools.repeat("mlp_slice")

#: bumped when a layer memory's tensor is replaced (``LayerMemory``'s setters call
#: :func:`invalidate`): cached plans are then rebuilt. Weight values are checked by their version
#: counters, blocks and memories by identity, an ANC block's channel slice by identity.
_generation = 0


def invalidate() -> None:
    """Make every cached plan of :func:`encode` stale (see ``_generation``)."""
    global _generation
    _generation += 1


@dataclass(slots=True)
class Plan:
    """What :func:`encode` passes to ``svit_encode`` for (vit, memory), and what :func:`_plan`
    revalidates it against (cached on the first layer memory as ``_native_plan``)."""

    ptrs: ctypes.Array        # the layers' structs (they point into the packed weights, memories)
    n_layers: int             # layers the kernel runs (the first ones: <= n_blocks)
    n_blocks: int
    pos: torch.Tensor         # the position embedding (kept alive: pos_ptr points into it)
    pos_ptr: int
    ln_w: int                 # the final norm's weight, bias and eps
    ln_b: int
    eps: float
    generation: int           # _generation when built
    blocks: dict              # the ViT's blocks (its ``_modules["blocks"]._modules``) then
    block_dicts: list         # ... their ``__dict__``s
    slices: list              # ... and their ``mlp_slice`` (compared by identity)
    memories: list            # the layer memories then
    flat: list                # every weight read (the final norm's and ``pos`` included)
    versions: list            # ... and their version counters then
    shared: torch.Tensor | None     # the ViT's shared version counter (share_version_counter)
    shared_version: int | None


def _plan(vit, mem) -> Plan | None:
    """The plan of :func:`encode` for (vit, mem), cached on the first layer memory. Revalidated
    per call with a few C-level compares (in a streaming engine every Python step is a cache
    miss): no :func:`invalidate` since it was built, the same block and layer-memory objects
    and channel slices, their weights (and the final norm's and ``pos``) at the same version
    counters (one read after :func:`share_version_counter`)."""
    blocks = vit._modules["blocks"]._modules      # (not vit.blocks: Module.__getattr__ is Python)
    shared = vit.__dict__.get("_native_shared")
    cached = mem[0].__dict__.get("_native_plan") if mem else None
    if (cached is not None and cached.generation == _generation and blocks == cached.blocks
            and mem == cached.memories
            and all(map(operator.is_, map(dict.get, cached.block_dicts, _SLICE_KEYS),
                        cached.slices))
            and (shared._version == cached.shared_version
                 if shared is not None and shared is cached.shared
                 else list(map(_VERSION, cached.flat)) == cached.versions)):
        return cached
    return _build_plan(vit, mem, blocks, shared)


def _build_plan(vit, mem, blocks: dict, shared: torch.Tensor | None) -> Plan | None:
    """A new plan for (vit, mem), cached on ``mem[0]``; None when the kernel does not apply."""
    mem[-1].vis_ok = False                # new weights, final norm or memory: normalise all anew
    blks = list(blocks.values())
    structs = []
    for blk, lm in zip(blks, mem):
        st = _struct(blk, lm)
        if st is None:
            break
        structs.append(ctypes.addressof(st))
    if not structs:
        return None
    tail = (vit.pos, vit.ln.weight, vit.ln.bias)
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in tail):
        return None
    flat = [t for blk in blks[:len(structs)] for t in blk._native_weights.sources] + list(tail)
    plan = Plan(ptrs=(ctypes.c_void_p * len(structs))(*structs), n_layers=len(structs),
                n_blocks=len(blks), pos=vit.pos.detach(), pos_ptr=vit.pos.data_ptr(),
                ln_w=vit.ln.weight.data_ptr(), ln_b=vit.ln.bias.data_ptr(), eps=float(vit.ln.eps),
                generation=_generation, blocks=dict(blocks),
                block_dicts=[blk.__dict__ for blk in blks],
                slices=[blk.__dict__.get("mlp_slice") for blk in blks], memories=list(mem),
                flat=flat, versions=list(map(_VERSION, flat)), shared=shared,
                shared_version=shared._version if shared is not None else None)
    mem[0]._native_plan = plan
    return plan


def encode(vit, mem, e: torch.Tensor,
           idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """A whole inference pass of ``vit`` (a SparseViT) over the tokens ``idx`` in one native call,
    without per-layer gating (a sparse pass with thresholds 0, or a dense pass with every token).
    Returns (vision tokens (N, D) after the final norm, or None; the current (n, D) activations
    of the tokens, None when every layer was done; layers done). Fewer layers than the ViT's: the
    caller runs the rest (and the final norm) on its PyTorch path from those activations (0 done:
    the kernel does not apply).

    The vision tokens are the last layer memory's ``vis`` tensor, updated in place: a sparse
    pass re-normalises only the tokens ``idx`` (the others' last-layer outputs did not change),
    a dense pass or the first pass after any change of weights or memory every token."""
    # (few Python-level calls: in a streaming engine this code is out of cache at every frame)
    lib = _lib if _tried else load()
    n = idx.numel()
    if lib is None or not n or torch.is_grad_enabled() or e.dtype != torch.float32:
        return None, e[idx] + vit.pos[idx], 0
    plan = _plan(vit, mem)
    if plan is None:
        return None, e[idx] + vit.pos[idx], 0
    n_all, d = e.shape
    ec = e if e.is_contiguous() else e.contiguous()
    ii = (idx if idx.dtype == torch.int64 and idx.is_contiguous()
          else idx.to(torch.int64).contiguous())
    last = mem[-1]
    vis, x = last.vis, last.scratch
    if vis is None:
        vis = last.vis = torch.empty(n_all, d)
        last.vis_ok = False
    if x is None:
        x = last.scratch = torch.empty(n_all, d)
    all_rows = n == n_all or not last.vis_ok
    last.vis_ok = False                       # until this pass has written it
    nl, nblocks = plan.n_layers, plan.n_blocks
    done = lib.svit_encode(plan.ptrs, nl, n, ii.data_ptr(), ec.data_ptr(), plan.pos_ptr,
                           x.data_ptr(), plan.ln_w, plan.ln_b, plan.eps,
                           vis.data_ptr() if nl == nblocks else None, all_rows)
    if done == nblocks:
        last.vis_ok = True
        return vis, None, done
    if done == 0:
        return None, e[idx] + vit.pos[idx], 0
    return None, x[:n].clone(), done
