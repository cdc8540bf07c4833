"""Tests of curvscope.probe.stream."""
