"""One budget knob, one routing decision (issue 18, item 5), without ROS: vlm_captioner's
scheduler + core executes anc_router's RouteDecision of a frame (branch, FLOPs, published
budget follow it) and routes locally only when that decision is late, counting the fallback."""
from __future__ import annotations

import pytest

from edge_vlm.cores.captioner import CaptionerCore
from edge_vlm.cores.schedule import CaptionScheduler
from edge_vlm.stream.frames import Frame
from edge_vlm.stream.intake import FrameInput
from test_nodes import H, K0, P, W, blob_events, make_test_checkpoint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # the rigged estimator always says "medium"
    return make_test_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "rigged.pt"))


class Captioner:
    """vlm_captioner without the node: its scheduler and core on a manual clock."""

    def __init__(self, checkpoint: str, **params):
        self.core = CaptionerCore({"checkpoint": checkpoint, "mask_source": "local",
                                   "use_rgb": "never", "num_threads": 1, **params})
        self.sched = CaptionScheduler(self.core.params, self.core.num_tokens, P)
        self.now = 0.0

    def close(self, k: int) -> None:
        f = Frame(k, k * P, (k + 1) * P, blob_events(k), W, H)
        self.sched.add_frames([f], [FrameInput([k * P])], self.now)

    def caption(self, late: bool = False):
        """The next frame's output; ``late``: first advance the clock past its deadline."""
        if late:
            self.now += 1.0
        ready = self.sched.next_ready(self.now)
        assert ready is not None
        return self.core.caption(ready, self.now)


def test_router_decision_is_executed_and_late_ones_fall_back(checkpoint):
    local = Captioner(checkpoint)                         # no anc_router: routes itself
    routed = Captioner(checkpoint)                        # anc_router says tiny at budget 0.2
    knob = Captioner(checkpoint, compute_budget=0.2)      # the captioner's own knob, for reference
    ks = range(K0, K0 + 4)
    outs = {"local": [], "routed": [], "knob": []}
    for k in ks:
        for name, c in (("local", local), ("routed", routed), ("knob", knob)):
            c.close(k)
            if name == "routed":
                c.sched.add_route((k + 1) * P, ["tiny"], [1.0], 0.2)
            outs[name].append(c.caption())
    for lo, ro, kn in zip(outs["local"], outs["routed"], outs["knob"]):
        assert lo.branch == "medium" and lo.compute_budget == pytest.approx(1.0)
        assert ro.branch == "tiny" and ro.compute_budget == pytest.approx(0.2)
        assert ro.result.route.branches == ["tiny"]
        assert ro.result.flops_executed < lo.result.flops_executed
        assert ro.params_active < lo.params_active
        # the router's budget costs exactly what the same budget set locally costs
        assert ro.result.flops_executed == pytest.approx(kn.result.flops_executed)
        assert ro.params_active == kn.params_active
    assert local.core.stats.route_fallbacks == local.core.stats.routes_followed == 0
    assert routed.core.stats.routes_followed == 4 and routed.core.stats.route_fallbacks == 0

    # anc_router runs, so the next frame waits for its decision ...
    k = K0 + 4
    routed.close(k)
    assert routed.sched.next_ready(routed.now) is None
    # ... and when it is late the model routes locally, under the router's last budget
    out = routed.caption(late=True)
    assert out.branch == "tiny" and out.compute_budget == pytest.approx(0.2)
    assert routed.core.stats.route_fallbacks == 1

    # the budget raised on anc_router: the very next frame runs medium at full budget
    k += 1
    routed.close(k)
    routed.sched.add_route((k + 1) * P, ["medium"], [1.0], 1.0)
    out = routed.caption()
    assert out.branch == "medium" and out.compute_budget == pytest.approx(1.0)
    assert out.params_active == outs["local"][0].params_active
    assert routed.core.stats.routes_followed == 5

    # an unusable decision (unknown branch) is a counted fallback, not an error
    k += 1
    routed.close(k)
    routed.sched.add_route((k + 1) * P, ["huge"], [1.0], 1.0)
    out = routed.caption()
    assert out.branch == "medium" and routed.core.stats.route_fallbacks == 2
    assert routed.core.stats.as_dict()["route_fallbacks"] == 2
