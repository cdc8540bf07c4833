"""The training-loop integration: :class:`~curvscope.probe.loop.probe.Probe` and its parts.

``steps`` (which step comes next), ``measurement`` (in-loop vs held-out), ``reporting``
(the failure policy), ``schedules`` (when to measure) and ``wire`` (snapshots as wire
messages).
"""
