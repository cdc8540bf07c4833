"""Tests of curvscope.probe.vivit."""
