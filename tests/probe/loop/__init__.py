"""Tests of curvscope.probe.loop."""
