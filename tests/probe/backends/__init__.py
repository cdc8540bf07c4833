"""Tests of curvscope.probe.backends."""
