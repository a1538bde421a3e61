"""Test configuration: make the source packages importable without an install."""
import os
import signal
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real"))
for pkg in ("edge_vlm", "edge_vlm_ros", "edge_vlm_tools", "edge_vlm_cameras", "sttf_perception",
            "anc_router", "vlm_captioner"):
    p = os.path.join(ROOT, "ros2_ws", "src", pkg)
    if os.path.isdir(p) and p not in sys.path:
        sys.path.insert(0, p)


def _foreground_signals() -> None:
    """Launchers the tests start must see SIGINT and SIGHUP as from a terminal. A test run
    started as a background job (``make test &``, ``nohup``) ignores them, and an ignored
    signal stays ignored across exec: ``ros2 launch`` would then ignore the SIGINT and SIGHUP
    the signal tests send. A handled signal is reset to its default in a child, so handle
    them here (SIGINT as Python does by default; SIGHUP still ignored by this process)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda signum, frame: None)


_foreground_signals()


# the per-CPU backend choice cache (edge_vlm.inference.backend_cache) of this test session: the
# tests and the graphs they start share one file that the user's ~/.cache never sees
os.environ.setdefault("EDGE_VLM_BACKEND_CACHE",
                      os.path.join(tempfile.mkdtemp(prefix="edge_vlm_test_cache_"),
                                   "backend_choice.json"))


@pytest.fixture
def capture_fit(monkeypatch):
    """``seen = capture_fit(module, "fit_x")``: the training stage's fit replaced by one that
    records what the CLI passed it (``seen["cfg"]``, ``seen["progress"]``) and returns at once."""
    def capture(module, name: str) -> dict:
        seen: dict = {}

        def fit(cfg, progress):
            seen["cfg"], seen["progress"] = cfg, progress
            return {"checkpoint": cfg.out}

        monkeypatch.setattr(module, name, fit)
        return seen
    return capture
