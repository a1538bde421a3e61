"""A node stops on its first SIGINT even when the KeyboardInterrupt of ``edge_vlm_ros.run`` is
lost: raised while Python runs a finalizer (seen: rclpy's ``Future.__del__``), it is printed as
"Exception ignored" and dropped; the spin loop must still end (it checks the stop flag), or the
node hangs until launch escalates to SIGKILL and its shutdown report is lost."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rosenv

SCRIPT = r"""
import os, signal, sys, time
from rclpy.node import Node
from edge_vlm_ros.run import run_node


class Lost:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)        # the handler runs here, inside the finalizer: its raise is lost


class LosesItsSignal(Node):
    def __init__(self):
        super().__init__("loses_its_signal")
        self.ticks = 0
        self.create_timer(0.05, self.tick)

    def tick(self):
        self.ticks += 1
        if self.ticks == 3:
            Lost()              # finalized at once (reference count 0)

    def shutdown_report(self):
        print(f"report after {self.ticks} ticks", flush=True)


sys.exit(run_node(LosesItsSignal, [], "loses_its_signal"))
"""


@pytest.mark.timeout(60)
def test_node_stops_when_its_keyboard_interrupt_is_lost():
    rosenv.require_workspace("edge_vlm_ros")
    from edge_vlm_ros.lifeline import free_domain_id

    env = rosenv.sourced_env(ROS_DOMAIN_ID=str(free_domain_id()),
                             ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=30)
    assert "Exception ignored" in out.stderr, out.stderr    # the interrupt was indeed lost
    assert out.returncode == 0, out.stdout + out.stderr
    ticks = int(out.stdout.split("report after ")[1].split()[0])
    assert ticks < 3 + 20, out.stdout                       # stopped within ~1 s of the signal


def test_lifeline_gives_the_node_default_stop_signals():
    """A launcher started as a background job (``cmd &``, nohup) ignores SIGINT and SIGHUP, and
    ignored signals survive exec: ``lifeline.py`` restores them before it execs the node, so the
    node hears launch's SIGINT (Python then installs its KeyboardInterrupt handler)."""
    import signal

    from edge_vlm_ros import lifeline

    probe = ("import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
             " signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)")

    def ignore_stop_signals():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def probe_run(cmd):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              preexec_fn=ignore_stop_signals).stdout.split()

    assert probe_run([sys.executable, "-c", probe]) == ["False", "False"]   # inherited: ignored
    wrapped = [sys.executable, lifeline.__file__, "--parent", str(os.getpid()), "--",
               sys.executable, "-c", probe]
    assert probe_run(wrapped) == ["True", "True"]
