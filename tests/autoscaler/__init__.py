"""Tests of the autoscaler (`autoscaler/`): policies, providers, the control loop."""
