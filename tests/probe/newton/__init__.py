"""Tests of curvscope.probe.newton."""
