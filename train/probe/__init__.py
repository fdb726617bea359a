"""probe-features: SUPERB-style probes (frozen cached layers, light heads) and the paired comparison of their scores.
Imports store and the core's held-out split (train.data); train-student's code never imports it (compare-runs, the demos
and the benches do). It never trains or changes an upstream: it only reads a cache of its layers."""
